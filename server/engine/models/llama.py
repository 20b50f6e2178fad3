"""The Llama family and its relatives (Mistral, Qwen2/3, Phi-3, Starcoder2: see
models/config.py) over a packed token batch and the paged KV cache.

    input_ids [T] -> embed -> N x DecoderLayer -> final norm -> hidden [T, H]
    hidden[sample_indices] -> lm_head -> float32 logits [num sampled, vocab]

Weights are plain tensors filled by `load_weights` from (HF name, tensor) pairs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from server.engine.attention.metadata import AttentionMetadata
from server.engine.models.config import SUPPORTED_ARCHITECTURES, ModelArchConfig, \
    UnsupportedModelError
from server.engine.models.int_schemes import INT_ON_LOAD, IntScheme, IntWeightDest, num_bytes
from server.engine.models.int_weights import IntWeight
from server.engine.models.layers import DecoderLayer
from server.engine.models.rotary import build_cos_sin, no_rotation
from server.engine.models.weight_map import WeightLoadError, load_named_tensors
from server.engine.ops import Ops
from server.engine.parallel.tensor_parallel import NO_TENSOR_PARALLEL, ShardPlan, TensorParallel
from server.engine.models.quantization import (SCALE_SUFFIX, Fp8Weight, QuantizationError,
                                               check_fp8_device, check_fp8_shapes,
                                               check_quantization)

# Buffers some older checkpoints carry; the model recomputes them.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq", ".rotary_emb.cos_cached", ".rotary_emb.sin_cached")


class LlamaModel:
    def __init__(self, arch: ModelArchConfig, *, dtype: torch.dtype,
                 device: torch.device | str, quantization: str | None = None,
                 tp: TensorParallel = NO_TENSOR_PARALLEL,
                 int_scheme: IntScheme | None = None) -> None:
        """Under tensor parallelism (tp) the model holds rank tp.rank's shard; its weights
        load from parallel.shard_weights, and arch stays the whole model's. int_scheme: a
        quantized checkpoint's integer weights (GPTQ, AWQ, ...); quantization int8_wo or
        int4_wo makes one for rounding the weights as they load."""
        if arch.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(f"LlamaModel cannot run {arch.architecture!r}")
        check_quantization(quantization)
        self.arch = arch
        self.dtype = dtype
        self.device = torch.device(device)
        self.quantization = quantization
        self.tp = tp
        self.shard = ShardPlan.of(arch, tp)
        local = self.shard.local_arch(arch)  # the shapes this rank holds
        if quantization == "fp8":
            check_fp8_device(self.device, dtype)
            check_fp8_shapes(_linear_shapes(local))
        if quantization in INT_ON_LOAD and int_scheme is None:
            # the whole model's input sizes pick the group size, so every rank agrees
            int_scheme = IntScheme.on_load(quantization, {
                name: cols for name, (_, cols) in _linear_shapes(arch).items()})
        elif quantization is not None and int_scheme is not None:
            raise QuantizationError(f"the checkpoint is quantized already ({int_scheme.name}); "
                                    f"leave out --quantization {quantization}")
        self.int_scheme = int_scheme
        self.embed_tokens = torch.empty(local.vocab_size, arch.hidden_size, dtype=dtype,
                                        device=device)
        self.layers = [DecoderLayer(local, dtype=dtype, device=device, quantization=quantization,
                                    window=window, tp=tp, head_offset=self.shard.q_heads[0],
                                    int_scheme=int_scheme)
                       for window in arch.layer_windows]
        self.norm = torch.empty(arch.hidden_size, dtype=dtype, device=device)
        self.embed_positions = (torch.empty(arch.max_position_embeddings, arch.hidden_size,
                                            dtype=dtype, device=device)
                                if arch.learned_positions else None)
        self.embed_norm = (torch.empty(2, arch.hidden_size, dtype=dtype, device=device)
                           if arch.embedding_norm else None)  # BLOOM: weight, bias
        self.norm_bias = (torch.empty(arch.hidden_size, dtype=dtype, device=device)
                          if arch.layer_norm and arch.layer_norm_biases else None)
        self.lm_head = (self.embed_tokens if arch.tie_word_embeddings else
                        torch.empty(local.vocab_size, arch.hidden_size, dtype=dtype,
                                    device=device))
        # Cast to the model dtype like HF does before rotating, so bf16 runs match HF too.
        # Learned positions (GPT-2) or ALiBi (MPT): cos 1 and sin 0, a rotation that leaves
        # q and k as they are.
        self.cos_sin = no_rotation(arch, dtype=dtype, device=device) if not arch.rotary \
            else build_cos_sin(head_dim=arch.head_dim, rope_theta=arch.rope_theta,
                               rope_scaling=arch.rope_scaling_dict,
                               max_positions=arch.max_position_embeddings,
                               dtype=dtype, device=device, rotary_dim=arch.rotary_dim)
        # Gemma 3's sliding-window layers: their own base frequency, unscaled
        local = (self.cos_sin if arch.local_rope_theta is None else build_cos_sin(
            head_dim=arch.head_dim, rope_theta=arch.local_rope_theta, rope_scaling=None,
            max_positions=arch.max_position_embeddings, dtype=dtype, device=device))
        # batch-1 decode's layers in one kernel (fused/decode_stack.py), set by the runner
        # where it applies
        self.decode_stack = None
        sliding = arch.sliding_layers or (False,) * arch.num_layers
        self.layer_cos_sin = [local if is_sliding else self.cos_sin for is_sliding in sliding]

    def weight_destinations(self, *, stored_fp8: bool = False
                            ) -> dict[str, torch.Tensor | Fp8Weight | IntWeightDest]:
        """stored_fp8: the checkpoint holds the linear weights already in FP8, each with its
        scales beside it (as `inflightd build --quantization fp8` writes them)."""
        names = {"model.embed_tokens.weight": self.embed_tokens, "model.norm.weight": self.norm}
        if self.norm_bias is not None:
            names["model.norm.bias"] = self.norm_bias
        if self.embed_positions is not None:
            names["model.embed_positions.weight"] = self.embed_positions
        if self.embed_norm is not None:
            names["model.embed_norm.weight"] = self.embed_norm[0]
            names["model.embed_norm.bias"] = self.embed_norm[1]
        if not self.arch.tie_word_embeddings:
            names["lm_head.weight"] = self.lm_head
        for index, layer in enumerate(self.layers):
            names.update(layer.weight_destinations(f"model.layers.{index}"))
        if stored_fp8:
            names.update({name + SCALE_SUFFIX: dest.scale for name, dest in list(names.items())
                          if isinstance(dest, Fp8Weight)})
        return names

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], *,
                     stored_fp8: bool = False) -> None:
        """Fills every tensor from weights under the engine's names and layouts (as
        weights.iter_weights yields them); raises WeightLoadError naming any missing,
        unexpected or mis-shaped tensor."""
        tied = self.arch.tie_word_embeddings

        def ignore(name: str) -> bool:
            # Tied checkpoints sometimes still store lm_head.weight (a copy of the embedding).
            return name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight")

        if stored_fp8 and self.quantization != "fp8":
            raise WeightLoadError("these weights are stored in FP8: load them with "
                                  "quantization 'fp8'")
        if self.arch.normalized_lm_head:  # Baichuan 2 divides each row by its length
            weights = ((name, F.normalize(tensor.float(), dim=-1).to(tensor.dtype)
                        if name == "lm_head.weight" else tensor) for name, tensor in weights)
        offset = self.arch.norm_weight_offset
        if offset:  # Gemma's norms scale by (1 + w): stored as the factor itself
            weights = ((name, tensor + offset if name.endswith("norm.weight") else tensor)
                       for name, tensor in weights)
        destinations = self.weight_destinations(stored_fp8=stored_fp8)
        load_named_tensors(destinations, _dense_where_needed(weights, destinations),
                           ignore=ignore)

    def num_parameter_bytes(self) -> int:
        """Bytes the weights take, each tensor once (a tied lm_head is the embedding); the
        rotary table is not a weight."""
        seen, total = set(), 0
        for holder in (self, *self.layers):
            for name, value in vars(holder).items():
                if (name != "cos_sin" and id(value) not in seen
                        and isinstance(value, (torch.Tensor, IntWeight, Fp8Weight))):
                    seen.add(id(value))
                    total += num_bytes(value)
        return total

    def num_streamed_bytes(self) -> int:
        """The weight bytes a one-token decode step reads: num_parameter_bytes less the
        input embedding tables (token, position), of which a step reads one row each; a
        token table that is also the lm_head counts, as the logits read all of it."""
        skipped = [self.embed_positions]
        if self.embed_tokens is not self.lm_head:
            skipped.append(self.embed_tokens)
        return self.num_parameter_bytes() - sum(num_bytes(t) for t in skipped if t is not None)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: AttentionMetadata, ops: Ops) -> torch.Tensor:
        """kv_cache is the whole pool [num_layers, 2, num_blocks, block_size, Hkv, D].
        Returns the final-normed hidden states [T, hidden]."""
        if self.decode_stack is not None and self.decode_stack.takes(attn_metadata):
            # the embedding, every layer and the final norm, one kernel
            return self.decode_stack.run(input_ids, positions, attn_metadata)
        hidden = self._embed(input_ids)
        if self.embed_positions is not None:  # GPT-2
            hidden = hidden + F.embedding(positions, self.embed_positions)
        if self.embed_norm is not None:  # BLOOM
            hidden = ops.layer_norm(hidden, self.embed_norm[0], self.embed_norm[1],
                                    self.arch.rms_norm_eps)
        if self.arch.embedding_multiplier is not None:  # Gemma: in the model's dtype, as HF
            hidden = hidden * torch.tensor(self.arch.embedding_multiplier, dtype=hidden.dtype)
        eps = self.arch.rms_norm_eps
        residual = None
        for index, layer in enumerate(self.layers):
            hidden, residual = layer.forward(hidden, residual, positions=positions,
                                             cos_sin=self.layer_cos_sin[index],
                                             kv_cache=kv_cache[index],
                                             metadata=attn_metadata, ops=ops)
        if self.arch.layer_norm:
            if residual is None:
                return ops.layer_norm(hidden, self.norm, self.norm_bias, eps)
            return ops.add_layer_norm(hidden, residual, self.norm, self.norm_bias, eps)[0]
        if residual is None:  # a model with no layers
            return ops.rms_norm(hidden, self.norm, eps)
        hidden, _ = ops.add_rms_norm(hidden, residual, self.norm, eps)
        return hidden

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings; under tensor parallelism each rank looks up the ids in its
        vocabulary rows (zeros for the others) and the all-reduce puts them together."""
        if not self.tp.enabled:
            return F.embedding(input_ids, self.embed_tokens)
        start, end = self.shard.vocab_rows
        local_ids = input_ids - start
        inside = (local_ids >= 0) & (local_ids < end - start)
        hidden = F.embedding(local_ids.clamp(0, end - start - 1), self.embed_tokens)
        return self.tp.all_reduce(hidden * inside.unsqueeze(-1).to(hidden.dtype))

    @torch.inference_mode()
    def use_tensor_parallel(self, tp: TensorParallel) -> None:
        """The same group with other collectives (parallel/ipc_all_reduce.py)."""
        if (tp.rank, tp.world_size) != (self.tp.rank, self.tp.world_size):
            raise ValueError("use_tensor_parallel: another rank or group size than the "
                             "weights were cut for")
        self.tp = tp
        for layer in self.layers:
            layer.tp = tp

    def compute_logits(self, hidden: torch.Tensor, ops: Ops | None = None) -> torch.Tensor:
        """hidden [N, H] -> float32 logits [N, vocab] (soft-capped for Gemma 2); under
        tensor parallelism each rank's vocabulary rows, gathered, the padding cut off."""
        return self.finish_logits(self.local_logits(hidden, ops))

    def local_logits(self, hidden: torch.Tensor, ops: Ops | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 logits of this rank's vocabulary rows (all of them without tensor
        parallelism), before finish_logits; written into out where given."""
        if ops is None:
            logits = F.linear(hidden, self.lm_head).float()
            return logits if out is None else out.copy_(logits)
        return ops.logits(hidden, self.lm_head, out=out)

    def finish_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """local_logits gathered over the ranks, the padding cut off, soft-capped."""
        if self.tp.enabled:
            logits = self.tp.all_gather_last_dim(logits)[:, :self.arch.vocab_size]
        cap = self.arch.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap


def _dense_where_needed(weights: Iterable[tuple[str, torch.Tensor | IntWeight]],
                        destinations: dict) -> Iterable[tuple[str, torch.Tensor | IntWeight]]:
    """Integer weights read for layers the model holds in its dtype (a scheme's dense
    kinds, e.g. GPTQ act-order attention) are dequantized on the way in."""
    for name, tensor in weights:
        if isinstance(tensor, IntWeight) and not isinstance(destinations.get(name),
                                                              IntWeightDest):
            tensor = tensor.dequantize(torch.float32)  # not the scales' float16
        yield name, tensor


def _linear_shapes(arch: ModelArchConfig) -> dict[str, tuple[int, int]]:
    """(N, K) of each fused linear weight of a layer."""
    q_size = arch.num_heads * arch.head_dim
    kv_size = arch.num_kv_heads * arch.head_dim
    hidden, inter = arch.hidden_size, arch.intermediate_size
    return {"qkv_proj": (q_size + 2 * kv_size, hidden), "o_proj": (hidden, q_size),
            "gate_up_proj": (2 * inter, hidden), "down_proj": (hidden, inter)}
