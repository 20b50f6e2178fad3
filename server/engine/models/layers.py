"""One decoder layer of the Llama family, holding its weights as plain tensors.

q/k/v projections are fused into one [q + k + v, hidden] weight and gate/up into one
[2 * intermediate, hidden] weight, filled slice by slice at load time, so a layer runs
two GEMMs where the checkpoint has five. With quantization "fp8" the four linear weights are
Fp8Weights, quantized as they load (server.engine.models.quantization); with an integer scheme
(server.engine.models.int_schemes) those it holds are IntWeights. The layer takes the step's
attention metadata and the Ops as arguments; it keeps no per-step state.
"""

from __future__ import annotations

import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.models.alibi import alibi_slopes
from server.engine.models.config import ModelArchConfig
from server.engine.models.int_schemes import IntScheme, IntWeightDest, loading_view
from server.engine.models.int_weights import IntWeight
from server.engine.ops import Ops
from server.engine.parallel.tensor_parallel import NO_TENSOR_PARALLEL, TensorParallel
from server.engine.models.quantization import Fp8Rows, Fp8Weight, quantizes_activations

LinearWeight = torch.Tensor | Fp8Weight | IntWeight
Destination = torch.Tensor | Fp8Weight | IntWeightDest


class DecoderLayer:
    def __init__(self, arch: ModelArchConfig, *, dtype: torch.dtype,
                 device: torch.device | str, quantization: str | None = None,
                 window: int | None = None, tp: TensorParallel = NO_TENSOR_PARALLEL,
                 head_offset: int = 0, int_scheme: IntScheme | None = None) -> None:
        """window: this layer attends within a sliding window of that many keys;
        int_scheme: which linear weights are integers, and how. Under
        tensor parallelism arch is the rank's share (parallel/tensor_parallel.py), its
        query heads starting at the model's head_offset."""
        self.tp = tp
        self.num_heads = arch.num_heads
        self.num_kv_heads = arch.num_kv_heads
        self.head_dim = arch.head_dim
        self.eps = arch.rms_norm_eps
        self.q_size = arch.num_heads * arch.head_dim
        self.kv_size = arch.num_kv_heads * arch.head_dim
        self.scale = arch.query_scale or arch.head_dim ** -0.5
        heads = slice(head_offset, head_offset + arch.num_heads)
        slopes = (None if arch.alibi_bias_max is None else arch.alibi_slope_scale * alibi_slopes(
            arch.num_heads * tp.world_size, bias_max=arch.alibi_bias_max)[heads].to(device))
        # what only some families pass to attention (Gemma 2's softcap, ALiBi's slopes, a
        # sliding layer's window)
        self.attention_extras = {name: value for name, value in (
            ("softcap", arch.attn_softcap), ("alibi_slopes", slopes), ("window", window))
            if value is not None}
        self.fused_qkv = arch.fused_qkv
        self.fused_gate_up = arch.fused_gate_up
        self.layer_norm = arch.layer_norm  # LayerNorm with biases and an ungated MLP
        self.parallel = arch.parallel_attention
        self.activation = arch.activation

        def empty(*shape: int) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=device)

        def linear(rows: int, cols: int, kind: str) -> LinearWeight:
            if quantization == "fp8":
                return Fp8Weight.empty(rows, cols, device=device)
            if int_scheme is not None and int_scheme.holds(kind, cols):
                return int_scheme.empty(rows, cols, dtype=dtype, device=device)
            return empty(rows, cols)

        hidden, inter = arch.hidden_size, arch.intermediate_size
        self.input_norm = empty(hidden)
        self.qkv_weight = linear(self.q_size + 2 * self.kv_size, hidden, "qkv")
        self.qkv_bias = empty(self.q_size + 2 * self.kv_size) if arch.attention_bias else None
        self.o_weight = linear(hidden, self.q_size, "o")
        self.o_bias = empty(hidden) if arch.o_proj_bias else None
        # Qwen3: an RMSNorm over each head's q and k (one weight per head dim) before rotary
        self.q_norm = empty(arch.head_dim) if arch.qk_norm else None
        self.k_norm = empty(arch.head_dim) if arch.qk_norm else None
        # Falcon 7B's parallel block has one norm, shared by attention and MLP
        shared_norm = arch.parallel_attention and not arch.parallel_mlp_norm
        self.post_norm = None if shared_norm else empty(hidden)
        # the MLP's first projection: gate|up fused, or up alone for an ungated MLP
        self.gate_up_weight = linear(inter if self.layer_norm else 2 * inter, hidden,
                                     "gate_up")
        self.down_weight = linear(hidden, inter, "down")
        # Starcoder2, GPT-2: every norm and MLP projection has a bias (MPT: none has; Falcon's
        # norms have, its projections only with `bias`)
        biased_norms = self.layer_norm and arch.layer_norm_biases
        biased_mlp = self.layer_norm and arch.mlp_biases
        self.input_norm_bias = empty(hidden) if biased_norms else None
        self.post_norm_bias = empty(hidden) if biased_norms and not shared_norm else None
        self.up_bias = empty(inter) if biased_mlp else None
        self.down_bias = empty(hidden) if biased_mlp else None
        # Gemma 2: norms on the attention's and the MLP's outputs before each residual add
        self.attn_out_norm = empty(hidden) if arch.sandwich_norms else None
        self.mlp_out_norm = empty(hidden) if arch.sandwich_norms else None

    def weight_destinations(self, prefix: str) -> dict[str, Destination]:
        """HF tensor name -> the tensor (or fused slice) it is copied into."""
        return {**self._norm_names(prefix), **self._attention_names(f"{prefix}.self_attn"),
                **self._mlp_names(f"{prefix}.mlp")}

    def _norm_names(self, prefix: str) -> dict[str, torch.Tensor]:
        if self.attn_out_norm is not None:  # Gemma 2 and 3 name their four norms by place
            return {f"{prefix}.input_layernorm.weight": self.input_norm,
                    f"{prefix}.post_attention_layernorm.weight": self.attn_out_norm,
                    f"{prefix}.pre_feedforward_layernorm.weight": self.post_norm,
                    f"{prefix}.post_feedforward_layernorm.weight": self.mlp_out_norm}
        names = {f"{prefix}.input_layernorm.weight": self.input_norm,
                 f"{prefix}.input_layernorm.bias": self.input_norm_bias,
                 f"{prefix}.post_attention_layernorm.weight": self.post_norm,
                 f"{prefix}.post_attention_layernorm.bias": self.post_norm_bias}
        return {name: tensor for name, tensor in names.items() if tensor is not None}

    def _attention_names(self, attn: str) -> dict[str, Destination]:
        q, kv = self.q_size, self.kv_size
        qkv = self.qkv_weight
        if self.fused_qkv:  # Phi-3, GPT-2 and others store q|k|v as we hold them
            names = {f"{attn}.qkv_proj.weight": loading_view(qkv)}
            if self.qkv_bias is not None:
                names[f"{attn}.qkv_proj.bias"] = self.qkv_bias
        else:
            names = {f"{attn}.q_proj.weight": loading_view(qkv, slice(None, q)),
                     f"{attn}.k_proj.weight": loading_view(qkv, slice(q, q + kv)),
                     f"{attn}.v_proj.weight": loading_view(qkv, slice(q + kv, None))}
            if self.qkv_bias is not None:
                names[f"{attn}.q_proj.bias"] = self.qkv_bias[:q]
                names[f"{attn}.k_proj.bias"] = self.qkv_bias[q:q + kv]
                names[f"{attn}.v_proj.bias"] = self.qkv_bias[q + kv:]
        names[f"{attn}.o_proj.weight"] = loading_view(self.o_weight)
        if self.o_bias is not None:
            names[f"{attn}.o_proj.bias"] = self.o_bias
        if self.q_norm is not None:
            names[f"{attn}.q_norm.weight"] = self.q_norm
            names[f"{attn}.k_norm.weight"] = self.k_norm
        return names

    def _mlp_names(self, mlp: str) -> dict[str, Destination]:
        gate_up, down = self.gate_up_weight, loading_view(self.down_weight)
        if self.layer_norm:  # ungated, biased but for MPT (Starcoder2, GPT-2, MPT)
            names = {f"{mlp}.c_fc.weight": loading_view(gate_up),
                     f"{mlp}.c_proj.weight": down}
            if self.up_bias is not None:
                names.update({f"{mlp}.c_fc.bias": self.up_bias,
                              f"{mlp}.c_proj.bias": self.down_bias})
            return names
        if self.fused_gate_up:
            return {f"{mlp}.gate_up_proj.weight": loading_view(gate_up),
                    f"{mlp}.down_proj.weight": down}
        inter = self.down_weight.shape[1]
        return {f"{mlp}.gate_proj.weight": loading_view(gate_up, slice(None, inter)),
                f"{mlp}.up_proj.weight": loading_view(gate_up, slice(inter, None)),
                f"{mlp}.down_proj.weight": down}

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, *,
                positions: torch.Tensor, cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata, ops: Ops) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block. Returns (mlp output, residual stream before adding it); the next
        layer's norm (or the final norm) adds the two, so each add is fused with a norm."""
        if residual is None:
            residual = hidden
            normed = self._norm(hidden, self.input_norm, self.input_norm_bias, ops)
        else:
            normed, residual = self._add_norm(hidden, residual, self.input_norm,
                                              self.input_norm_bias, ops)
        attn_out = self._attention(normed, positions=positions, cos_sin=cos_sin,
                                   kv_cache=kv_cache, metadata=metadata, ops=ops)
        if self.parallel:  # Falcon: the MLP reads the block's input, not attention's output
            if self.post_norm is not None:
                normed = self._norm(residual, self.post_norm, self.post_norm_bias, ops)
            return self.tp.all_reduce(attn_out + self._mlp(normed, ops)), residual
        attn_out = self.tp.all_reduce(attn_out)
        if self.attn_out_norm is not None:
            attn_out = ops.rms_norm(attn_out, self.attn_out_norm, self.eps)
        normed, residual = self._add_norm(attn_out, residual, self.post_norm,
                                          self.post_norm_bias, ops)
        mlp_out = self.tp.all_reduce(self._mlp(normed, ops))
        if self.mlp_out_norm is not None:
            mlp_out = ops.rms_norm(mlp_out, self.mlp_out_norm, self.eps)
        return mlp_out, residual

    def _mlp(self, x: torch.Tensor | Fp8Rows, ops: Ops) -> torch.Tensor:
        if self.layer_norm:  # ungated
            up = ops.linear_gelu(x, self.gate_up_weight, self.up_bias, self.activation)
            return ops.linear(up, self.down_weight, self.down_bias)
        if self.activation != "silu":
            up = ops.linear(x, self.gate_up_weight, self.up_bias)
            return ops.linear(ops.gelu_and_mul(up, self.activation), self.down_weight)
        if self._quantized_inputs(x.shape[0]):
            up = ops.linear(x, self.gate_up_weight)
            return ops.linear(ops.silu_and_mul_fp8(up), self.down_weight)
        return ops.linear(ops.linear_silu_and_mul(x, self.gate_up_weight), self.down_weight)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              ops: Ops) -> torch.Tensor | Fp8Rows:
        if self.layer_norm:
            return ops.layer_norm(x, weight, bias, self.eps)
        norm = ops.rms_norm_fp8 if self._quantized_inputs(x.shape[0]) else ops.rms_norm
        return norm(x, weight, self.eps)

    def _add_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None, ops: Ops) -> tuple[torch.Tensor | Fp8Rows,
                                                                 torch.Tensor]:
        """(norm(x + residual), x + residual)."""
        if self.layer_norm:
            return ops.add_layer_norm(x, residual, weight, bias, self.eps)
        quantized = self._quantized_inputs(x.shape[0])
        add_norm = ops.add_rms_norm_fp8 if quantized else ops.add_rms_norm
        return add_norm(x, residual, weight, self.eps)

    def _quantized_inputs(self, num_tokens: int) -> bool:
        """Whether the linear layers are FP8 (--quantization fp8) and take their inputs
        quantized by the norms and SiLU before them; a one-token step's stay 16-bit
        (quantization.FP8_WEIGHT_ONLY_MAX_TOKENS)."""
        return isinstance(self.gate_up_weight, Fp8Weight) and quantizes_activations(num_tokens)

    def _attention(self, x: torch.Tensor | Fp8Rows, *, positions: torch.Tensor, cos_sin: torch.Tensor,
                   kv_cache: torch.Tensor, metadata: AttentionMetadata,
                   ops: Ops) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = ops.linear(x, self.qkv_weight, self.qkv_bias)  # x: Fp8Rows when quantized
        q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = _per_head_rms_norm(q, self.q_norm, self.eps, ops)
            k = _per_head_rms_norm(k, self.k_norm, self.eps, ops)
        q, _k = ops.rope_and_cache(q, k, v, positions, cos_sin, kv_cache, metadata.slot_mapping)
        out = ops.attention(q, kv_cache, metadata, self.scale, **self.attention_extras)
        return ops.linear(out.reshape(num_tokens, self.q_size), self.o_weight, self.o_bias)


def _per_head_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       ops: Ops) -> torch.Tensor:
    """x [T, heads, head_dim] normed over each head's head_dim (rows of the norm kernel)."""
    num_tokens, num_heads, head_dim = x.shape
    rows = x.reshape(num_tokens * num_heads, head_dim)
    return ops.rms_norm(rows, weight, eps).reshape(num_tokens, num_heads, head_dim)
