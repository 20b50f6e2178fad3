"""Straightforward readers of the quantized layouts, written from the formats' documentation
one value at a time (no shared code with the engine's vectorised packing): the reference the
engine's readers and `inflightd quantize`'s writers are checked against.

    GPTQ (AutoGPTQ / GPTQModel): qweight int32 [in / p, out], input row r of column j in word
        [r // p, j] at bits [(r % p) b, (r % p + 1) b), p = 32 / b; qzeros int32 [groups,
        out / p] alike along the output; the "gptq" checkpoint format stores zero - 1;
        scales [groups, out]; g_idx [in] the group of each input row. w = (q - z) * s.
    AWQ (AutoAWQ GEMM): qweight int32 [in, out / 8], output column j of row r in word
        [r, j // 8] at the slot i whose AWQ order entry is j % 8 (order 0 2 4 6 1 3 5 7),
        bits [4 i, 4 i + 4); qzeros [groups, out / 8] alike; groups of group_size rows.
    compressed-tensors: weight [out, in] (int8 or e4m3) times weight_scale [out, 1].
"""

from __future__ import annotations

import torch

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def field(word: int, slot: int, bits: int) -> int:
    """The slot-th `bits`-bit field of a 32-bit word (Python ints shift two's complement)."""
    return (word >> (slot * bits)) & ((1 << bits) - 1)


def gptq_weight(parts: dict[str, torch.Tensor], bits: int, *,
                zeros_minus_one: bool = True) -> torch.Tensor:
    per = 32 // bits
    qweight, qzeros = parts["qweight"].tolist(), parts["qzeros"].tolist()
    scales, g_idx = parts["scales"].float().tolist(), parts["g_idx"].tolist()
    rows, cols = len(qweight) * per, len(qweight[0])
    weight = torch.empty(cols, rows)
    for r in range(rows):
        g = g_idx[r]
        for j in range(cols):
            q = field(qweight[r // per][j], r % per, bits)
            z = field(qzeros[g][j // per], j % per, bits) + int(zeros_minus_one)
            weight[j, r] = (q - z) * scales[g][j]
    return weight


def awq_weight(parts: dict[str, torch.Tensor], group_size: int) -> torch.Tensor:
    qweight, qzeros = parts["qweight"].tolist(), parts["qzeros"].tolist()
    scales = parts["scales"].float().tolist()
    rows, cols = len(qweight), len(qweight[0]) * 8
    weight = torch.empty(cols, rows)
    for r in range(rows):
        g = r // group_size
        for j in range(cols):
            slot = AWQ_ORDER.index(j % 8)
            q = field(qweight[r][j // 8], slot, 4)
            z = field(qzeros[g][j // 8], slot, 4)
            weight[j, r] = (q - z) * scales[g][j]
    return weight


def compressed_tensors_weight(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    return parts["weight"].float() * parts["weight_scale"].float()


def dequantized_state(tensors: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A quantized checkpoint's tensors -> the float state dict they stand for."""
    quant = config["quantization_config"]
    method = quant["quant_method"]
    marker = {"gptq": ".qweight", "awq": ".qweight"}.get(method, ".weight_scale")
    prefixes = {name.removesuffix(marker) for name in tensors if name.endswith(marker)}
    state = {}
    for prefix in prefixes:
        parts = {name.removeprefix(prefix + "."): tensor for name, tensor in tensors.items()
                 if name.startswith(prefix + ".")}
        if method == "gptq":
            weight = gptq_weight(parts, quant["bits"],
                                 zeros_minus_one=quant.get("checkpoint_format") != "gptq_v2")
        elif method == "awq":
            weight = awq_weight(parts, quant["group_size"])
        else:
            weight = compressed_tensors_weight(parts)
        state[prefix + ".weight"] = weight
    for name, tensor in tensors.items():
        if not any(name.startswith(prefix + ".") for prefix in prefixes):
            state[name] = tensor.float()
    return state
