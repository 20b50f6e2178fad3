"""Measurements the GPU mode of bench/offline.py takes next to its throughput figures, to say
where a decode step's time goes:

    copy_bandwidth      device-to-device copy, bytes read + written per second (the roofline)
    gemm_floor_ms       the model's linear layers alone (qkv, o, gate_up, down, lm_head) at
                        batch 1, replayed from one CUDA graph: the weight-streaming floor,
                        through the engine's ops (our GEMV) or cuBLAS
    padded_replay_ms    the engine's batch-1 decode graph (every kernel, one-key context)
    StepTimer           a run's wall time split into launching steps, waiting for their
                        tokens (GPU-bound) and the rest of the host's work
    profile_decode      GPU time per decode step by kernel group (torch profiler, CUPTI),
                        on real decode steps of a given batch size and context
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from server.engine.gpu.graph_capture import median_replay_ms
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import FP8_DTYPE, FP8_INV_MAX, Fp8Weight
from server.scheduler.request import SamplingParams

# kernel group -> substrings of the kernel names (ours from csrc/, cuBLAS's for the GEMMs)
KERNEL_GROUPS = (
    ("decode stack", ("decode_stack",)),  # batch 1's every layer in one kernel (GPT-2 style)
    ("attention", ("paged_attention", "paged_decode")),
    ("norms", ("rms_norm", "layer_norm")),
    ("rope + KV write", ("rope_and_cache",)),
    ("silu_and_mul", ("silu_and_mul",)),
    ("GEMM", ("gemm", "gemv", "nvjet", "cutlass", "xmma", "splitk", "cublas")),
    ("gelu", ("gelu_erf", "gelu_tanh")),  # after GEMM: gemv_gelu_* is a GEMV
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


def gemm_floor_ms(model, *, batch_size: int = 1, ops=None) -> float:
    """One graph replaying every linear layer of the model on [batch_size, ...] inputs,
    through ops.linear (the engine's choice of kernel) or, without ops, cuBLAS (F.linear;
    for FP8 weights torch._scaled_mm on activations quantized before the graph)."""
    linear = cublas_linear() if ops is None else ops.linear
    device, dtype = model.device, model.dtype
    arch = model.arch
    hidden = torch.randn(batch_size, arch.hidden_size, device=device, dtype=dtype)
    attn = torch.randn(batch_size, arch.num_heads * arch.head_dim, device=device, dtype=dtype)
    inter = torch.randn(batch_size, arch.intermediate_size, device=device, dtype=dtype)

    def linears():
        for layer in model.layers:
            linear(hidden, layer.qkv_weight, layer.qkv_bias)
            linear(attn, layer.o_weight, layer.o_bias)
            linear(hidden, layer.gate_up_weight)
            linear(inter, layer.down_weight)
        linear(hidden, model.lm_head)

    return median_replay_ms(linears)


def cublas_linear() -> Callable:
    """F.linear, or for an Fp8Weight the FP8 GEMM alone on activations quantized at the
    first call (the quantization is the engine's business, not the floor's); an IntWeight
    dequantized at its first call."""
    quantized: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    dense: dict[int, tuple[IntWeight, torch.Tensor]] = {}  # the IntWeight kept: ids stay unique

    def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(weight, IntWeight):  # cuBLAS on the dense weight, dequantized once
            if id(weight) not in dense:
                dense[id(weight)] = (weight, weight.dequantize(x.dtype))
            return F.linear(x, dense[id(weight)][1], bias)
        if not isinstance(weight, Fp8Weight):
            return F.linear(x, weight, bias)
        if id(x) not in quantized:  # x itself is kept too, so its id is not reused
            scale = x.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) * FP8_INV_MAX
            quantized[id(x)] = (x, (x.float() / scale).to(FP8_DTYPE), scale)
        _, x_q, x_scale = quantized[id(x)]
        return torch._scaled_mm(x_q, weight.data.t(), scale_a=x_scale,
                                scale_b=weight.scale.view(1, -1), out_dtype=x.dtype)

    return linear


@dataclass
class StepTimer:
    """Wraps runner.launch and runner.resolve to split the wall time of a run: host time
    launching steps (inputs, graph replay or eager kernels), time the host blocked waiting
    for a step's tokens (the GPU was the bottleneck), and the rest (scheduler, engine and
    caller loops). With async scheduling the host's work overlaps the GPU's, so a high
    waiting share means the host kept up."""

    runner: object
    decode_steps: int = 0
    decode_tokens: int = 0
    mixed_steps: int = 0
    launch_seconds: float = 0.0
    wait_seconds: float = 0.0
    _launch: object = field(default=None, repr=False)
    _resolve: object = field(default=None, repr=False)
    # per launched step: CUDA events on the stream around its work, and whether decode-only
    _events: list = field(default_factory=list, repr=False)

    def __enter__(self) -> "StepTimer":
        self._launch, self._resolve = self.runner.launch, self.runner.resolve

        def launch(scheduler_output):
            timed = torch.cuda.is_available() and not scheduler_output.is_empty
            if timed:
                gpu_start = torch.cuda.Event(enable_timing=True)
                gpu_start.record()
            start = time.perf_counter()
            step = self._launch(scheduler_output)
            self.launch_seconds += time.perf_counter() - start
            if timed:
                gpu_end = torch.cuda.Event(enable_timing=True)
                gpu_end.record()
                self._events.append((gpu_start, gpu_end, scheduler_output.is_decode_only))
            if scheduler_output.is_empty:
                return step
            if scheduler_output.is_decode_only:
                self.decode_steps += 1
                self.decode_tokens += len(scheduler_output.scheduled)
            else:
                self.mixed_steps += 1
            return step

        def resolve(step):
            start = time.perf_counter()
            output = self._resolve(step)
            self.wait_seconds += time.perf_counter() - start
            return output

        self.runner.launch, self.runner.resolve = launch, resolve
        return self

    def __exit__(self, *exc) -> None:
        del self.runner.launch, self.runner.resolve  # back to the class's methods

    def step_gpu_ms(self) -> list[tuple[float, bool]]:
        """(GPU milliseconds, decode-only) of every launched step, in launch order; empty
        without a GPU."""
        if not self._events:
            return []
        torch.cuda.synchronize()
        return [(start.elapsed_time(end), decode_only)
                for start, end, decode_only in self._events]

    def gpu_seconds(self) -> dict:
        """GPU time of the launched steps (from the stream reaching a step to its last op,
        so bubbles inside a step count), by kind, and the idle time between steps."""
        if not self._events:
            return {}
        torch.cuda.synchronize()
        totals = {"decode_gpu_seconds": 0.0, "mixed_gpu_seconds": 0.0,
                  "idle_between_steps_seconds": 0.0, "idle_before_mixed_seconds": 0.0}
        gaps = []  # (idle ms, index of the step after it, decode-only)
        previous_end = None
        for index, (start, end, decode_only) in enumerate(self._events):
            key = "decode_gpu_seconds" if decode_only else "mixed_gpu_seconds"
            totals[key] += start.elapsed_time(end) / 1e3
            if previous_end is not None:
                idle = max(0.0, previous_end.elapsed_time(start) / 1e3)
                totals["idle_between_steps_seconds"] += idle
                if not decode_only:
                    totals["idle_before_mixed_seconds"] += idle
                gaps.append((1e3 * idle, index, decode_only))
            previous_end = end
        totals["idle_gaps_over_1ms"] = sum(1 for gap in gaps if gap[0] > 1.0)
        totals["longest_idle_gaps"] = [
            {"ms": round(ms, 2), "before_step": index, "decode_only": decode_only}
            for ms, index, decode_only in sorted(gaps, reverse=True)[:8]]
        return totals

    def summary(self, wall_seconds: float) -> dict:
        return {**self.gpu_seconds(),
                "decode_steps": self.decode_steps, "mixed_steps": self.mixed_steps,
                "mean_decode_batch": self.decode_tokens / max(1, self.decode_steps),
                "mean_step_ms": 1e3 * wall_seconds / max(1, self.decode_steps
                                                         + self.mixed_steps),
                "launch_seconds": self.launch_seconds, "wait_seconds": self.wait_seconds,
                "other_host_seconds": wall_seconds - self.launch_seconds - self.wait_seconds}


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
    context = min(context, engine.info.max_model_len // 2)  # GPT-2: 1,024 positions in all
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


def profile_prefill(llm, *, num_prompts: int = 8, prompt_len: int = 1024,
                    seed: int = 0) -> dict:
    """GPU time by kernel group of prefilling num_prompts random prompts of prompt_len
    tokens (one token generated each), with the GEMMs' achieved TFLOP/s."""
    from torch.profiler import ProfilerActivity, profile

    engine = llm.engine
    rng = random.Random(seed)
    prompt_len = min(prompt_len, engine.info.max_model_len - 1)  # room for the one token
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=1)
    for index in range(num_prompts):
        engine.add_request(f"prefill-profile-{index}",
                           [rng.randrange(100, engine.info.vocab_size)
                            for _ in range(prompt_len)], params)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        steps = 0
        while engine.has_unfinished():
            engine.step()
            steps += 1
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    by_group = {g: ms for g, ms in sorted(kernel_ms_by_group(prof).items())}
    num_tokens = num_prompts * prompt_len
    linear_params = sum(math.prod(t.shape) for name, t in  # tensors, Fp8 / int weights
                        llm.engine.runner.model.weight_destinations().items()
                        if name.startswith("model.layers.") and name.endswith("_proj.weight"))
    gemm_flop = 2 * linear_params * num_tokens
    return {"num_tokens": num_tokens, "steps": steps, "wall_ms": 1e3 * wall,
            "gpu_ms": sum(by_group.values()), "kernel_ms": by_group,
            "gemm_tflops": gemm_flop / (by_group.get("GEMM", float("nan")) * 1e-3) / 1e12}


