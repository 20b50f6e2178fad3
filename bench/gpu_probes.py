"""Measurements the GPU mode of bench/offline.py takes next to its throughput figures, to say
where a decode step's time goes:

    copy_bandwidth      device-to-device copy, bytes read + written per second (the roofline)
    gemm_floor_ms       the model's linear layers alone (qkv, o, gate_up, down, lm_head) at
                        batch 1, replayed from one CUDA graph: the weight-streaming floor
    padded_replay_ms    the engine's batch-1 decode graph (every kernel, one-key context)
    StepTimer           wall time of each engine step, split decode-only / mixed, so the
                        host's share (scheduler, inputs, sampling) shows against the GPU's
    profile_decode      GPU time per decode step by kernel group (torch profiler, CUPTI),
                        on real decode steps of a given batch size and context
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from server.scheduler.request import SamplingParams

# kernel group -> substrings of the kernel names (ours from csrc/, cuBLAS's for the GEMMs)
KERNEL_GROUPS = (
    ("attention", ("paged_attention",)),
    ("attention merge", ("attention_merge",)),
    ("norms", ("rms_norm",)),
    ("rope + KV write", ("rope_and_cache",)),
    ("silu_and_mul", ("silu_and_mul",)),
    ("GEMM", ("gemm", "gemv", "nvjet", "cutlass", "xmma", "splitk", "cublas")),
    ("copies", ("memcpy", "memset")),
)


def median_event_ms(run, *, repeats: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth(device: str) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    src = torch.randn(512 * 1024 * 1024 // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = median_event_ms(lambda: dst.copy_(src), repeats=10)
    return 2 * src.numel() * src.element_size() / (ms / 1e3)


def gemm_floor_ms(model, *, batch_size: int = 1) -> float:
    """One graph replaying every linear layer of the model on [batch_size, ...] inputs."""
    device, dtype = model.device, model.dtype
    arch = model.arch
    hidden = torch.randn(batch_size, arch.hidden_size, device=device, dtype=dtype)
    attn = torch.randn(batch_size, arch.num_heads * arch.head_dim, device=device, dtype=dtype)
    inter = torch.randn(batch_size, arch.intermediate_size, device=device, dtype=dtype)

    def linears():
        for layer in model.layers:
            F.linear(hidden, layer.qkv_weight, layer.qkv_bias)
            F.linear(attn, layer.o_weight, layer.o_bias)
            F.linear(hidden, layer.gate_up_weight)
            F.linear(inter, layer.down_weight)
        F.linear(hidden, model.lm_head)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        linears()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        linears()
    return median_event_ms(graph.replay)


@dataclass
class StepTimer:
    """Wraps runner.execute to time each step (execute ends by reading the sampled tokens,
    so its wall time covers the GPU work of the step)."""

    runner: object
    decode_seconds: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0
    mixed_seconds: float = 0.0
    mixed_steps: int = 0
    _execute: object = field(default=None, repr=False)

    def __enter__(self) -> "StepTimer":
        self._execute = self.runner.execute

        def timed(scheduler_output):
            start = time.perf_counter()
            result = self._execute(scheduler_output)
            elapsed = time.perf_counter() - start
            if scheduler_output.is_decode_only:
                self.decode_seconds += elapsed
                self.decode_steps += 1
                self.decode_tokens += len(scheduler_output.scheduled)
            else:
                self.mixed_seconds += elapsed
                self.mixed_steps += 1
            return result

        self.runner.execute = timed
        return self

    def __exit__(self, *exc) -> None:
        del self.runner.execute  # back to the class's method

    def summary(self, wall_seconds: float) -> dict:
        return {"decode_steps": self.decode_steps, "decode_seconds": self.decode_seconds,
                "mean_decode_batch": self.decode_tokens / max(1, self.decode_steps),
                "mean_decode_step_ms": 1e3 * self.decode_seconds / max(1, self.decode_steps),
                "mixed_steps": self.mixed_steps, "mixed_seconds": self.mixed_seconds,
                "outside_execute_seconds": wall_seconds - self.decode_seconds
                - self.mixed_seconds}


def kernel_ms_by_group(prof) -> dict[str, float]:
    """Summed milliseconds of the profiled GPU activity, by KERNEL_GROUPS ("other": the
    rest, e.g. the embedding lookup and the logits' float cast)."""
    totals: dict[str, float] = {}
    for event in prof.events():
        if not str(event.device_type).endswith("CUDA"):
            continue
        name = event.name.lower()
        group = next((g for g, keys in KERNEL_GROUPS if any(k in name for k in keys)), "other")
        totals[group] = totals.get(group, 0.0) + event.time_range.elapsed_us() / 1e3
    return totals


def profile_decode(llm, *, batch_size: int, context: int, steps: int = 8,
                   seed: int = 0) -> dict:
    """Prefills batch_size random prompts of `context` tokens, then profiles `steps` engine
    steps in which all of them decode; the requests are aborted afterwards (they are given
    room to run on, so none finishes while the first ones wait for the last prefill)."""
    from torch.profiler import ProfilerActivity, profile

    engine = llm.engine
    rng = random.Random(seed)
    params = SamplingParams(temperature=0, ignore_eos=True,
                            max_tokens=engine.info.max_model_len - context - 1)
    req_ids = [f"profile-{batch_size}-{index}" for index in range(batch_size)]
    for req_id in req_ids:
        engine.add_request(req_id, [rng.randrange(100, engine.info.vocab_size)
                                    for _ in range(context)], params)
    started: set[str] = set()
    while len(started) < batch_size:
        started.update(out.req_id for out in engine.step() if out.new_token_ids)
    num_running = engine.stats().num_running
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    engine.abort(req_ids)
    per_step = {g: ms / steps for g, ms in sorted(kernel_ms_by_group(prof).items())}
    return {"batch_size": num_running, "context": context,
            "wall_ms_per_step_profiled": 1e3 * wall / steps,
            "gpu_ms_per_step": sum(per_step.values()), "kernel_ms_per_step": per_step}
