"""The worker processes of a tensor-parallel engine: every rank but 0, each a ModelRunner
over its shard, stepping in lockstep with rank 0 in the engine process, on one node or
several.

    engine process (rank 0, node 0)              worker process (rank r, any node)
    scheduler -> SchedulerOutput -- control --> runner.follow(output)
    runner.launch(output)  <== all-reduce, all-gather, broadcast ==>  the same collectives

Two process groups: the model's (NCCL on GPUs, gloo on the CPU) for the collectives inside
a step, and a gloo "control" group over which rank 0 broadcasts each step's plan. The
control group waits without a deadline, so an idle engine does not time its workers out;
a dead peer still fails it at once (its sockets close).

Start-up: the workers are spawned and wait at the rendezvous; rank 0 joins and builds its
runner (sizing the KV pool), broadcasts the spec, and every worker builds its own with rank
0's number of blocks and reports. Node 0 runs rank 0 in the engine process and spawns its
other local ranks; every other node runs `inflightd serve --headless`, which spawns its
ranks and waits for them (run_headless). A worker that dies ends the engine with
WorkerDiedError; a worker whose engine dies sees the control group fail and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch

from server.engine.loading.weights import ModelSource
from server.engine.parallel.tensor_parallel import TensorParallel

logger = logging.getLogger("inflightd.engine")
COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # one step's collectives
CONTROL_TIMEOUT = timedelta(days=365)  # waiting for the next step: as long as it idles


class WorkerDiedError(RuntimeError):
    """A tensor-parallel worker exited or failed; the engine cannot go on."""


@dataclass(frozen=True)
class Placement:
    """Where the ranks run: world_size ranks over nnodes nodes, ranks_per_node on each
    (node k holds ranks k * ranks_per_node ...); master_addr:master_port is rank 0's
    rendezvous (a free local port when there is one node and none is given)."""

    world_size: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None

    def __post_init__(self) -> None:
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node-rank must be in 0..{self.nnodes - 1} (--nnodes "
                             f"{self.nnodes}), got {self.node_rank}")
        if self.world_size % self.nnodes:
            raise ValueError(f"--tensor-parallel-size {self.world_size} must be a multiple of "
                             f"--nnodes {self.nnodes} (the same number of ranks on each node)")
        if self.nnodes > 1 and self.master_port is None:
            raise ValueError("several nodes need --master-addr and --master-port (rank 0's "
                             "rendezvous, on node 0)")

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nnodes

    @property
    def local_ranks(self) -> range:
        first = self.node_rank * self.ranks_per_node
        return range(first, first + self.ranks_per_node)

    def init_method(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}"


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


def placement_of(model_config) -> Placement:
    """The Placement a ModelConfig's parallel settings describe."""
    return Placement(model_config.tensor_parallel_size, nnodes=model_config.nnodes,
                     node_rank=model_config.node_rank, master_addr=model_config.master_addr,
                     master_port=model_config.master_port)


class WorkerGroup:
    """Node 0's side: rank 0 in this process, the node's other ranks spawned."""

    def __init__(self, placement: Placement, *, device_type: str) -> None:
        if placement.master_port is None:
            placement = Placement(placement.world_size, master_port=_free_port())
        self.placement = placement
        self.backend = "nccl" if device_type == "cuda" else "gloo"
        self._control = None
        self._processes = spawn_local_workers(placement, backend=self.backend,
                                              device_type=device_type, skip_rank_0=True)

    def join_as_first_rank(self) -> TensorParallel:
        """Joins the process groups as rank 0 (returns once every rank has joined)."""
        self._control = _join(self.placement, rank=0, backend=self.backend)
        return TensorParallel(rank=0, world_size=self.placement.world_size)

    def build_runners(self, spec: RunnerSpec) -> None:
        """Every worker builds its shard's runner; returns when all are ready."""
        self._broadcast(spec)
        statuses = [None] * self.placement.world_size
        torch.distributed.all_gather_object(statuses, "ready", group=self._control)
        failed = [f"rank {rank}: {status}" for rank, status in enumerate(statuses)
                  if status != "ready"]
        if failed:
            raise WorkerDiedError(f"tensor-parallel workers failed to start: {'; '.join(failed)}")

    def send(self, scheduler_output) -> None:
        """The step's plan to every worker, before rank 0 launches it."""
        self.raise_if_dead()
        self._broadcast(scheduler_output)

    def raise_if_dead(self, *, wait_s: float = 0.0) -> None:
        """WorkerDiedError naming the first local worker that is gone (waiting up to wait_s
        for one on its way out: a failed collective comes before the exit)."""
        for process in self._processes:
            if wait_s:
                process.join(timeout=wait_s)
            if not process.is_alive():
                rank = process.name.rsplit("-", 1)[-1]
                raise WorkerDiedError(f"tensor-parallel worker rank {rank} exited (code "
                                      f"{process.exitcode})")

    def close(self) -> None:
        """Tells the workers to stop (killing local ones that do not) and leaves the groups."""
        if self._control is not None:
            try:
                self._broadcast(None)
            except RuntimeError:
                pass  # a worker is already gone
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _broadcast(self, message) -> None:
        try:
            torch.distributed.broadcast_object_list([message], src=0, group=self._control)
        except RuntimeError as exc:
            self.raise_if_dead(wait_s=2.0)
            raise WorkerDiedError(f"a tensor-parallel rank is unreachable: {exc}") from exc


