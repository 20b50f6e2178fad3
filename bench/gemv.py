"""Our decode GEMV (csrc/gemv.cu) against cuBLAS (F.linear) on Llama-3-8B's linear layers
at 1 to 4 tokens: microseconds and weight bytes streamed per second, each timed as a CUDA
graph of enough calls on distinct weight copies that the weights never sit in L2.

    python3 bench/gemv.py [--shapes gpt2-xl] [--json FILE]
    python3 bench/gemv.py --fp8 [--json FILE]
    python3 bench/gemv.py --logits [--json FILE]

--fp8 times the FP8 GEMVs of csrc/gemv_fp8.cu instead, on activations already quantized
(as the fused norm and SiLU kernels hand them over): the tensor-core kernel at 1 to 8
tokens, the CUDA-core kernel at 1 to 4, and torch._scaled_mm (cuBLASLt) beside them; at one
token also the weight-only kernel on the 16-bit row (what a one-token step runs), and the
gate_up row's weight-only kernel with SiLU-and-mul as its epilogue.

--logits times the LM heads of the dummy: families at one token with float32 out (the logits
ops.logits makes): our GEMV's _logits kernel against torch.mm(out_dtype=float32), which the
engine otherwise runs, and the 16-bit F.linear beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from server.engine.gpu.graph_capture import median_replay_ms  # noqa: E402
from server.engine.gpu.kernels import KernelLibrary  # noqa: E402
from server.engine.ops.cuda import CudaOps  # noqa: E402
from server.engine.ops.cuda_fp8 import gemv_fp8_into, gemv_w8a16_into  # noqa: E402
from server.engine.ops.cuda_launch import GEMV_MAX_TOKENS  # noqa: E402
from server.engine.models.quantization import Fp8Weight, quantize_rows  # noqa: E402

# name -> (N, K) of Llama-3-8B (hidden 4096, 32/8 heads of 128, MLP 14336, vocab 128256)
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336), "lm_head": (128256, 4096)}
# --shapes: other models' layers. GPT-2 XL (hidden 1600, MLP 6400, vocab 50257): a row of
# K = 1600 is 200 chunks, under one round of the GEMV's loads, so it is all tail.
MODEL_SHAPES = {"llama-3-8b": SHAPES,
                "gpt2-xl": {"qkv": (4800, 1600), "o": (1600, 1600), "fc": (6400, 1600),
                            "proj": (1600, 6400), "lm_head": (50257, 1600)}}
# --logits: (vocabulary, hidden) of the LM heads
LM_HEADS = {"smollm2-135m": (49152, 576), "qwen2.5-0.5b": (151936, 896),
            "tinyllama-1.1b (K 1024)": (32000, 1024), "gpt2-large": (50257, 1280),
            "gpt2-xl": (50257, 1600),
            "starcoder-1b": (49152, 2048), "phi-3-mini": (32064, 3072),
            "gemma-2-9b": (256000, 3584), "llama-3-8b": (128256, 4096),
            "qwen3-8b": (151936, 4096), "falcon-7b": (65024, 4544)}
L2_FLUSH_BYTES = 256 * 2**20  # several times the H200's 60 MiB L2
DTYPE = torch.bfloat16


def time_linear(linear, x: torch.Tensor, weights: list[torch.Tensor]) -> float:
    """Microseconds per call, from one graph calling linear on each weight once."""
    def calls():
        for weight in weights:
            linear(x, weight)

    return 1e3 * median_replay_ms(calls) / len(weights)


def fp8_rows() -> list[dict]:
    library = KernelLibrary()
    library.load_all(head_dims=())  # GEMVs only: no attention modules
    rows = []
    for name, (n, k) in SHAPES.items():
        copies = max(2, -(-L2_FLUSH_BYTES // (n * k)))
        weights = [Fp8Weight.empty(n, k, device="cuda").copy_(
            torch.randn((n, k), device="cuda", dtype=DTYPE)) for _ in range(copies)]
        for num_tokens in (1, 2, 4, 8):
            x16 = torch.randn((num_tokens, k), device="cuda", dtype=DTYPE)
            q, scale = quantize_rows(x16)
            y = torch.empty((num_tokens, n), device="cuda", dtype=DTYPE)
            kernels = {
                "mma": lambda x, w: gemv_fp8_into(library, y, q, scale, w,
                                                  tensor_cores=True),
                "cuda_cores": lambda x, w: gemv_fp8_into(library, y, q, scale, w,
                                                         tensor_cores=False),
                "scaled_mm": lambda x, w: torch._scaled_mm(
                    q, w.data.t(), scale_a=scale, scale_b=w.scale.view(1, -1),
                    out_dtype=DTYPE)}
            if num_tokens > GEMV_MAX_TOKENS:
                del kernels["cuda_cores"]
            if num_tokens == 1:
                kernels["weight_only"] = lambda x, w: gemv_w8a16_into(library, y, x16, w)
                if name == "gate_up":
                    kernels["weight_only_silu"] = lambda x, w: gemv_w8a16_into(
                        library, y[:, : n // 2], x16, w, silu_and_mul=True)
            row = {"layer": name, "n": n, "k": k, "tokens": num_tokens}
            for kernel, call in kernels.items():
                row[f"{kernel}_us"] = time_linear(call, q, weights)
                row[f"{kernel}_gb_s"] = n * k / row[f"{kernel}_us"] / 1e3
            rows.append(row)
        del weights
    print(f"{torch.cuda.get_device_name()}: e4m3 x [tokens, K] @ W [N, K]^T, us (GB/s)")
    for r in rows:
        cells = "  ".join(f"{kernel} {r[f'{kernel}_us']:7.1f} ({r[f'{kernel}_gb_s']:4.0f})"
                          for kernel in ("mma", "cuda_cores", "weight_only", "weight_only_silu",
                                         "scaled_mm")
                          if f"{kernel}_us" in r)
        print(f"{r['layer']:>8} {r['n']:>7} {r['k']:>6} {r['tokens']:>3}  {cells}")
    return rows


def logits_rows() -> list[dict]:
    ops = CudaOps(KernelLibrary(), logits_gemv_min_k=0)  # our GEMV at every width
    rows = []
    for model, (n, k) in LM_HEADS.items():
        weight_bytes = n * k * DTYPE.itemsize
        copies = max(2, -(-L2_FLUSH_BYTES // weight_bytes))
        weights = [torch.randn((n, k), device="cuda", dtype=DTYPE) / k ** 0.5
                   for _ in range(copies)]
        x = torch.randn((1, k), device="cuda", dtype=DTYPE)
        row = {"model": model, "n": n, "k": k,
               "gemv_us": time_linear(ops.logits, x, weights),
               "mm_f32_us": time_linear(
                   lambda x, w: torch.mm(x, w.t(), out_dtype=torch.float32), x, weights),
               "linear_bf16_us": time_linear(F.linear, x, weights)}
        for kernel in ("gemv", "mm_f32", "linear_bf16"):
            row[f"{kernel}_gb_s"] = weight_bytes / row[f"{kernel}_us"] / 1e3
        rows.append(row)
        del weights
    print(f"{torch.cuda.get_device_name()}: logits of one token, us (GB/s)")
    for r in rows:
        cells = "  ".join(f"{kernel} {r[f'{kernel}_us']:7.1f} ({r[f'{kernel}_gb_s']:4.0f})"
                          for kernel in ("gemv", "mm_f32", "linear_bf16"))
        print(f"{r['model']:>23} {r['n']:>7} {r['k']:>5}  {cells}  "
              f"{r['mm_f32_us'] / r['gemv_us']:.2f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--fp8", action="store_true", help="the FP8 GEMVs instead")
    parser.add_argument("--logits", action="store_true",
                        help="the LM heads' float32 logits instead")
    parser.add_argument("--shapes", choices=sorted(MODEL_SHAPES), default="llama-3-8b",
                        help="whose linear layers (the 16-bit GEMV only)")
    args = parser.parse_args()
    if args.fp8 or args.logits:
        rows = fp8_rows() if args.fp8 else logits_rows()
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return
    # our GEMV at every size and token count it has, whatever the engine's rule picks
    ops = CudaOps(KernelLibrary(), gemv_max_tokens=4, gemv_max_weight_elements=2**62)
    rows = []
    for name, (n, k) in MODEL_SHAPES[args.shapes].items():
        weight_bytes = n * k * DTYPE.itemsize
        copies = max(2, -(-L2_FLUSH_BYTES // weight_bytes))
        weights = [torch.randn((n, k), device="cuda", dtype=DTYPE) / k ** 0.5
                   for _ in range(copies)]
        for num_tokens in (1, 2, 4):
            x = torch.randn((num_tokens, k), device="cuda", dtype=DTYPE)
            ours = time_linear(ops.linear, x, weights)
            cublas = time_linear(F.linear, x, weights)
            rows.append({"layer": name, "n": n, "k": k, "tokens": num_tokens,
                         "gemv_us": ours, "cublas_us": cublas,
                         "gemv_gb_s": weight_bytes / ours / 1e3,
                         "cublas_gb_s": weight_bytes / cublas / 1e3})
        del weights
    print(f"{torch.cuda.get_device_name()}: bf16 x [tokens, K] @ W [N, K]^T")
    print(f"{'layer':>8} {'N':>7} {'K':>6} {'tokens':>6} {'gemv us':>8} {'GB/s':>6} "
          f"{'cuBLAS us':>9} {'GB/s':>6} {'speed-up':>8}")
    for r in rows:
        print(f"{r['layer']:>8} {r['n']:>7} {r['k']:>6} {r['tokens']:>6} {r['gemv_us']:>8.1f} "
              f"{r['gemv_gb_s']:>6.0f} {r['cublas_us']:>9.1f} {r['cublas_gb_s']:>6.0f} "
              f"{r['cublas_us'] / r['gemv_us']:>7.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