def profile_mixed(llm, *, num_decodes: int = 256, context: int = 640, num_prefills: int = 8,
                  prefill_len: int = 992, seed: int = 0) -> dict:
    """One mixed step as the throughput run has them: num_decodes requests decoding at
    `context`, plus num_prefills new prompts of prefill_len tokens. GPU time by kernel
    group (profiler: kernels only) against the step's time on the stream (events: bubbles
    included) and the host's time to launch it, and the host's top ops."""
    from torch.profiler import ProfilerActivity, profile

    engine = llm.engine
    rng = random.Random(seed)

    def prompt(length: int) -> list[int]:
        return [rng.randrange(100, engine.info.vocab_size) for _ in range(length)]

    decode_params = SamplingParams(temperature=0, ignore_eos=True,
                                   max_tokens=engine.info.max_model_len - context - 1)
    decode_ids = [f"mixed-decode-{i}" for i in range(num_decodes)]
    for req_id in decode_ids:
        engine.add_request(req_id, prompt(context), decode_params)
    started: set[str] = set()
    while len(started) < num_decodes:
        started.update(out.req_id for out in engine.step() if out.new_token_ids)
    prefill_ids = {f"mixed-prefill-{i}" for i in range(num_prefills)}
    for req_id in sorted(prefill_ids):
        engine.add_request(req_id, prompt(prefill_len),
                           SamplingParams(temperature=0, ignore_eos=True, max_tokens=1))
    torch.cuda.synchronize()
    with StepTimer(engine.runner) as timer, profile(
            activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        done: set[str] = set()
        while not prefill_ids <= done:
            done.update(out.req_id for out in engine.step() if out.finished)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    engine.abort(decode_ids)
    kernels = {g: ms for g, ms in sorted(kernel_ms_by_group(prof).items())}
    host_ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return {"num_decodes": num_decodes, "context": context,
            "prefill_tokens": num_prefills * prefill_len, "wall_ms": 1e3 * wall,
            "kernel_ms": kernels, "kernel_ms_total": sum(kernels.values()),
            "steps": timer.summary(wall), "host_top_ops": host_ops}
