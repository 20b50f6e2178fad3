"""The linear layers of Llama-3-8B in bf16 (cuBLAS) and FP8 (per-token activation scales,
per-channel weight scales, torch._scaled_mm): microseconds per layer at batch sizes from 1 to
8192 tokens, then each precision sustained for several seconds over a whole model's layers
(what the throughput run's prefill steps do), with the GPU's clock and power sampled, since
a long run of bf16 GEMMs is held at the GPU's power cap.

    python3 bench/gemm.py [--json FILE] [--sustain-seconds S]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from server.engine.gpu.graph_capture import median_replay_ms  # noqa: E402

# name -> (N, K) of Llama-3-8B (hidden 4096, 32/8 heads of 128, MLP 14336)
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}
BATCHES = (1, 16, 64, 128, 256, 384, 512, 1024, 2048, 8192)
NUM_LAYERS = 32
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
DTYPE = torch.bfloat16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise FP8: x ~= q * scale, scale [rows, 1] float32."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x / scale).to(FP8), scale


def fp8_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
               x_q: torch.Tensor | None = None, x_scale: torch.Tensor | None = None):
    if x_q is None:
        x_q, x_scale = quantize_rows(x)
    return torch._scaled_mm(x_q, weight_q.t(), scale_a=x_scale, scale_b=weight_scale.t(),
                            out_dtype=DTYPE)


def per_layer_rows(copies: dict) -> list[dict]:
    rows = []
    for name, (n, k) in SHAPES.items():
        weight = torch.randn((n, k), device="cuda", dtype=DTYPE) * 0.02
        weight_q, weight_scale = quantize_rows(weight)
        for batch in BATCHES:
            x = torch.randn((batch, k), device="cuda", dtype=DTYPE)
            x_q, x_scale = quantize_rows(x)
            row = {"layer": name, "n": n, "k": k, "batch": batch}
            row["bf16_us"] = 1e3 * median_replay_ms(lambda: F.linear(x, weight))
            try:
                row["fp8_us"] = 1e3 * median_replay_ms(
                    lambda: fp8_linear(x, weight_q, weight_scale, x_q, x_scale))
                row["fp8_with_quant_us"] = 1e3 * median_replay_ms(
                    lambda: fp8_linear(x, weight_q, weight_scale))
                ref = F.linear(x.float(), weight.float())
                got = fp8_linear(x, weight_q, weight_scale).float()
                row["fp8_rel_err"] = ((got - ref).norm() / ref.norm()).item()
            except RuntimeError as error:  # record what this torch refuses, go on
                row["fp8_error"] = str(error).splitlines()[0][:200]
            flops = 2 * batch * n * k
            row["bf16_tflops"] = flops / row["bf16_us"] / 1e6
            if "fp8_us" in row:
                row["fp8_tflops"] = flops / row["fp8_us"] / 1e6
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


class PowerSampler:
    """nvidia-smi every interval_ms in the background: SM clock (MHz) and board power (W).
    enabled=False (no GPU) samples nothing."""

    def __init__(self, *, interval_ms: int = 100, enabled: bool = True) -> None:
        self.interval_ms = interval_ms
        self.enabled = enabled
        self.samples: list[tuple[float, float]] = []

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
             "-lms", str(self.interval_ms)], stdout=subprocess.PIPE,
            text=True) if self.enabled else None
        return self

    def __exit__(self, *exc):
        if self.proc is None:
            return False
        self.proc.terminate()
        out, _ = self.proc.communicate()
        samples = [tuple(float(v) for v in line.split(",")) for line in out.splitlines()
                   if line.count(",") == 1]
        self.samples = samples[len(samples) // 4:]  # the clocks settle after a second or so
        return False

    def summary(self) -> dict:
        if not self.samples:
            return {}
        clocks = [c for c, _ in self.samples]
        power = [p for _, p in self.samples]
        return {"sm_clock_mhz_mean": sum(clocks) / len(clocks), "sm_clock_mhz_min": min(clocks),
                "power_w_mean": sum(power) / len(power), "power_w_max": max(power)}


def sustained(precision: str, *, tokens: int, seconds: float) -> dict:
    """A model's 32 layers of linears at `tokens` tokens, over and over for `seconds`."""
    layers = []
    for _ in range(NUM_LAYERS):
        layer = []
        for n, k in SHAPES.values():
            weight = torch.randn((n, k), device="cuda", dtype=DTYPE) * 0.02
            layer.append((k, weight) if precision == "bf16" else (k, *quantize_rows(weight)))
        layers.append(layer)
    inputs = {k: torch.randn((tokens, k), device="cuda", dtype=DTYPE) for k, _ in
              [(4096, 0), (14336, 0)]}

    def one_pass():
        for layer in layers:
            for k, *weights in layer:
                if precision == "bf16":
                    F.linear(inputs[k], weights[0])
                else:
                    fp8_linear(inputs[k], *weights)

    one_pass()
    torch.cuda.synchronize()
    passes = 0
    with PowerSampler() as sampler:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            one_pass()
            passes += 1
            if passes % 4 == 0:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    flops = passes * NUM_LAYERS * sum(2 * tokens * n * k for n, k in SHAPES.values())
    return {"precision": precision, "tokens": tokens, "seconds": elapsed, "passes": passes,
            "ms_per_pass": 1e3 * elapsed / passes, "tflops": flops / elapsed / 1e12,
            **sampler.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--sustain-seconds", type=float, default=6.0)
    parser.add_argument("--sustain-tokens", type=int, nargs="*", default=[8192, 512])
    args = parser.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    result["layers"] = per_layer_rows({})
    result["sustained"] = []
    for tokens in args.sustain_tokens:
        for precision in ("bf16", "fp8"):
            row = sustained(precision, tokens=tokens, seconds=args.sustain_seconds)
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            result["sustained"].append(row)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
