"""The integer-weight GEMVs (csrc/gemv_int.cu, csrc/w8a8.cu) on Llama-3-8B's linear layers
at 1 to 16 tokens, next to the bf16 GEMV and cuBLAS in the same run.

    python3 bench/int_gemv.py [--json FILE] [--tokens 1,2,4,8,16]

Every call is timed as one CUDA graph calling it on enough weight copies that no weight is
in L2 when it is read (bench/gemv.py's method). Per layer, token count and kernel:

    us      median microseconds per call
    GB/s    bytes the call must read from memory (packed weights + scales + zero points;
            x and y add under 0.1 %) per second of it: the weights streamed once
    %       GB/s over the copy bandwidth measured at the start of the run (bytes read +
            written per second of a device-to-device copy, bench/gpu_probes.copy_bandwidth:
            the same roofline as bench/offline.py's batch-1 figure): how close the kernel
            comes to the memory's speed (issue 21 aims at 80-85 % for W4A16 and W8A16)

Kernels (columns):
    bf16_gemv    csrc/gemv.cu on the bf16 weight (it has 1 to 4 tokens)
    bf16_cublas  F.linear on the bf16 weight
    w4_g128      W4A16, groups of 128 with zero points (AWQ's and GPTQ's usual layout): the
                 block-scaled kernel (_bs), which the engine picks for such groups
    w4_g128_each the same weights through the kernel that scales weight by weight (how
                 groups of 32 and 64 run): what block scaling buys
    w4_g32       W4A16, groups of 32
    w8           W8A16, one scale per output channel
    w8a8         W8A8's GEMV on int8 rows quantized before the graph (as in the engine,
                 the quantizer is a separate launch; it is left out here)
    w4_dequant   the W4A16 g128 weight dequantized into bf16, then cuBLAS: the path above 16
                 tokens, here to show where the GEMV stops paying (its GB/s count the 4-bit
                 bytes, so it reads as a rate of the same work)
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

from bench.gpu_probes import copy_bandwidth  # noqa: E402
from server.engine.gpu.graph_capture import median_replay_ms  # noqa: E402
from server.engine.gpu.kernels import KernelLibrary  # noqa: E402
from server.engine.models.int_weights import IntWeight, pack_int4  # noqa: E402
from server.engine.ops.cuda_int import (dequantize_int_into, gemv_int_into,  # noqa: E402
                                        gemv_w8a8_into, quantize_int8_rows_reference)
from server.engine.ops.cuda_launch import GEMV_MAX_TOKENS, gemv_into  # noqa: E402

# name -> (N, K) of Llama-3-8B (hidden 4096, 32/8 heads of 128, MLP 14336)
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}
L2_FLUSH_BYTES = 256 * 2**20  # several times the H200's 60 MiB L2
DTYPE = torch.bfloat16
KERNELS = ("bf16_gemv", "bf16_cublas", "w4_g128", "w4_g128_each", "w4_g32", "w8", "w8a8",
           "w4_dequant")


def int_weight(n: int, k: int, *, bits: int, group_size: int, act_int8: bool = False
               ) -> IntWeight:
    """Random codes over their whole range (never zeros: METHOD.md), scales near 1 / 64."""
    groups = k // group_size
    scales = (torch.rand((n, groups), device="cuda") / 32).to(DTYPE)
    if bits == 4:
        codes = pack_int4(torch.randint(0, 16, (n, k), device="cuda"))
        zeros = torch.randint(0, 16, (n, groups), device="cuda").to(DTYPE)
    else:
        codes = torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8)
        zeros = None
    return IntWeight(qweight=codes, scales=scales, zeros=zeros, bits=bits,
                     group_size=group_size, act_int8=act_int8)


def bytes_read(weight) -> int:
    if isinstance(weight, torch.Tensor):
        return weight.numel() * weight.element_size()
    parts = [weight.qweight, weight.scales] + ([weight.zeros] if weight.zeros is not None else [])
    return sum(t.numel() * t.element_size() for t in parts)


def weight_copies(make, n: int, k: int) -> list:
    first = make(n, k)
    count = max(2, -(-L2_FLUSH_BYTES // bytes_read(first)))
    return [first] + [make(n, k) for _ in range(count - 1)]


def make_weights(kernel: str):
    """(N, K) -> one weight of the kernel's kind."""
    return {
        "bf16_gemv": lambda n, k: torch.randn((n, k), device="cuda", dtype=DTYPE) / k ** 0.5,
        "w4_g128": lambda n, k: int_weight(n, k, bits=4, group_size=128),
        "w4_g32": lambda n, k: int_weight(n, k, bits=4, group_size=32),
        "w8": lambda n, k: int_weight(n, k, bits=8, group_size=k),
        "w8a8": lambda n, k: int_weight(n, k, bits=8, group_size=k, act_int8=True),
    }[kernel]


