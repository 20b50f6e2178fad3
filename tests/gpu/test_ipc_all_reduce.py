"""Our IPC all-reduce (csrc/all_reduce.cu) between two processes sharing the GPU (one GPU
each where there are two), the handles exchanged over gloo: every dtype and size against
the sum in rank order, bit for bit on both ranks, call after call (the flags and the two
slots), and replayed from CUDA graphs."""

from __future__ import annotations

import multiprocessing
import queue

import pytest
import torch

from server.engine.parallel.tensor_parallel import TensorParallel
from tests.golden.tp_helpers import stop_processes

WORLD_SIZE = 2
# elements: one 16-byte vector, a decode row of Llama-3-8B, 64 rows, a size that does not
# split evenly over the CTAs, and one that takes every CTA
SHAPES = [(8,), (1, 4096), (64, 4096), (1000 * 8 + 8,), (300, 4096)]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
GRAPH_REPLAYS = 5


def _inputs(step: int, shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    """Every rank's input of one call (each rank makes all of them, to know the sum)."""
    tensors = []
    for rank in range(WORLD_SIZE):
        generator = torch.Generator().manual_seed(1000 * step + rank)
        tensors.append(torch.randn(shape, generator=generator).to(dtype).cuda())  # this rank's GPU
    return tensors


def _expected(inputs: list[torch.Tensor]) -> torch.Tensor:
    total = torch.zeros_like(inputs[0], dtype=torch.float32)
    for x in inputs:  # the kernel's order: float32, rank 0 first
        total += x.float()
    return total.to(inputs[0].dtype)


def _join(rank: int, init_file: str, **options):
    """This rank's GPU (one each where there are two) and its IpcAllReduce, over gloo."""
    from server.engine.gpu.kernels import KernelLibrary
    from server.engine.parallel.ipc_all_reduce import IpcAllReduce

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}",
                                         rank=rank, world_size=WORLD_SIZE)
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device, IpcAllReduce(KernelLibrary(device), TensorParallel(rank, WORLD_SIZE),
                                **options)


def _run_ranks(target, tmp_path, *, num_results: int, timeout_s: float) -> list[tuple]:
    """target(rank, init_file, results) in a process a rank; the first num_results results."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=target, args=(rank, str(tmp_path / "init"), results))
             for rank in range(WORLD_SIZE)]
    for process in ranks:
        process.start()
    answers = []
    try:
        for _ in range(num_results):
            answers.append(results.get(timeout=timeout_s))
    except queue.Empty:
        pytest.fail(f"the ranks gave {answers} within {timeout_s} s")
    finally:
        stop_processes(ranks)
    return answers


def _rank_main(rank: int, init_file: str, results) -> None:
    from server.engine.gpu.graph_capture import capturing

    failures = []
    try:
        device, shared = _join(rank, init_file)
        step = 0
        for dtype in DTYPES:
            for shape in SHAPES:
                step += 1
                inputs = _inputs(step, shape, dtype)
                x = inputs[rank].clone()
                assert shared.accepts(x)
                shared.all_reduce_(x)
                if not torch.equal(x, _expected(inputs)):
                    failures.append(f"eager {dtype} {shape}")
        # a graph of three all-reduces, replayed on new inputs
        static = [torch.zeros(shape, dtype=torch.bfloat16, device=device) for shape in SHAPES[1:4]]
        for x in static:  # warm-up outside the graph
            shared.all_reduce_(x)
        graph = torch.cuda.CUDAGraph()
        with capturing(graph):
            for x in static:
                shared.all_reduce_(x)
        for replay in range(GRAPH_REPLAYS):
            calls = [_inputs(10_000 + 10 * replay + i, x.shape, x.dtype)
                     for i, x in enumerate(static)]
            for x, inputs in zip(static, calls):
                x.copy_(inputs[rank])
            graph.replay()
            for x, inputs in zip(static, calls):
                if not torch.equal(x, _expected(inputs)):
                    failures.append(f"replay {replay} {tuple(x.shape)}")
        torch.cuda.synchronize()
        results.put((rank, "ok", failures))
    except Exception as exc:  # reported to the test
        results.put((rank, "error", f"{type(exc).__name__}: {exc}"))
    finally:
        torch.distributed.destroy_process_group()


def test_ipc_all_reduce_sums_in_rank_order_eagerly_and_in_graph_replays(tmp_path):
    answers = _run_ranks(_rank_main, tmp_path, num_results=WORLD_SIZE, timeout_s=300)
    outcomes = {rank: (status, detail) for rank, status, detail in answers}
    assert outcomes == {rank: ("ok", []) for rank in range(WORLD_SIZE)}


def test_ipc_all_reduce_refuses_what_its_kernel_cannot_take(library):
    from server.engine.parallel.ipc_all_reduce import IpcAllReduce

    shared = IpcAllReduce.__new__(IpcAllReduce)  # accepts() reads only these
    shared.lib, shared.slot_bytes = library, 1 << 20
    device = library.device
    assert shared.accepts(torch.zeros(8, dtype=torch.bfloat16, device=device))
    assert not shared.accepts(torch.zeros(7, dtype=torch.bfloat16, device=device))  # 14 bytes
    assert not shared.accepts(torch.zeros(8, dtype=torch.bfloat16))  # on the host
    assert not shared.accepts(torch.zeros(8, dtype=torch.int32, device=device))
    assert not shared.accepts(torch.zeros(4, 16, dtype=torch.float32, device=device).t())
    assert not shared.accepts(torch.zeros(16, dtype=torch.bfloat16, device=device)[1:9])
    assert not shared.accepts(torch.zeros((1 << 20) // 2 + 8, dtype=torch.bfloat16,
                                          device=device))


def _absent_peer_main(rank: int, init_file: str, results) -> None:
    """Rank 1 maps the buffers and never all-reduces; rank 0's call must fail, not hang."""
    try:
        device, shared = _join(rank, init_file, timeout_s=ABSENT_PEER_TIMEOUT_S)
        if rank == 0:
            x = torch.ones(4096, dtype=torch.bfloat16, device=device)
            try:
                shared.all_reduce_(x)
                torch.cuda.synchronize()
                results.put((rank, "returned"))
            except Exception as exc:  # the trap: this process's CUDA context is lost
                results.put((rank, f"raised {type(exc).__name__}"))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


ABSENT_PEER_TIMEOUT_S = 2.0


def test_an_all_reduce_whose_peer_never_comes_fails_after_its_timeout(tmp_path):
    [(rank, outcome)] = _run_ranks(_absent_peer_main, tmp_path, num_results=1, timeout_s=120)
    assert (rank, outcome.split()[0]) == (0, "raised"), outcome
