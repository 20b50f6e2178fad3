"""The per-layer operations the model calls, behind one small interface.

`TorchOps` (torch_ref.py) is the reference that runs anywhere; `CudaOps` (cuda.py) runs our
compiled kernels and is tested against it. Shapes, for T packed tokens of S sequences:

    q            [T, num_heads, head_dim]
    k, v         [T, num_kv_heads, head_dim]
    kv_cache     [2, num_blocks, block_size, num_kv_heads, head_dim]   (one layer: K then V)
    cos_sin      [max_positions, head_dim]: cos of each pair's angle in the first half,
                 sin in the second (HF "rotate_half" rotary layout)
    slot_mapping [T] int64, slot = block_id * block_size + offset
"""

from __future__ import annotations

from typing import Protocol

import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import Fp8Rows, Fp8Weight


class Ops(Protocol):
    def linear(self, x: torch.Tensor | Fp8Rows, weight: torch.Tensor | Fp8Weight | IntWeight,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, K] @ weight [N, K]^T (+ bias [N]) -> [T, N], as F.linear; an Fp8Weight
        multiplies x's rows quantized to FP8 (server.engine.models.quantization), or x's own
        when x is Fp8Rows already; an IntWeight computes as int_linear_reference
        (server.engine.ops.cuda_int) does."""

    def logits(self, hidden: torch.Tensor, lm_head: torch.Tensor,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [N, H] @ lm_head [V, H]^T -> float32 logits [N, V], written into out
        where given (and out returned)."""

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 logits [N, V] -> int64 [N]: each row's token as torch.argmax(dim=-1) picks
        it (the first of equal maxima; a NaN above every number): greedy sampling."""

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x [T, H] -> normalised x * weight."""

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (rms_norm(x + residual), x + residual)."""

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, 2d] -> silu(x[:, :d]) * x[:, d:]."""

    def linear_silu_and_mul(self, x: torch.Tensor,
                            weight: torch.Tensor | Fp8Weight | IntWeight) -> torch.Tensor:
        """silu_and_mul(linear(x, weight)): the gated MLP's gate|up projection and its
        activation, one launch where the backend can fuse the two."""

    # The LayerNorm / GELU families (GPT-2, Starcoder, Falcon, MPT, BLOOM; Gemma's GeGLU)
    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float) -> torch.Tensor:
        """x [T, H] -> LayerNorm(x) * weight + bias."""

    def add_layer_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None, eps: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (layer_norm(x + residual), x + residual)."""

    def gelu(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """GELU, exact ("gelu") or tanh-approximated ("gelu_tanh")."""

    def linear_gelu(self, x: torch.Tensor, weight: torch.Tensor | Fp8Weight | IntWeight,
                    bias: torch.Tensor | None, kind: str) -> torch.Tensor:
        """gelu(linear(x, weight, bias), kind): the ungated MLP's up projection, one launch
        where the backend can fuse the two."""

    def gelu_and_mul(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """x [T, 2d] -> gelu(x[:, :d]) * x[:, d:] (GeGLU)."""

    # In front of FP8 linear layers (--quantization fp8): the same results, quantized row by
    # row as the FP8 linear layer would quantize them (Fp8Rows.of), in one pass.
    def rms_norm_fp8(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> Fp8Rows:
        """Fp8Rows.of(rms_norm(x, weight, eps))."""

    def add_rms_norm_fp8(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                         eps: float) -> tuple[Fp8Rows, torch.Tensor]:
        """(Fp8Rows.of(rms_norm(x + residual)), x + residual)."""

    def silu_and_mul_fp8(self, x: torch.Tensor) -> Fp8Rows:
        """Fp8Rows.of(silu_and_mul(x))."""

    def rope_and_cache(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       positions: torch.Tensor, cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotates q and k by their positions, writes rotated k and v into kv_cache at
        slot_mapping, and returns the rotated (q, k)."""

    def apply_token_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor,
                            rows: torch.Tensor) -> None:
        """In place: logits [S, V] float32 get -inf wherever bitmask [R, ceil(V/32)] int32
        row r does not allow the token, on row rows[r] (int64 [R]); on logits' device."""

    def attention(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                  scale: float, *, softcap: float | None = None,
                  alibi_slopes: torch.Tensor | None = None,
                  window: int | None = None) -> torch.Tensor:
        """Causal attention of each sequence's new queries over its whole context in the
        cache (the cached prefix, earlier chunks, and this step's keys, already written).
        softcap: scores become softcap * tanh(scores / softcap) (Gemma 2). alibi_slopes
        float32 [num_heads]: head h adds slope_h * (key pos - query pos) (MPT). window: a
        query at position p sees only keys p - window + 1 ..= p (a sliding layer).
        Returns [T, num_heads, head_dim]."""
