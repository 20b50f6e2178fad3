"""Which linear layers hold integer weights (IntWeight), with how many bits and what groups:
from `--quantization int8_wo | int4_wo | w8a8` (round to nearest as the weights load) or from a
quantized checkpoint's config (GPTQ, AWQ, compressed-tensors W8A8).

A decoder layer has four linear weights, by kind: "qkv" (q|k|v fused), "o", "gate_up" and
"down". A scheme may leave kinds in the model dtype (`dense_kinds`): GPTQ's act-order
permutes each layer's input columns, which only the down projection can absorb statically
(see loading/int_repack.py), so the others are dequantized as they load. A layer whose
input size its group size does not divide is dense too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from server.engine.models.int_grid import choose_group_size, round_to_nearest
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import QuantizationError

# --quantization values held as integers -> their weight bits. w8a8 also rounds activations
# to int8 per token; unlike `inflightd quantize --method w8a8_sq` nothing is smoothed first
INT_ON_LOAD = {"int8_wo": 8, "int4_wo": 4, "w8a8": 8}
LINEAR_KINDS = ("qkv", "o", "gate_up", "down")
# the engine's name of each linear weight (HF names, before fusing) -> its kind
_KIND_OF_PROJECTION = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "qkv_proj": "qkv",
                       "o_proj": "o", "gate_proj": "gate_up", "up_proj": "gate_up",
                       "gate_up_proj": "gate_up", "c_fc": "gate_up", "down_proj": "down",
                       "c_proj": "down"}


def linear_kind(name: str) -> str | None:
    """"qkv", "o", "gate_up" or "down" for a decoder layer's linear weight (its engine name,
    e.g. model.layers.3.self_attn.k_proj.weight); None for any other tensor."""
    if not name.startswith("model.layers.") or not name.endswith(".weight"):
        return None
    return _KIND_OF_PROJECTION.get(name.rsplit(".", 2)[-2])


@dataclass(frozen=True)
class IntScheme:
    name: str  # what the user sees: "int8_wo", "int4_wo", "gptq", "awq", "w8a8"
    bits: int
    group_size: int | None  # None: one group per row (per channel)
    act_int8: bool = False  # W8A8: activations quantized to int8 per token at run time
    dense_kinds: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise QuantizationError(f"{self.name}: integer weights have 4 or 8 bits, "
                                    f"not {self.bits}")
        if self.act_int8 and (self.bits != 8 or self.group_size is not None):
            raise QuantizationError(f"{self.name}: W8A8 needs 8-bit per-channel weights")
        if not self.dense_kinds <= set(LINEAR_KINDS):
            raise QuantizationError(f"unknown linear kinds {sorted(self.dense_kinds)}")

    @classmethod
    def on_load(cls, quantization: str, input_sizes: dict[str, int]) -> "IntScheme":
        """--quantization int8_wo or w8a8 (per channel) or int4_wo (groups of 128, or 64 or
        32 where 128 does not divide every layer's input size: int_grid.choose_group_size)."""
        bits = INT_ON_LOAD[quantization]
        if bits == 8:
            return cls(quantization, 8, None, act_int8=quantization == "w8a8")
        try:
            return cls(quantization, 4, choose_group_size(input_sizes))
        except ValueError as exc:
            raise QuantizationError(f"--quantization {quantization}: {exc}") from exc

    def group_for(self, cols: int) -> int | None:
        """The group size of a weight with `cols` input columns; None when it cannot be held
        (its groups do not tile it, or 4 bits of an odd width)."""
        group = cols if self.group_size is None else self.group_size
        if cols % group or (self.bits == 4 and group % 2):
            return None
        return group

    def holds(self, kind: str, cols: int) -> bool:
        """Whether a weight of this kind and input width is held as integers."""
        return kind not in self.dense_kinds and self.group_for(cols) is not None

    def empty(self, rows: int, cols: int, *, dtype: torch.dtype,
              device: torch.device | str) -> IntWeight:
        group = self.group_for(cols)
        scales = torch.empty((rows, cols // group), dtype=dtype, device=device)
        if self.bits == 8:
            return IntWeight(qweight=torch.empty((rows, cols), dtype=torch.int8, device=device),
                             scales=scales, zeros=None, bits=8, group_size=group,
                             act_int8=self.act_int8)
        return IntWeight(qweight=torch.empty((rows, cols // 2), dtype=torch.uint8,
                                             device=device),
                         scales=scales, zeros=torch.empty_like(scales), bits=4,
                         group_size=group)

    def quantize(self, weight: torch.Tensor) -> IntWeight:
        """Round to nearest on a symmetric grid (int_grid), in weight's dtype and device."""
        codes = round_to_nearest(weight, bits=self.bits, group_size=self.group_for(
            weight.shape[1]), symmetric=True)
        return codes.to_int_weight(weight.dtype, act_int8=self.act_int8)


def quantize_on_load(scheme: IntScheme, weights: Iterable[tuple[str, torch.Tensor]]
                     ) -> Iterator[tuple[str, torch.Tensor | IntWeight]]:
    """The (name, tensor) stream with each linear weight the scheme holds as integers
    quantized to an IntWeight (round to nearest); everything else as it comes."""
    for name, tensor in weights:
        kind = linear_kind(name)
        if kind is not None and scheme.holds(kind, tensor.shape[1]):
            yield name, scheme.quantize(tensor)
        else:
            yield name, tensor


def int_weight_rows(weight: IntWeight, rows: slice) -> IntWeight:
    """Rows of an IntWeight as views (a part of a fused q|k|v or gate|up weight)."""
    return IntWeight(qweight=weight.qweight[rows], scales=weight.scales[rows],
                     zeros=None if weight.zeros is None else weight.zeros[rows],
                     bits=weight.bits, group_size=weight.group_size, act_int8=weight.act_int8)


@dataclass(frozen=True)
class IntWeightDest:
    """Where the loader copies one checkpoint tensor of an IntWeight (all of it, or the rows
    of one part of a fused weight): the model's weight map holds these."""

    weight: IntWeight

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape

    def copy_(self, source: IntWeight | torch.Tensor) -> "IntWeightDest":
        dest = self.weight
        if not isinstance(source, IntWeight):
            raise QuantizationError(
                f"a {dest.bits}-bit integer weight cannot be filled from a {source.dtype} "
                "tensor: the checkpoint's layer could not be kept in integers")
        if (source.bits, source.group_size, source.act_int8) != (
                dest.bits, dest.group_size, dest.act_int8):
            raise QuantizationError(
                f"integer weight of {source.bits} bits, group size {source.group_size}"
                f"{' (W8A8)' if source.act_int8 else ''} loaded into one of {dest.bits} bits, "
                f"group size {dest.group_size}{' (W8A8)' if dest.act_int8 else ''}")
        dest.qweight.copy_(source.qweight)
        dest.scales.copy_(source.scales)
        if dest.zeros is not None:
            dest.zeros.copy_(source.zeros)
        return self


def loading_view(weight: torch.Tensor | IntWeight, rows: slice = slice(None)):
    """What the weight map holds for these rows of a linear weight: a tensor view, an
    Fp8Weight's rows, or an IntWeightDest."""
    if isinstance(weight, IntWeight):
        return IntWeightDest(int_weight_rows(weight, rows))
    return weight[rows]


def num_bytes(value) -> int:
    """Bytes a tensor, an IntWeight or an Fp8Weight holds."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, IntWeight):
        return sum(num_bytes(t) for t in (value.qweight, value.scales, value.zeros)
                   if t is not None)
    return num_bytes(value.data) + num_bytes(value.scale)  # Fp8Weight
