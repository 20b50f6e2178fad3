"""The worker processes of a tensor-parallel engine: ranks 1..N-1, each a ModelRunner over
its shard, stepping in lockstep with rank 0 in the engine process.

    engine process (rank 0)                      worker process (rank r)
    scheduler -> SchedulerOutput ---- pipe ----> runner.follow(output)
    runner.launch(output)  <== all-reduce, all-gather, broadcast ==>  the same collectives

Start-up: the workers are spawned and wait at the process group's rendezvous, rank 0 joins
it and builds its runner (sizing the KV pool), then the workers build theirs with rank 0's
number of blocks and say they are ready. A worker that dies ends the engine with
WorkerDiedError naming it; close() stops the rest, and a worker whose engine process dies
sees its pipe close and exits, so nothing is left running.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import traceback
from dataclasses import dataclass
from datetime import timedelta

import torch

from server.engine.parallel.tensor_parallel import TensorParallel
from server.engine.loading.weights import ModelSource

logger = logging.getLogger("inflightd.engine")
START_TIMEOUT_S = 600  # loading a large shard from a slow disk
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


class WorkerDiedError(RuntimeError):
    """A tensor-parallel worker process exited or failed; the engine cannot go on."""


@dataclass(frozen=True)
class RunnerSpec:
    """What a worker builds its ModelRunner from (rank 0's resolved choices)."""

    source: ModelSource
    dtype: torch.dtype
    block_size: int
    num_blocks: int
    quantization: str | None
    kv_cache_dtype: str
    enforce_eager: bool
    max_num_seqs: int | None
    max_model_len: int | None


class WorkerGroup:
    def __init__(self, *, world_size: int, device_type: str) -> None:
        """Spawns ranks 1..world_size-1; they wait for rank 0 at the rendezvous."""
        self.world_size = world_size
        self.backend = "nccl" if device_type == "cuda" else "gloo"
        self._init_method = f"tcp://127.0.0.1:{_free_port()}"
        context = multiprocessing.get_context("spawn")
        self._conns, self._processes = [], []
        for rank in range(1, world_size):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_main, name=f"inflightd-tp-rank{rank}", daemon=True,
                args=(rank, world_size, self.backend, self._init_method, device_type, child))
            process.start()
            child.close()
            self._conns.append(parent)
            self._processes.append(process)

    def join_as_first_rank(self) -> TensorParallel:
        """Joins the process group as rank 0 (returns once every worker has joined)."""
        torch.distributed.init_process_group(self.backend, init_method=self._init_method,
                                             rank=0, world_size=self.world_size,
                                             timeout=COLLECTIVE_TIMEOUT)
        return TensorParallel(rank=0, world_size=self.world_size)

    def build_runners(self, spec: RunnerSpec) -> None:
        """Every worker builds its shard's runner; returns when all are ready."""
        for conn in self._conns:
            conn.send(spec)
        for rank, conn in enumerate(self._conns, start=1):
            if not conn.poll(START_TIMEOUT_S):
                raise WorkerDiedError(f"tensor-parallel worker rank {rank} did not start "
                                      f"within {START_TIMEOUT_S} s")
            self._expect_ready(rank, conn)

    def send(self, scheduler_output) -> None:
        """The step's plan to every worker, before rank 0 launches it."""
        self.raise_if_dead()
        for conn in self._conns:
            conn.send(scheduler_output)

    def raise_if_dead(self, *, wait_s: float = 0.0) -> None:
        """WorkerDiedError naming the first worker that is gone (waiting up to wait_s for
        one that is on its way out: a failed collective comes before the exit)."""
        for rank, (conn, process) in enumerate(zip(self._conns, self._processes), start=1):
            if wait_s:
                process.join(timeout=wait_s)
            if not process.is_alive():
                raise WorkerDiedError(f"tensor-parallel worker rank {rank} exited (code "
                                      f"{process.exitcode}){_last_words(conn)}")

    def close(self) -> None:
        """Stops the workers (and kills any that do not stop) and leaves the group."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _expect_ready(self, rank: int, conn) -> None:
        try:
            status, detail = conn.recv()
        except EOFError:
            status, detail = "error", "exited while building its runner"
        if status != "ready":
            raise WorkerDiedError(f"tensor-parallel worker rank {rank}: {detail}")


def _worker_main(rank: int, world_size: int, backend: str, init_method: str,
                 device_type: str, conn) -> None:
    torch.distributed.init_process_group(backend, init_method=init_method, rank=rank,
                                         world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    try:
        runner = _build_runner(conn.recv(), rank=rank, world_size=world_size,
                               device_type=device_type)
    except EOFError:
        return  # the engine went away before sending the spec
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    try:
        while (scheduler_output := conn.recv()) is not None:
            runner.follow(scheduler_output)
    except EOFError:
        pass  # the engine process is gone: so is this worker
    except Exception:
        conn.send(("error", traceback.format_exc(limit=8)))
        raise
    finally:
        torch.distributed.destroy_process_group()


def _build_runner(spec: RunnerSpec, *, rank: int, world_size: int, device_type: str):
    from server.engine.step.runner import ModelRunner

    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cpu":
        torch.set_num_threads(1)  # the ranks share the machine's cores
    return ModelRunner(spec.source, dtype=spec.dtype, device=device, block_size=spec.block_size,
                       num_blocks=spec.num_blocks, quantization=spec.quantization,
                       kv_cache_dtype=spec.kv_cache_dtype, enforce_eager=spec.enforce_eager,
                       max_num_seqs=spec.max_num_seqs, max_model_len=spec.max_model_len,
                       tp=TensorParallel(rank=rank, world_size=world_size))


def _last_words(conn) -> str:
    """What a dead worker sent before it died (its error), if anything."""
    try:
        while conn.poll():
            status, detail = conn.recv()
            if status == "error":
                return f": {detail}"
    except (EOFError, OSError, ValueError, TypeError):
        pass
    return ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
