"""Tensor-parallel runs on the CPU for the golden tests: N processes over gloo, each a
ModelRunner holding its rank's shard, driven through the same greedy plan as a single
runner, with rank 0's logits sent back."""

from __future__ import annotations

import multiprocessing
import queue
import uuid
from pathlib import Path

import torch

from server.engine.parallel.tensor_parallel import TensorParallel
from server.engine.step.runner import ModelRunner
from server.engine.loading.weights import ModelSource, resolve_model
from tests.golden.helpers import HandBatcher

BLOCK_SIZE, NUM_BLOCKS = 4, 64
PROMPTS = {"a": [5, 17, 33, 2, 9, 40, 41, 42, 7], "b": [100, 7, 8, 44, 45]}
NUM_DECODE_STEPS = 6


def greedy_logits(runner: ModelRunner) -> torch.Tensor:
    """A prefill of both prompts (the first in two chunks), then decode steps continuing
    each with its argmax: every sampled row's logits, stacked."""
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    for req_id, prompt in PROMPTS.items():
        batcher.add(req_id=req_id, prompt_token_ids=prompt)
    rows = []
    plans = [{"a": 4}, {"a": None, "b": None}] + [{"a": 1, "b": 1}] * NUM_DECODE_STEPS
    for plan in plans:
        req_ids, logits, _ = runner.forward_logits(batcher.step(plan))
        rows.append(logits.clone())
        batcher.record({r: int(row.argmax()) for r, row in zip(req_ids, logits)})
    return torch.cat(rows)


def make_runner(model: str | ModelSource, *, tp: TensorParallel = TensorParallel(),
                quantization: str | None = None, device: str = "cpu",
                dtype: torch.dtype = torch.float32, enforce_eager: bool = False,
                kv_cache_dtype: str = "auto") -> ModelRunner:
    """model: a checkpoint's path, or a ModelSource (e.g. dummy weights of a config)."""
    source = resolve_model(model) if isinstance(model, str) else model
    return ModelRunner(source, dtype=dtype, device=device, block_size=BLOCK_SIZE,
                       num_blocks=NUM_BLOCKS, tp=tp, quantization=quantization,
                       enforce_eager=enforce_eager, kv_cache_dtype=kv_cache_dtype)


def model_key(model: str | ModelSource) -> str:
    """How tensor_parallel_logits names a model in its results: its path, or its name."""
    return model if isinstance(model, str) else model.name


def _rank_main(rank: int, world_size: int, init_file: str, models: list[str | ModelSource],
               quantization: str | None, results, devices: tuple[str, ...],
               dtype: torch.dtype, enforce_eager: bool, kv_cache_dtype: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}",
                                         rank=rank, world_size=world_size)
    try:
        for model in models:
            stats = {}
            try:
                runner = make_runner(model, tp=TensorParallel(rank, world_size),
                                     quantization=quantization, device=devices[rank],
                                     dtype=dtype, enforce_eager=enforce_eager,
                                     kv_cache_dtype=kv_cache_dtype)
                logits = greedy_logits(runner)
                stats = {"graph_replays": runner.graphs.num_replays if runner.graphs else 0,
                         "ipc_all_reduce": runner.model.tp.device_all_reduce is not None}
                # by value: a tensor would travel as a file descriptor that the parent
                # fetches from this process, which may have exited by then (seen in CI:
                # FileNotFoundError in multiprocessing's resource_sharer)
                outcome = ("ok", logits.cpu().numpy())
            except Exception as exc:  # reported to the test, which names the model
                outcome = ("error", f"{type(exc).__name__}: {exc}")
            if rank == 0:
                results.put((model_key(model), outcome, stats))
    finally:
        torch.distributed.destroy_process_group()


def tensor_parallel_logits(models: list[str | ModelSource], *, world_size: int, tmp_path: Path,
                           quantization: str | None = None, timeout_s: float = 600,
                           devices: tuple[str, ...] | None = None,
                           dtype: torch.dtype = torch.float32, enforce_eager: bool = False,
                           kv_cache_dtype: str = "auto", stats: dict | None = None
                           ) -> dict[str, tuple[str, object]]:
    """{model: ("ok", rank 0's greedy_logits) or ("error", message)} over world_size
    processes, each model built and run in turn by every rank, rank r on devices[r]
    (default: all on the CPU); the collectives run over gloo on every device, or (all
    ranks on GPUs) the all-reduces over our IPC kernel. stats, if given, gets rank 0's
    {model: {"graph_replays": n, "ipc_all_reduce": bool}}. Results are keyed by
    model_key."""
    devices = devices or ("cpu",) * world_size
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    # a file of its own per call: a second call's ranks reading the first one's rendezvous
    # (a store file not yet deleted) dial a rank 0 long gone (seen in CI: connection refused)
    init_file = str(tmp_path / f"tp-init-{uuid.uuid4().hex}")
    ranks = [context.Process(target=_rank_main, args=(rank, world_size, init_file, models,
                                                      quantization, results, devices, dtype,
                                                      enforce_eager, kv_cache_dtype))
             for rank in range(world_size)]
    for process in ranks:
        process.start()
    outcomes = {}
    try:
        for _ in models:
            model, (status, value), model_stats = results.get(timeout=timeout_s)
            outcomes[model] = (status, torch.from_numpy(value) if status == "ok" else value)
            if stats is not None:
                stats[model] = model_stats
    except queue.Empty:
        raise AssertionError(f"tensor-parallel ranks gave {len(outcomes)} of {len(models)} "
                             f"results within {timeout_s} s") from None
    finally:
        stop_processes(ranks)
    return outcomes


def stop_processes(processes) -> None:
    """Each rank's process joined, or killed when it outlives 30 s."""
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
