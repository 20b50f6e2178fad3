"""Quantized linear layers laid out as the tools that made each format write them, and the
quantization_config each puts in config.json (the layouts themselves are described where
the engine reads them: loading/quantized_checkpoints.py, loading/compressed_tensors.py).

    gptq      X.qweight, X.qzeros (zeros minus one: the "gptq" checkpoint format),
              X.scales (fp16), X.g_idx (in order, or each input row's group where GPTQ's
              dynamic groups scattered them: gptq.py); group_size -1 for one group per channel
    awq       AutoAWQ's GEMM layout: X.qweight, X.qzeros, X.scales (fp16), 4 bits, zero points
    w8a8      compressed-tensors int-quantized: X.weight int8, X.weight_scale [out, 1]
    fp8       compressed-tensors float-quantized: X.weight e4m3, X.weight_scale [out, 1]
"""

from __future__ import annotations

import torch

from server.engine.loading.quantized_checkpoints import AWQ_ORDER, pack_columns, pack_rows
from server.engine.models.int_grid import IntCodes
from server.engine.models.quantization import quantize_rows
from server.quantize.options import QuantizeError

QUANTIZER = "inflightd"


def _check_packable(prefix: str, codes: IntCodes, *, input_packed: bool) -> None:
    """GPTQ packs 32 / bits input rows per int32 (qweight) and output columns (qzeros);
    AWQ packs 8 output columns per int32."""
    per = 32 // codes.bits
    rows, cols = codes.shape
    if rows % per or (input_packed and cols % per):
        raise QuantizeError(f"{prefix} is {rows} x {cols}: the {codes.bits}-bit layout packs "
                            f"{per} values per int32 along both, which must divide them")


def gptq_tensors(prefix: str, codes: IntCodes) -> dict[str, torch.Tensor]:
    _check_packable(prefix, codes, input_packed=True)
    if not bool((codes.zeros >= 1).all()):
        raise QuantizeError(f"{prefix}: a zero point of 0 has no place in GPTQ's layout, "
                            "which stores zero - 1")
    cols = codes.shape[1]
    g_idx = codes.g_idx if codes.g_idx is not None else torch.arange(cols) // codes.group_size
    mask = (1 << codes.bits) - 1
    return {f"{prefix}.qweight": pack_rows(codes.codes.t(), codes.bits),
            f"{prefix}.qzeros": pack_columns((codes.zeros.t() - 1) & mask, codes.bits),
            f"{prefix}.scales": codes.scales.t().to(torch.float16).contiguous(),
            f"{prefix}.g_idx": g_idx.to(torch.int32).contiguous()}


def gptq_config(*, bits: int, group_size: int, per_channel: bool, method: str,
                sym: bool = True) -> dict:
    """As GPTQModel and AutoGPTQ write it (vLLM, transformers and both tools read it). GPTQ
    here quantizes in act-order with static groups, which leaves the groups in stored order:
    to a reader the layout is desc_act false (meta records what was done)."""
    return {"quant_method": "gptq", "bits": bits, "group_size": -1 if per_channel else group_size,
            "desc_act": False, "sym": sym, "static_groups": method == "gptq",
            "true_sequential": False, "damp_percent": 0.01, "lm_head": False,
            "checkpoint_format": "gptq",
            "meta": {"quantizer": [QUANTIZER], "method": method,
                     **({"act_order": "static groups"} if method == "gptq" else {})}}


def awq_tensors(prefix: str, codes: IntCodes) -> dict[str, torch.Tensor]:
    _check_packable(prefix, codes, input_packed=False)
    return {f"{prefix}.qweight": pack_columns(codes.codes.t(), 4, order=AWQ_ORDER),
            f"{prefix}.qzeros": pack_columns(codes.zeros.t(), 4, order=AWQ_ORDER),
            f"{prefix}.scales": codes.scales.t().to(torch.float16).contiguous()}


def awq_config(*, group_size: int) -> dict:
    """As AutoAWQ writes it for its GEMM kernels."""
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
            "version": "gemm", "modules_to_not_convert": None}


def w8a8_tensors(prefix: str, codes: IntCodes) -> dict[str, torch.Tensor]:
    if not codes.is_symmetric or codes.bits != 8:
        raise QuantizeError(f"{prefix}: W8A8 weights are symmetric 8-bit")
    return {f"{prefix}.weight": (codes.codes - 128).to(torch.int8),
            f"{prefix}.weight_scale": codes.scales.float().reshape(-1, 1).contiguous()}


def fp8_tensors(prefix: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    data, scale = quantize_rows(weight)  # the engine's own FP8 rounding, per output row
    return {f"{prefix}.weight": data, f"{prefix}.weight_scale": scale.contiguous()}


def compressed_tensors_config(kind: str) -> dict:
    """llm-compressor's quantization_config for W8A8 int8 ("int") or FP8 ("float"): one
    group for every Linear but lm_head, per-channel weights, dynamic per-token inputs."""
    def args(strategy: str, dynamic: bool) -> dict:
        return {"num_bits": 8, "type": kind, "symmetric": True, "strategy": strategy,
                "dynamic": dynamic, "group_size": None, "block_structure": None,
                "actorder": None, "observer": None if dynamic else "minmax",
                "observer_kwargs": {}}

    return {"quant_method": "compressed-tensors",
            "format": "int-quantized" if kind == "int" else "float-quantized",
            "quantization_status": "compressed", "ignore": ["lm_head"], "kv_cache_scheme": None,
            "config_groups": {"group_0": {"targets": ["Linear"],
                                          "weights": args("channel", False),
                                          "input_activations": args("token", True),
                                          "output_activations": None}}}