# the kernels that read the same weights as another column
SHARED_WEIGHTS = {"bf16_cublas": "bf16_gemv", "w4_g128_each": "w4_g128", "w4_dequant": "w4_g128"}


def kernel_call(lib: KernelLibrary, kernel: str, x: torch.Tensor, n: int):
    """weight -> one call of `kernel` on x, writing into buffers made once here."""
    y = torch.empty((x.shape[0], n), device="cuda", dtype=DTYPE)
    if kernel == "bf16_gemv":
        return lambda w: gemv_into(lib, y, x, w)
    if kernel == "bf16_cublas":
        return lambda w: F.linear(x, w)
    if kernel == "w4_g128_each":
        return lambda w: gemv_int_into(lib, y, x, w, block_scale=False)
    if kernel == "w8a8":
        q, scale = quantize_int8_rows_reference(x)
        return lambda w: gemv_w8a8_into(lib, y, q, scale, w)
    if kernel == "w4_dequant":
        dense = torch.empty((n, x.shape[1]), device="cuda", dtype=DTYPE)

        def dequant_then_cublas(w):
            dequantize_int_into(lib, dense, w)
            return torch.mm(x, dense.t())
        return dequant_then_cublas
    block_scale = True if kernel == "w4_g128" else None  # the column says which kernel
    return lambda w: gemv_int_into(lib, y, x, w, block_scale=block_scale)


def time_us(call, weights: list) -> float:
    """Microseconds per call, from one graph calling it on each weight copy once."""
    def calls():
        for weight in weights:
            call(weight)

    return 1e3 * median_replay_ms(calls) / len(weights)


def layer_rows(lib: KernelLibrary, name: str, n: int, k: int, tokens: list[int],
               bandwidth: float) -> list[dict]:
    own = [kernel for kernel in KERNELS if kernel not in SHARED_WEIGHTS]
    copies = {kernel: weight_copies(make_weights(kernel), n, k) for kernel in own}
    rows = []
    for num_tokens in tokens:
        x = torch.randn((num_tokens, k), device="cuda", dtype=DTYPE)
        row = {"layer": name, "n": n, "k": k, "tokens": num_tokens}
        for kernel in KERNELS:
            if kernel == "bf16_gemv" and num_tokens > GEMV_MAX_TOKENS:
                continue
            weights = copies[SHARED_WEIGHTS.get(kernel, kernel)]
            us = time_us(kernel_call(lib, kernel, x, n), weights)
            gb_s = bytes_read(weights[0]) / us / 1e3
            row.update({f"{kernel}_us": us, f"{kernel}_gb_s": gb_s,
                        f"{kernel}_pct": 100 * gb_s * 1e9 / bandwidth})
        rows.append(row)
    return rows


def print_table(rows: list[dict], bandwidth: float) -> None:
    print(f"{torch.cuda.get_device_name()}: x [tokens, K] @ W [N, K]^T; copy bandwidth "
          f"{bandwidth / 1e9:,.0f} GB/s; cells: us  GB/s  % of it")
    print(f"{'layer':>8} {'N':>6} {'K':>6} {'tok':>3} "
          + " ".join(f"{kernel:>18}" for kernel in KERNELS))
    for r in rows:
        cells = []
        for kernel in KERNELS:
            if f"{kernel}_us" not in r:
                cells.append(f"{'-':>18}")
                continue
            cells.append(f"{r[f'{kernel}_us']:7.1f} {r[f'{kernel}_gb_s']:5.0f} "
                         f"{r[f'{kernel}_pct']:3.0f}%")
        print(f"{r['layer']:>8} {r['n']:>6} {r['k']:>6} {r['tokens']:>3} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tokens", default="1,2,4,8,16",
                        help="comma-separated token counts, each 1 to 16")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    library = KernelLibrary()  # modules compile (or load from the cache) at first use
    bandwidth = copy_bandwidth("cuda")
    rows = []
    for name, (n, k) in SHAPES.items():
        rows.extend(layer_rows(library, name, n, k, tokens, bandwidth))
        torch.cuda.empty_cache()
    print_table(rows, bandwidth)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                         "copy_bandwidth": bandwidth, "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
