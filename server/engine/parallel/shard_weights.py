"""Each checkpoint tensor cut down to one rank's shard, chosen by its engine name.

    column-parallel (rows cut)   q/k/v (fused or not), gate/up (fused or not), c_fc, and
                                 their biases; FP8 row scales alike
    row-parallel (columns cut)   o_proj, down_proj, c_proj weights; their biases whole on
                                 rank 0 and zero elsewhere, so the all-reduce adds them once
    vocabulary rows              embed_tokens and lm_head, zero-padded to the padded size
    whole                        everything else (norms, position embeddings, q/k norms)

Integer weights (IntWeight) are cut the same way: rows with their scales and zero points;
columns along whole groups (one group per row: the row scales stay whole, as FP8's do), or,
where a rank's columns would split a group, dequantized and cut as a float tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from server.engine.models.config import ModelArchConfig
from server.engine.models.int_weights import IntWeight
from server.engine.parallel.tensor_parallel import ShardPlan
from server.engine.models.quantization import SCALE_SUFFIX

_ROW_PARALLEL_WEIGHTS = (".self_attn.o_proj.weight", ".mlp.down_proj.weight",
                         ".mlp.c_proj.weight")
_ROW_PARALLEL_BIASES = (".self_attn.o_proj.bias", ".mlp.down_proj.bias", ".mlp.c_proj.bias")
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class ShardRule:
    """What a rank keeps of one tensor: "whole"; "rows" (the ranges, in order); "columns"
    (one span); "vocab" (a span of rows, zero-padded past the end); "zero" (a tensor of
    zeros: a row-parallel bias off rank 0)."""

    kind: str
    spans: tuple[tuple[int, int], ...] = ()

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """The rank's part of a whole tensor held in memory."""
        if self.kind == "whole":
            return tensor
        if self.kind == "zero":
            return torch.zeros_like(tensor)
        if self.kind == "columns":
            (start, end), = self.spans
            return tensor[:, start:end].contiguous()
        return self._rows([tensor[a:b] for a, b in self.spans], len(tensor))

    def read(self, stored, shape: tuple[int, ...], *, transposed: bool) -> torch.Tensor:
        """The rank's part read from a safetensors slice (`safe_open(...).get_slice`) of a
        tensor whose engine shape is `shape`, reading only that part; transposed: stored
        [in, out] as GPT-2's Conv1D (engine rows are stored columns)."""
        if self.kind == "whole":
            whole = stored[:]
            return whole.t().contiguous() if transposed else whole
        if self.kind == "zero":
            return torch.zeros(shape, dtype=_dtype_of(stored))
        if self.kind == "columns":
            (start, end), = self.spans
            part = stored[start:end] if transposed else stored[:, start:end]
            return part.t().contiguous() if transposed else part
        parts = [stored[:, a:b].t() if transposed else stored[a:b] for a, b in self.spans]
        return self._rows(parts, shape[0])

    def _rows(self, parts: list[torch.Tensor], num_rows: int) -> torch.Tensor:
        if self.kind == "vocab":  # past the vocabulary: zero rows
            (start, end), = self.spans
            padded = torch.zeros((end - start, *parts[0].shape[1:]), dtype=parts[0].dtype,
                                 device=parts[0].device)
            padded[:max(min(end, num_rows) - start, 0)] = parts[0]
            return padded
        return torch.cat(parts).contiguous() if len(parts) > 1 else parts[0].contiguous()


def shard_named(arch: ModelArchConfig, plan: ShardPlan,
                weights: Iterable[tuple[str, torch.Tensor | IntWeight]]
                ) -> Iterator[tuple[str, torch.Tensor | IntWeight]]:
    """(engine name, whole tensor) pairs -> (engine name, this rank's part)."""
    for name, tensor in weights:
        yield name, shard_tensor(arch, plan, name, tensor)


def shard_tensor(arch: ModelArchConfig, plan: ShardPlan, name: str,
                 tensor: torch.Tensor | IntWeight) -> torch.Tensor | IntWeight:
    rule = shard_rule(arch, plan, name)
    if isinstance(tensor, IntWeight):
        return shard_int_weight(rule, tensor)
    return rule.apply(tensor)