def spawn_local_workers(placement: Placement, *, backend: str, device_type: str,
                        skip_rank_0: bool) -> list:
    context = multiprocessing.get_context("spawn")
    processes = []
    for rank in placement.local_ranks:
        if rank == 0 and skip_rank_0:
            continue
        process = context.Process(
            target=_worker_main, name=f"inflightd-tp-rank-{rank}", daemon=True,
            args=(placement, rank, backend, device_type))
        process.start()
        processes.append(process)
    return processes


def run_headless(placement: Placement, *, device_type: str) -> int:
    """A node other than 0: its ranks, until the engine ends. Returns the exit status."""
    backend = "nccl" if device_type == "cuda" else "gloo"
    processes = spawn_local_workers(placement, backend=backend, device_type=device_type,
                                    skip_rank_0=False)
    logger.info("headless node %d: ranks %s joining %s", placement.node_rank,
                list(placement.local_ranks), placement.init_method())
    for process in processes:
        process.join()
    return max((process.exitcode or 0 for process in processes), default=0)


def _join(placement: Placement, *, rank: int, backend: str):
    torch.distributed.init_process_group(backend, init_method=placement.init_method(),
                                         rank=rank, world_size=placement.world_size,
                                         timeout=COLLECTIVE_TIMEOUT)
    return torch.distributed.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def _worker_main(placement: Placement, rank: int, backend: str, device_type: str) -> None:
    control = _join(placement, rank=rank, backend=backend)
    try:
        runner, status = None, "ready"
        try:
            runner = _build_runner(_receive(control), rank=rank, placement=placement,
                                   device_type=device_type)
        except Exception as exc:  # reported to rank 0, which names it
            status = f"{type(exc).__name__}: {exc}"
        statuses = [None] * placement.world_size
        torch.distributed.all_gather_object(statuses, status, group=control)
        if all(s == "ready" for s in statuses):
            runner.capture_graphs()  # with rank 0's, whose warm-up all-reduces meet ours
        while runner is not None and (scheduler_output := _receive(control)) is not None:
            runner.follow(scheduler_output)
    except RuntimeError:
        pass  # the engine (or another rank) is gone: so is this worker
    finally:
        torch.distributed.destroy_process_group()


def _receive(control):
    box = [None]
    torch.distributed.broadcast_object_list(box, src=0, group=control)
    return box[0]


def _build_runner(spec: RunnerSpec, *, rank: int, placement: Placement, device_type: str):
    from server.engine.step.runner import ModelRunner

    local = rank % placement.ranks_per_node
    device = torch.device("cuda", local) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cpu":
        torch.set_num_threads(1)  # the ranks share the machine's cores
    return ModelRunner(spec.source, dtype=spec.dtype, device=device, block_size=spec.block_size,
                       num_blocks=spec.num_blocks, quantization=spec.quantization,
                       kv_cache_dtype=spec.kv_cache_dtype, enforce_eager=spec.enforce_eager,
                       max_num_seqs=spec.max_num_seqs, max_model_len=spec.max_model_len,
                       tp=TensorParallel(rank=rank, world_size=placement.world_size))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
