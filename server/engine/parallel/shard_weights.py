"""Each checkpoint tensor cut down to one rank's shard, chosen by its engine name.

    column-parallel (rows cut)   q/k/v (fused or not), gate/up (fused or not), c_fc, and
                                 their biases; FP8 row scales alike
    row-parallel (columns cut)   o_proj, down_proj, c_proj weights; their biases whole on
                                 rank 0 and zero elsewhere, so the all-reduce adds them once
    vocabulary rows              embed_tokens and lm_head, zero-padded to the padded size
    whole                        everything else (norms, position embeddings, q/k norms)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from server.engine.models.config import ModelArchConfig
from server.engine.parallel.tensor_parallel import ShardPlan
from server.engine.quantization import SCALE_SUFFIX

_ROW_PARALLEL_WEIGHTS = (".self_attn.o_proj.weight", ".mlp.down_proj.weight",
                         ".mlp.c_proj.weight")
_ROW_PARALLEL_BIASES = (".self_attn.o_proj.bias", ".mlp.down_proj.bias", ".mlp.c_proj.bias")
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


def shard_named(arch: ModelArchConfig, plan: ShardPlan,
                weights: Iterable[tuple[str, torch.Tensor]]
                ) -> Iterator[tuple[str, torch.Tensor]]:
    """(engine name, whole tensor) pairs -> (engine name, this rank's part)."""
    for name, tensor in weights:
        yield name, shard_tensor(arch, plan, name, tensor)


def shard_tensor(arch: ModelArchConfig, plan: ShardPlan, name: str,
                 tensor: torch.Tensor) -> torch.Tensor:
    if plan.world_size == 1:
        return tensor
    if name.endswith(SCALE_SUFFIX):  # FP8 row scales: the rows their weight keeps
        weight = name.removesuffix(SCALE_SUFFIX)
        if weight.endswith(_ROW_PARALLEL_WEIGHTS):
            return tensor
        return shard_tensor(arch, plan, weight, tensor)
    if name in _VOCAB:
        return _vocab_rows(plan, tensor)
    if name.endswith(_ROW_PARALLEL_WEIGHTS):
        return _columns(tensor, _row_parallel_span(arch, plan, name))
    if name.endswith(_ROW_PARALLEL_BIASES):
        return tensor if plan.rank == 0 else torch.zeros_like(tensor)
    rows = _column_parallel_rows(arch, plan, name)
    return tensor if rows is None else torch.cat([tensor[a:b] for a, b in rows]).contiguous()


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


def _vocab_rows(plan: ShardPlan, tensor: torch.Tensor) -> torch.Tensor:
    start, end = plan.vocab_rows
    part = tensor[start:end]
    if part.shape[0] == end - start:
        return part.contiguous()
    padded = torch.zeros((end - start, *tensor.shape[1:]), dtype=tensor.dtype,
                         device=tensor.device)
    padded[:part.shape[0]] = part
    return padded


def _columns(tensor: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    return tensor[:, span[0]:span[1]].contiguous()


def _scaled(span: tuple[int, int], factor: int) -> tuple[int, int]:
    return span[0] * factor, span[1] * factor


def _shift(span: tuple[int, int], offset: int) -> tuple[int, int]:
    return span[0] + offset, span[1] + offset