def shard_int_weight(rule: ShardRule, weight: IntWeight) -> IntWeight | torch.Tensor:
    """The rank's part of an integer weight: an IntWeight, or the float part where the
    rank's columns do not start and end on group boundaries."""
    if rule.kind == "whole":
        return weight
    if rule.kind == "rows":
        parts = [(weight.qweight[a:b], weight.scales[a:b],
                  None if weight.zeros is None else weight.zeros[a:b]) for a, b in rule.spans]
        qweight, scales, zeros = (None if part[0] is None else torch.cat(part).contiguous()
                                  for part in zip(*parts))
        return IntWeight(qweight=qweight, scales=scales, zeros=zeros, bits=weight.bits,
                         group_size=weight.group_size, act_int8=weight.act_int8)
    if rule.kind != "columns":
        raise ValueError(f"a linear weight is not cut by {rule.kind!r}")
    (start, end), = rule.spans
    per_row = weight.scales.shape[1] == 1
    group = end - start if per_row else weight.group_size
    pack = 2 if weight.bits == 4 else 1
    if (not per_row and (start % group or end % group)) or start % pack or end % pack:
        return rule.apply(weight.dequantize(torch.float32))
    groups = slice(None) if per_row else slice(start // group, end // group)
    return IntWeight(qweight=weight.qweight[:, start // pack:end // pack].contiguous(),
                     scales=weight.scales[:, groups].contiguous(),
                     zeros=None if weight.zeros is None else weight.zeros[:, groups].contiguous(),
                     bits=weight.bits, group_size=group, act_int8=weight.act_int8)


def shard_rule(arch: ModelArchConfig, plan: ShardPlan, name: str) -> ShardRule:
    """What rank plan.rank keeps of the tensor the engine names `name`."""
    if plan.world_size == 1:
        return WHOLE
    if name.endswith(SCALE_SUFFIX):  # FP8 row scales: the rows their weight keeps
        weight = name.removesuffix(SCALE_SUFFIX)
        if weight.endswith(_ROW_PARALLEL_WEIGHTS):
            return WHOLE
        return shard_rule(arch, plan, weight)
    if name in _VOCAB:
        return ShardRule("vocab", (plan.vocab_rows,))
    if name.endswith(_ROW_PARALLEL_WEIGHTS):
        return ShardRule("columns", (_row_parallel_span(arch, plan, name),))
    if name.endswith(_ROW_PARALLEL_BIASES):
        return WHOLE if plan.rank == 0 else ShardRule("zero")
    rows = _column_parallel_rows(arch, plan, name)
    return WHOLE if rows is None else ShardRule("rows", tuple(rows))


WHOLE = ShardRule("whole")


def _column_parallel_rows(arch: ModelArchConfig, plan: ShardPlan,
                          name: str) -> list[tuple[int, int]] | None:
    """The [start, end) row ranges a rank keeps of a column-parallel tensor, in order; None
    for a tensor every rank holds whole."""
    d = arch.head_dim
    q = _scaled(plan.q_heads, d)
    kv = _scaled(plan.kv_heads, d)
    q_size, kv_size, inter = arch.num_heads * d, arch.num_kv_heads * d, arch.intermediate_size
    parts = name.rsplit(".", 2)[-2]  # e.g. "q_proj" of "....self_attn.q_proj.weight"
    if ".self_attn." in name and parts in ("q_proj", "k_proj", "v_proj", "qkv_proj"):
        return {"q_proj": [q], "k_proj": [kv], "v_proj": [kv],
                "qkv_proj": [q, _shift(kv, q_size), _shift(kv, q_size + kv_size)]}[parts]
    if ".mlp." in name and parts in ("gate_proj", "up_proj", "c_fc"):
        return [plan.intermediate]
    if ".mlp." in name and parts == "gate_up_proj":
        return [plan.intermediate, _shift(plan.intermediate, inter)]
    return None


def _row_parallel_span(arch: ModelArchConfig, plan: ShardPlan, name: str) -> tuple[int, int]:
    if ".self_attn." in name:
        return _scaled(plan.q_heads, arch.head_dim)
    return plan.intermediate


def _dtype_of(stored) -> torch.dtype:
    return stored[:0].dtype  # an empty read: the stored dtype, no data


def _scaled(span: tuple[int, int], factor: int) -> tuple[int, int]:
    return span[0] * factor, span[1] * factor


def _shift(span: tuple[int, int], offset: int) -> tuple[int, int]:
    return span[0] + offset, span[1] + offset
