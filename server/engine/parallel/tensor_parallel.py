"""A rank's place in the tensor-parallel group, its collectives, and its share of the model.

With N ranks, rank r holds (Megatron's split, as vLLM and TensorRT-LLM lay it out):

    query heads      [r H/N, (r+1) H/N)          q|k|v and gate|up: column-parallel
    kv heads         [r Hkv/N, (r+1) Hkv/N), or  o and down: row-parallel, one all-reduce
                     head r Hkv/N (floor) each   each (their biases on rank 0 only)
                     when Hkv < N (replicated)
    MLP columns      [r I/N, (r+1) I/N)
    vocabulary rows  [r Vp/N, (r+1) Vp/N)        Vp: the vocabulary padded to N * 64 rows;
                                                 embedding all-reduced, logits all-gathered

Norms, position embeddings and everything else are whole on every rank. With N = 1 the
collectives are not called at all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from server.engine.models.config import ModelArchConfig, UnsupportedModelError

VOCAB_PAD_MULTIPLE = 64  # rows per rank stay a multiple of 64


@dataclass(frozen=True)
class TensorParallel:
    """rank of world_size; group: the torch.distributed process group (None: the default
    group, or no group at all with world_size 1). device_all_reduce: an IpcAllReduce
    (ipc_all_reduce.py) that takes the all-reduces it accepts, on every rank alike."""

    rank: int = 0
    world_size: int = 1
    group: object | None = None
    device_all_reduce: object | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a group of {self.world_size}")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, in place."""
        if not self.enabled:
            return x
        shared = self.device_all_reduce
        if shared is not None and shared.accepts(x):
            return shared.all_reduce_(x)
        torch.distributed.all_reduce(x, group=self.group)
        return x

    def broadcast_from_first(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's x on every rank, in place."""
        if self.enabled:
            torch.distributed.broadcast(x, src=torch.distributed.get_global_rank(
                self.group, 0) if self.group is not None else 0, group=self.group)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] on every rank -> [..., N d], rank order."""
        if not self.enabled:
            return x
        # gloo gathers host tensors only (ranks sharing one GPU, or a GPU rank beside CPU
        # ranks, as the one-GPU tests run): stage through the host there
        staged = x.is_cuda and torch.distributed.get_backend(self.group) == "gloo"
        local = x.cpu() if staged else x.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local, group=self.group)
        return torch.cat(parts, dim=-1).to(x.device)


NO_TENSOR_PARALLEL = TensorParallel()


@dataclass(frozen=True)
class ShardPlan:
    """Where rank `rank`'s shard lies in the whole model (see the module docstring)."""

    rank: int
    world_size: int
    q_heads: tuple[int, int]  # [start, end) of the query heads
    kv_heads: tuple[int, int]
    intermediate: tuple[int, int]
    vocab_rows: tuple[int, int]  # of the padded vocabulary
    padded_vocab_size: int

    @classmethod
    def of(cls, arch: ModelArchConfig, tp: TensorParallel) -> "ShardPlan":
        n, r = tp.world_size, tp.rank
        check_shardable(arch, n)
        heads, kv, inter = arch.num_heads // n, max(arch.num_kv_heads // n, 1), \
            arch.intermediate_size // n
        kv_start = r * arch.num_kv_heads // n if arch.num_kv_heads < n else r * kv
        multiple = n * VOCAB_PAD_MULTIPLE
        padded = -(-arch.vocab_size // multiple) * multiple if n > 1 else arch.vocab_size
        rows = padded // n
        return cls(rank=r, world_size=n, q_heads=(r * heads, (r + 1) * heads),
                   kv_heads=(kv_start, kv_start + kv), intermediate=(r * inter, (r + 1) * inter),
                   vocab_rows=(r * rows, (r + 1) * rows), padded_vocab_size=padded)

    def local_arch(self, arch: ModelArchConfig) -> ModelArchConfig:
        """The architecture a rank's model is built from: its heads, MLP columns and
        vocabulary rows (head_dim and hidden size stay whole)."""
        if self.world_size == 1:
            return arch
        return replace(arch, num_heads=_width(self.q_heads), num_kv_heads=_width(self.kv_heads),
                       intermediate_size=_width(self.intermediate),
                       vocab_size=_width(self.vocab_rows))


def check_shardable(arch: ModelArchConfig, world_size: int) -> None:
    """Refuse, naming the number, a split the layout above cannot make."""
    if world_size < 1:
        raise ValueError(f"--tensor-parallel-size must be >= 1, got {world_size}")
    problems = []
    if arch.num_heads % world_size:
        problems.append(f"num_attention_heads ({arch.num_heads})")
    if arch.intermediate_size % world_size:
        problems.append(f"intermediate_size ({arch.intermediate_size})")
    kv = arch.num_kv_heads
    if (kv % world_size if kv >= world_size else world_size % kv):
        problems.append(f"num_key_value_heads ({kv}; or the size must be a multiple of it)")
    if problems:
        raise UnsupportedModelError(f"{arch.architecture} cannot be split over {world_size} "
                                    f"ranks: {', '.join(problems)} must divide by {world_size}")


def _width(span: tuple[int, int]) -> int:
    return span[1] - span[0]
