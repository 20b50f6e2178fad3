"""AWQ, GPTQ and compressed-tensors checkpoints read as they are. Their layers load as
IntWeights (loading/int_repack.py) where the engine can hold them as integers (int_scheme),
else as the floating-point weights they stand for (dequantize).

Each quantized linear layer `X` stores, instead of `X.weight` [out, in]:

    GPTQ (AutoGPTQ, GPTQModel)             AWQ (AutoAWQ, "gemm" version)
    X.qweight  int32 [in / p, out]         X.qweight  int32 [in, out / p]
               packed along the input               packed along the output, in the
    X.qzeros   int32 [groups, out / p]              order 0 2 4 6 1 3 5 7 (4 bits)
               packed along the output     X.qzeros   int32 [groups, out / p], alike
    X.scales   fp16  [groups, out]         X.scales   fp16  [groups, out]
    X.g_idx    int32 [in]: each input row's group (permuted with desc_act)

with p = 32 / bits values per int32, value j in bits [j bits, (j + 1) bits). Weights are
scale * (q - zero): GPTQ's "gptq" format stores each zero minus one (its v2 format does
not); AWQ's groups are consecutive runs of group_size input rows. compressed-tensors W8A8
stores X.weight int8 [out, in] and X.weight_scale [out, 1] (loading/compressed_tensors.py);
its FP8 variant is read as the engine's own FP8 layout, not as packed layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from server.engine.loading.compressed_tensors import CT_METHOD, ct_scheme
from server.engine.models.errors import UnsupportedModelError
from server.engine.models.int_schemes import IntScheme

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # packed slot i holds column 8c + AWQ_ORDER[i]
PARTS = {"gptq": ("qweight", "qzeros", "scales", "g_idx"), "awq": ("qweight", "qzeros", "scales"),
         "w8a8": ("weight", "weight_scale"), "fp8": ()}
# stored by some writers, not needed: compressed-tensors' zero points of symmetric weights
OPTIONAL_PARTS = {"w8a8": ("weight_zero_point",)}
# the part whose name marks a layer as packed
MARKER = {"gptq": "qweight", "awq": "qweight", "w8a8": "weight_scale"}
# act-order permutes every layer's input rows; only the down projection's can be undone ahead
# of time (int_repack.py), so the other kinds run dequantized
ACT_ORDER_DENSE = frozenset({"qkv", "o", "gate_up"})


@dataclass(frozen=True)
class QuantizedFormat:
    method: str  # "gptq", "awq", or compressed-tensors' "w8a8" or "fp8"
    bits: int
    group_size: int  # -1: one group over every input row (GPTQ, compressed-tensors)
    zeros_minus_one: bool  # GPTQ's "gptq" checkpoint format
    sym: bool = True  # GPTQ: symmetric (zero points all 2^(bits-1))
    desc_act: bool = False  # GPTQ's act-order: g_idx permutes the input rows

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> "QuantizedFormat":
        """From config.json's quantization_config; a variant not read here is refused by
        name."""
        method = str(config.get("quant_method", "unknown")).lower()
        bits, group_size = int(config.get("bits", config.get("w_bit", 0))), \
            int(config.get("group_size", config.get("q_group_size", 128)))
        if method == "gptq":
            checkpoint_format = config.get("checkpoint_format", "gptq")
            if bits not in (4, 8) or checkpoint_format not in ("gptq", "gptq_v2"):
                raise UnsupportedModelError(
                    f"GPTQ checkpoints with bits {bits} and checkpoint_format "
                    f"{checkpoint_format!r} are not supported (4 or 8 bits, gptq or gptq_v2)")
            static = bool(config.get("static_groups", False))
            return cls("gptq", bits, group_size, checkpoint_format == "gptq",
                       sym=bool(config.get("sym", True)),
                       desc_act=bool(config.get("desc_act", False)) and not static)
        if method == CT_METHOD:
            return cls(ct_scheme(config), 8, -1, False)
        if method == "awq":
            version = str(config.get("version", "gemm")).lower()
            if bits != 4 or version != "gemm" or not config.get("zero_point", True):
                raise UnsupportedModelError(
                    f"AWQ checkpoints with bits {bits}, version {version!r} and zero_point "
                    f"{config.get('zero_point', True)} are not supported (4-bit GEMM with "
                    f"zero points)")
            return cls("awq", bits, group_size, False)
        raise UnsupportedModelError(
            f"quantized checkpoints ({method}) are not supported; inflightd reads GPTQ, AWQ "
            "and compressed-tensors (W8A8, FP8) checkpoints, or give a float16, bfloat16 or "
            "float32 one")

    @property
    def parts(self) -> tuple[str, ...]:
        return PARTS[self.method]

    def int_scheme(self) -> IntScheme | None:
        """How the model holds these layers as integers; None: in its dtype (FP8 has its
        own type; 8-bit GPTQ with zero points has codes - zero in -255..255, which the
        symmetric int8 layout cannot hold, so it is dequantized)."""
        group = None if self.group_size == -1 else self.group_size
        if self.method == "gptq" and (self.bits == 4 or self.sym):
            return IntScheme("gptq", self.bits, group,
                             dense_kinds=ACT_ORDER_DENSE if self.desc_act else frozenset())
        if self.method == "awq":
            return IntScheme("awq", 4, group)
        if self.method == "w8a8":
            return IntScheme("w8a8", 8, None, act_int8=True)
        return None

    def dequantize(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """{part: tensor} of one layer -> its float weight [out, in], in the scales' dtype."""
        if self.method == "w8a8":
            scales = tensors["weight_scale"]
            return (tensors["weight"].float() * scales.float().reshape(-1, 1)).to(scales.dtype)
        if self.method == "gptq":
            q = unpack_rows(tensors["qweight"], self.bits)  # [in, out]
            zeros = unpack_columns(tensors["qzeros"], self.bits) + int(self.zeros_minus_one)
            groups = tensors["g_idx"].long()
        else:
            q = unpack_columns(tensors["qweight"], self.bits, order=AWQ_ORDER)
            zeros = unpack_columns(tensors["qzeros"], self.bits, order=AWQ_ORDER)
            groups = torch.arange(q.shape[0], device=q.device) // self.group_size
        scales = tensors["scales"]
        weight = (q - zeros[groups]).to(torch.float32) * scales[groups].to(torch.float32)
        return weight.t().contiguous().to(scales.dtype)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R / p, C] packed along the rows -> int32 [R, C]."""
    values = _unpack(packed, bits)  # [R / p, C, p]
    return values.permute(0, 2, 1).reshape(-1, packed.shape[1])


def unpack_columns(packed: torch.Tensor, bits: int, *,
                   order: tuple[int, ...] | None = None) -> torch.Tensor:
    """int32 [R, C / p] packed along the columns (slot i holding column p c + order[i])
    -> int32 [R, C]."""
    values = _unpack(packed, bits)  # [R, C / p, p]
    if order is not None:
        values = values[:, :, _inverse(order)]
    return values.reshape(packed.shape[0], -1)


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of unpack_rows: int [R, C] -> int32 [R / p, C]."""
    per = 32 // bits
    return _pack(values.reshape(-1, per, values.shape[1]).permute(0, 2, 1), bits)


