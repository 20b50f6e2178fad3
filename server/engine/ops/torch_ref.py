"""TorchOps: the reference implementation of every per-layer op, in plain torch.

It runs on any device and is what the CUDA kernels are tested against, so it favours
being obviously right over being fast. Norms and rotary follow Hugging Face's arithmetic
(the golden tests compare against it); attention accumulates in float32.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from server.engine.attention.metadata import AttentionMetadata
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import (Fp8Rows, Fp8Weight, check_not_quantized,
                                         fp8_linear_reference)
from server.engine.ops.cuda_int import int_linear_reference  # the kernels' own reference
from server.kvcache.kv_pool import FP8_KV_DTYPE, FP8_KV_MAX
from server.structured_output.bitmask import apply_token_bitmask


_GELU_APPROXIMATIONS = {"gelu": "none", "gelu_tanh": "tanh"}


class TorchOps:
    """Implements `server.engine.ops.Ops`."""

    def linear(self, x: torch.Tensor | Fp8Rows, weight: torch.Tensor | Fp8Weight | IntWeight,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(weight, Fp8Weight):
            return fp8_linear_reference(x, weight, bias)
        check_not_quantized(x)
        if isinstance(weight, IntWeight):
            return int_linear_reference(x, weight, bias)
        return F.linear(x, weight, bias)

    def logits(self, hidden: torch.Tensor, lm_head: torch.Tensor,
               out: torch.Tensor | None = None) -> torch.Tensor:
        logits = F.linear(hidden, lm_head).float()
        return logits if out is None else out.copy_(logits)

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # As HF LlamaRMSNorm: normalise in float32, cast back, then scale in the input dtype.
        input_dtype = x.dtype
        x32 = x.to(torch.float32)
        variance = x32.pow(2).mean(-1, keepdim=True)
        x32 = x32 * torch.rsqrt(variance + eps)
        return weight * x32.to(input_dtype)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        summed = x + residual
        return self.rms_norm(summed, weight, eps), summed

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return F.silu(x[..., :half]) * x[..., half:]

    def linear_silu_and_mul(self, x: torch.Tensor,
                            weight: torch.Tensor | Fp8Weight | IntWeight) -> torch.Tensor:
        return self.silu_and_mul(self.linear(x, weight))

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    def add_layer_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None, eps: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        summed = x + residual
        return self.layer_norm(summed, weight, bias, eps), summed

    def gelu(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        return F.gelu(x, approximate=_GELU_APPROXIMATIONS[kind])

    def linear_gelu(self, x: torch.Tensor, weight: torch.Tensor | Fp8Weight | IntWeight,
                    bias: torch.Tensor | None, kind: str) -> torch.Tensor:
        return self.gelu(self.linear(x, weight, bias), kind)

    def gelu_and_mul(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        half = x.shape[-1] // 2
        return self.gelu(x[..., :half], kind) * x[..., half:]

    def rms_norm_fp8(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> Fp8Rows:
        return Fp8Rows.of(self.rms_norm(x, weight, eps))

    def add_rms_norm_fp8(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                         eps: float) -> tuple[Fp8Rows, torch.Tensor]:
        normed, summed = self.add_rms_norm(x, residual, weight, eps)
        return Fp8Rows.of(normed), summed

    def silu_and_mul_fp8(self, x: torch.Tensor) -> Fp8Rows:
        return Fp8Rows.of(self.silu_and_mul(x))

    def apply_token_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor,
                            rows: torch.Tensor) -> None:
        apply_token_bitmask(logits, bitmask, rows)

    def rope_and_cache(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       positions: torch.Tensor, cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = cos_sin.shape[-1] // 2
        table = cos_sin[positions]  # [T, head_dim]
        # HF applies cos/sin repeated over both halves: x * cos + rotate_half(x) * sin.
        cos = torch.cat((table[:, :half], table[:, :half]), dim=-1).unsqueeze(1)
        sin = torch.cat((table[:, half:], table[:, half:]), dim=-1).unsqueeze(1)
        q_rot = q * cos + _rotate_half(q) * sin
        k_rot = k * cos + _rotate_half(k) * sin
        write_kv(kv_cache, k_rot, v, slot_mapping)
        return q_rot, k_rot

    def attention(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                  scale: float, *, softcap: float | None = None,
                  alibi_slopes: torch.Tensor | None = None,
                  window: int | None = None) -> torch.Tensor:
        # Decodes (one query each) go through one batched computation (SDPA, which has no
        # soft-capping); sequences with several new tokens (prefill chunks) one at a time.
        block_size = kv_cache.shape[2]
        out = torch.empty_like(q)
        starts = list(itertools.accumulate(metadata.query_lens_host, initial=0))
        decode_seqs = ([i for i, n in enumerate(metadata.query_lens_host) if n == 1]
                       if softcap is None else [])
        if decode_seqs:
            rows = torch.tensor([starts[i] for i in decode_seqs], device=q.device)
            seqs = torch.tensor(decode_seqs, device=q.device)
            out[rows] = decode_attention(
                q[rows], kv_cache, metadata.block_tables[seqs], metadata.seq_lens[seqs],
                max_seq_len=max(metadata.seq_lens_host[i] for i in decode_seqs), scale=scale,
                alibi_slopes=alibi_slopes, window=window)
        for seq, (start, query_len, seq_len) in enumerate(
                zip(starts, metadata.query_lens_host, metadata.seq_lens_host)):
            if query_len == 1 and softcap is None:
                continue
            keys, values = gather_kv(kv_cache, metadata.block_tables[seq],
                                     seq_len=seq_len, block_size=block_size)
            out[start:start + query_len] = causal_attention(
                q[start:start + query_len], keys, values, scale=scale, softcap=softcap,
                alibi_slopes=alibi_slopes, window=window)
        return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """kv_cache [2, num_blocks, block_size, Hkv, D]; slot = block_id * block_size + offset,
    which is exactly the row index once blocks and offsets are flattened together."""
    num_kv_heads, head_dim = kv_cache.shape[-2:]
    slots = _as_bytes(kv_cache)
    key_slots = slots[0].view(-1, num_kv_heads, head_dim)
    value_slots = slots[1].view(-1, num_kv_heads, head_dim)
    key_slots.index_copy_(0, slot_mapping, _as_bytes(to_cache_dtype(k, kv_cache.dtype)))
    value_slots.index_copy_(0, slot_mapping, _as_bytes(to_cache_dtype(v, kv_cache.dtype)))


def to_cache_dtype(x: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """x as the cache stores it: cast, or for e4m3 rounded to nearest (ties to even) and
    saturated to +-448 (csrc/rope_cache.cu does the same from x's own rounding)."""
    if cache_dtype == FP8_KV_DTYPE:
        return x.clamp(-FP8_KV_MAX, FP8_KV_MAX).to(FP8_KV_DTYPE)
    return x.to(cache_dtype)


def _as_bytes(x: torch.Tensor) -> torch.Tensor:
    """An e4m3 tensor as uint8 (torch indexes and copies those on every device), else x."""
    return x.view(torch.uint8) if x.dtype == FP8_KV_DTYPE else x


def _gather(plane: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """plane[blocks] (blocks of one K or V plane), in the plane's own dtype."""
    return _as_bytes(plane)[blocks].view(plane.dtype)


def gather_kv(kv_cache: torch.Tensor, block_table: torch.Tensor, *, seq_len: int,
              block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's first seq_len keys and values, each [seq_len, Hkv, D]."""
    num_kv_heads, head_dim = kv_cache.shape[-2:]
    num_blocks = -(-seq_len // block_size)
    blocks = block_table[:num_blocks].long()
    keys = _gather(kv_cache[0], blocks).reshape(-1, num_kv_heads, head_dim)[:seq_len]
    values = _gather(kv_cache[1], blocks).reshape(-1, num_kv_heads, head_dim)[:seq_len]
    return keys, values


def decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                     seq_lens: torch.Tensor, *, max_seq_len: int, scale: float,
                     alibi_slopes: torch.Tensor | None = None,
                     window: int | None = None) -> torch.Tensor:
    """One query per sequence (its last position) over its whole cached context, or the
    last `window` keys of it.

    q [S, H, D]; block_tables [S, max_blocks]; keys past seq_lens[i] are padding, masked out.
    """
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    num_blocks = -(-max_seq_len // block_size)
    blocks = block_tables[:, :num_blocks].long()  # [S, nb]
    # [S, Hkv, keys, D] views of the gathered context; SDPA reads them without another copy.
    keys = _gather(kv_cache[0], blocks).reshape(num_seqs, -1, num_kv_heads, head_dim)
    values = _gather(kv_cache[1], blocks).reshape(num_seqs, -1, num_kv_heads, head_dim)
    keys, values = keys.transpose(1, 2), values.transpose(1, 2)
    key_pos = torch.arange(keys.shape[2], device=q.device)
    visible = key_pos[None, :] < seq_lens[:, None]
    if window is not None:  # the query sits at seq_len - 1
        visible &= key_pos[None, :] > seq_lens[:, None] - 1 - window
    mask = visible[:, None, None, :]
    if alibi_slopes is not None:  # the query sits at seq_len - 1: bias slope * distance
        distance = (key_pos[None, :] - (seq_lens[:, None] - 1)).to(torch.float32)
        bias = alibi_slopes[None, :, None, None] * distance[:, None, None, :]
        mask = bias.masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(
        q.to(torch.float32).reshape(num_seqs, num_heads, 1, head_dim),
        keys.to(torch.float32), values.to(torch.float32),
        attn_mask=mask, scale=scale, enable_gqa=group > 1)
    return out.reshape(num_seqs, num_heads, head_dim).to(q.dtype)


def causal_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
                     scale: float, softcap: float | None = None,
                     alibi_slopes: torch.Tensor | None = None,
                     window: int | None = None) -> torch.Tensor:
    """q [Q, H, D] are the last Q positions of a sequence whose keys/values are [S, Hkv, D].

    # key index:   0 ...            S-Q ...        S-1
    # query i sits at position S-Q+i and sees keys 0 ..= S-Q+i (with a window W, keys
    # S-Q+i-W+1 ..= S-Q+i)
    """
    query_len, num_heads, head_dim = q.shape
    seq_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    # Query head h reads kv head h // group (HF repeat_kv order), so group the query heads.
    q32 = q.to(torch.float32).reshape(query_len, num_kv_heads, group, head_dim)
    scores = torch.einsum("qkgd,skd->kgqs", q32, keys.to(torch.float32)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    query_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)
    key_pos = torch.arange(seq_len, device=q.device)
    if alibi_slopes is not None:  # [kv heads, group] slopes times key - query distance
        distance = (key_pos[None, :] - query_pos[:, None]).to(torch.float32)
        scores = scores + alibi_slopes.reshape(num_kv_heads, group, 1, 1) * distance
    hidden = key_pos[None, :] > query_pos[:, None]  # [Q, S]: the future
    if window is not None:  # and what has slid out of the window
        hidden |= key_pos[None, :] <= query_pos[:, None] - window
    scores.masked_fill_(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("kgqs,skd->qkgd", probs, values.to(torch.float32))
    return out.reshape(query_len, num_heads, head_dim).to(q.dtype)
