"""Packed checkpoint layers (GPTQ, AWQ, compressed-tensors W8A8) repacked into the engine's
IntWeight, with GPTQ's act-order permutation undone ahead of time where it can be.

GPTQ's act-order (desc_act) quantizes a layer's input rows in order of decreasing activation
and records each row's group in g_idx, so a group's rows lie scattered. IntWeight needs each
group's columns side by side: sorting the columns by group does that, but then the layer's
input must be permuted the same way at run time, unless whatever writes that input can be
permuted instead, once, at load:

  - down_proj reads silu(gate x) * (up x), channel by channel: permuting the rows of gate
    and up permutes it. So down_proj keeps its integers, and gate and up (which run
    dequantized) load with their rows in down's order.
  - q/k/v and gate/up read the normed residual stream, which every layer shares, and o_proj
    reads the attention output, laid out head by head: neither can take one layer's own
    permutation, so these run dequantized (QuantizedFormat.int_scheme's dense kinds).
"""

from __future__ import annotations

import torch

from server.engine.loading.quantized_checkpoints import (AWQ_ORDER, PackedLayer, QuantizedFormat,
                                                         unpack_columns, unpack_rows)
from server.engine.models.errors import UnsupportedModelError
from server.engine.models.int_grid import IntCodes
from server.engine.models.int_schemes import IntScheme, linear_kind
from server.engine.models.int_weights import IntWeight

_DOWN = "mlp.down_proj.weight"
_GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")


class NotRepackable(ValueError):
    """Why a packed layer cannot be held as an IntWeight."""


def group_order(g_idx: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """None when the input rows already come in whole groups of group_size, in order; else
    the permutation (a stable sort by group) that makes them so."""
    rows = g_idx.numel()
    if rows % group_size:
        raise NotRepackable(f"its {rows} input rows are not whole groups of {group_size}")
    expected = torch.arange(rows, device=g_idx.device) // group_size
    if torch.equal(g_idx, expected):
        return None
    order = torch.argsort(g_idx, stable=True)
    if not torch.equal(g_idx[order], expected):
        raise NotRepackable(f"its g_idx does not give every group {group_size} rows")
    return order


def layer_codes(fmt: QuantizedFormat, tensors: dict[str, torch.Tensor]
                ) -> tuple[IntCodes, torch.Tensor | None]:
    """(the layer on its integer grid, in IntWeight's column order; the input-row order that
    puts its groups together, None when they are already)."""
    if fmt.method == "w8a8":
        weight, scales = tensors["weight"], tensors["weight_scale"]
        zero_points = tensors.get("weight_zero_point")
        if zero_points is not None and bool(zero_points.any()):
            raise NotRepackable("its weights have zero points (asymmetric)")
        middle = torch.full((weight.shape[0], 1), 1 << 7, dtype=torch.int32)
        return IntCodes(codes=weight.to(torch.int32) + middle, scales=scales.reshape(-1, 1),
                        zeros=middle, bits=8, group_size=weight.shape[1]), None
    if fmt.method == "gptq":
        q = unpack_rows(tensors["qweight"], fmt.bits)  # [in, out]
        zeros = unpack_columns(tensors["qzeros"], fmt.bits) + int(fmt.zeros_minus_one)
        group = q.shape[0] if fmt.group_size == -1 else fmt.group_size
        order = group_order(tensors["g_idx"].long(), group)
    else:  # awq
        q = unpack_columns(tensors["qweight"], fmt.bits, order=AWQ_ORDER)
        zeros = unpack_columns(tensors["qzeros"], fmt.bits, order=AWQ_ORDER)
        group = fmt.group_size
        order = group_order(torch.arange(q.shape[0]) // group, group)
    if order is not None:
        q = q[order]
    return IntCodes(codes=q.t().contiguous(), scales=tensors["scales"].t().contiguous(),
                    zeros=zeros.t().contiguous(), bits=fmt.bits, group_size=group), order


def repack(fmt: QuantizedFormat, tensors: dict[str, torch.Tensor], *,
           allow_order: bool) -> IntWeight:
    """The layer as an IntWeight (scales in the checkpoint's dtype); allow_order: its input
    rows may be reordered (a down projection whose gate and up follow)."""
    codes, order = layer_codes(fmt, tensors)
    if order is not None and not allow_order:
        raise NotRepackable("g_idx scatters its groups over the input rows (act-order), which "
                            "only a down projection can absorb")
    if codes.bits == 8 and not codes.is_symmetric:
        raise NotRepackable("its 8-bit zero points are not all 128 (the int8 layout is "
                            "symmetric)")
    return codes.to_int_weight(codes.scales.dtype, act_int8=fmt.method == "w8a8")


class PackedLayers:
    """A checkpoint's packed layers by engine name ("X.weight"), each read as an IntWeight
    where the scheme holds its kind, else as its float weight [out, in] in the scales'
    dtype; gate and up rows reordered where their down projection's act-order is absorbed."""

    def __init__(self, layers: dict[str, PackedLayer], fmt: QuantizedFormat,
                 scheme: IntScheme | None) -> None:
        self.layers, self.fmt, self.scheme = layers, fmt, scheme
        self.row_orders: dict[str, torch.Tensor] = {}
        self._reordered_downs: set[str] = set()
        for name in layers:
            if name.endswith(_DOWN) and self._held(name):
                self._absorb(name)

    def __contains__(self, name: str) -> bool:
        return name in self.layers

    def names(self) -> set[str]:
        return set(self.layers)

    def shape(self, name: str) -> tuple[int, int]:
        return self.layers[name].shape()

    def read(self, name: str) -> IntWeight | torch.Tensor:
        layer = self.layers[name]
        if not self._held(name):
            weight = layer.read()
            order = self.row_orders.get(name)
            return weight if order is None else weight[order]
        try:
            return repack(self.fmt, layer.tensors(), allow_order=name in self._reordered_downs)
        except NotRepackable as exc:
            raise UnsupportedModelError(f"{name} ({self.fmt.method}, {self.fmt.bits} bits) "
                                        f"cannot be held as integers: {exc}") from exc

    def _held(self, name: str) -> bool:
        kind = linear_kind(name)
        return (self.scheme is not None and kind is not None
                and self.scheme.holds(kind, self.layers[name].shape()[1]))

    def _absorb(self, down: str) -> None:
        """Reorders gate and up rows by the down projection's act-order, when it has one and
        both are packed layers run dequantized (their rows are then free to move)."""
        if self.fmt.method != "gptq":
            return
        prefix = down.removesuffix(_DOWN)
        gate_up = [prefix + name for name in _GATE_UP]
        if not all(name in self.layers and not self._held(name) for name in gate_up):
            return
        handle, stored = self.layers[down].parts["g_idx"]
        group = self.fmt.group_size if self.fmt.group_size != -1 else self.shape(down)[1]
        try:
            order = group_order(handle.get_tensor(stored).long(), group)
        except NotRepackable:
            return  # read() names the reason
        if order is not None:
            self._reordered_downs.add(down)
            self.row_orders.update({name: order for name in gate_up})