def pack_columns(values: torch.Tensor, bits: int, *,
                 order: tuple[int, ...] | None = None) -> torch.Tensor:
    """The inverse of unpack_columns: int [R, C] -> int32 [R, C / p]."""
    per = 32 // bits
    grouped = values.reshape(values.shape[0], -1, per)
    if order is not None:
        grouped = grouped[:, :, list(order)]
    return _pack(grouped, bits)


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    shifts = torch.arange(0, 32, bits, device=packed.device, dtype=torch.int32)
    return (packed.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)


def _pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """values [..., p] of `bits` bits each -> int32 [...], value j at bits [j bits, ...)."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int64, device=values.device)
    words = (values.to(torch.int64) << shifts).sum(dim=-1)
    return (words - ((words >> 31) << 32)).to(torch.int32)  # as signed 32-bit, as stored


def _inverse(order: tuple[int, ...]) -> list[int]:
    inverse = [0] * len(order)
    for slot, column in enumerate(order):
        inverse[column] = slot
    return inverse


@dataclass(frozen=True)
class PackedLayer:
    """One quantized linear layer's stored parts (`X.qweight`, ...), read as `X.weight`."""

    fmt: QuantizedFormat
    parts: dict[str, tuple[Any, str]]  # part -> (safetensors handle, stored name)

    def shape(self) -> tuple[int, int]:
        """[out, in] of the float weight, from the packed weight's shape."""
        handle, stored = self.parts["weight" if self.fmt.method == "w8a8" else "qweight"]
        rows, cols = handle.get_slice(stored).get_shape()
        if self.fmt.method == "w8a8":
            return rows, cols
        per = 32 // self.fmt.bits
        return (cols, rows * per) if self.fmt.method == "gptq" else (cols * per, rows)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {part: handle.get_tensor(stored) for part, (handle, stored) in self.parts.items()}

    def read(self) -> torch.Tensor:
        return self.fmt.dequantize(self.tensors())


def take_packed_layers(handles: dict[str, tuple], fmt: QuantizedFormat
                       ) -> dict[str, PackedLayer]:
    """Moves every `X.<part>` entry of the reader's {name: (handle, stored, layout)} map
    into {"X.weight": PackedLayer}; a layer missing a part keeps its parts, which the
    reader then names as unexpected."""
    if not fmt.parts:
        return {}
    marker = "." + MARKER[fmt.method]
    prefixes = {name.removesuffix(marker) for name in handles if name.endswith(marker)}
    layers = {}
    for prefix in prefixes:
        names = {part: f"{prefix}.{part}" for part in fmt.parts}
        if all(name in handles for name in names.values()):
            layers[f"{prefix}.weight"] = PackedLayer(
                fmt, {part: handles.pop(name)[:2] for part, name in names.items()})
            for part in OPTIONAL_PARTS.get(fmt.method, ()):
                if f"{prefix}.{part}" in handles:
                    layers[f"{prefix}.weight"].parts[part] = handles.pop(f"{prefix}.{part}")[:2]
    return layers
