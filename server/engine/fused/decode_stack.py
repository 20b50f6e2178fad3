"""Batch-1 decode through one persistent kernel for every layer (csrc/decode_stack.cu): which
models it takes, the per-layer table of tensor addresses it reads, and its launch.

It serves the GPT-2-style block (pre-LayerNorm with biases, attention without rotary or
ALiBi, a biased GELU MLP): GPT-2 and GPTBigCode, 16-bit weights and KV cache, one GPU,
sm_90. Other models, or a step of more than one token, take the per-op kernels. On by
default where it applies; INFLIGHTD_DECODE_STACK=0 turns it off.
"""

from __future__ import annotations

import numpy as np
import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.gpu.kernel_args import dtype_suffix, env_switch
from server.engine.gpu.kernels import KernelLibrary

DECODE_STACK_ENV = "INFLIGHTD_DECODE_STACK"
# csrc/decode_stack.cuh's sizes
CONSUMER_WARPS = 8
COPY_PARTS = 2  # barriers a stage (csrc/decode_stack.cuh's kCopyParts)
THREADS = 32 * (CONSUMER_WARPS + 1)  # + the producer warp
STAGES = 6
STAGE_BYTES = 32768
MAX_WIDTH = 8192  # elements of a GEMV input held in shared memory
MAX_HIDDEN = 4096  # a LayerNorm's row, two chunks of 8 a consumer thread
MAX_ROWS_PER_CTA = 128
# | ring | x | bias, residual | row partials | norm sums | mbarriers | busy word (16 bytes) |
SHARED_BYTES = (STAGES * STAGE_BYTES + MAX_WIDTH * 2 + 2 * MAX_ROWS_PER_CTA * 4
                + MAX_ROWS_PER_CTA * CONSUMER_WARPS * 4 + 2 * CONSUMER_WARPS * 4
                + STAGES * (COPY_PARTS + 1) * 8 + 16)
MAX_TASKS = 256
MAX_SPLITS = 8  # of one head's keys, each split a CTA
PHASES = 5  # counters per layer
STAMP_WORDS = 6  # words of times a phase (csrc/decode_stack.cuh's kStampWords)
COPIES = ("cp_async", "bulk", "plain")  # csrc/decode_stack.cuh's StackCopies, in order
HEAD_DIMS = (64, 128)
GELU_KERNELS = {"gelu_tanh": "gelu_tanh", "gelu": "gelu_erf"}
# the table's columns, one row a layer (csrc/decode_stack.cuh's StackLayer)
TABLE_COLUMNS = ("input_norm", "input_norm_bias", "qkv_weight", "qkv_bias", "o_weight",
                 "o_bias", "post_norm", "post_norm_bias", "gate_up_weight", "up_bias",
                 "down_weight", "down_bias")


def unsupported_reason(model, *, num_sms: int, kv_cache_dtype: torch.dtype) -> str | None:
    """Why the decode stack cannot run this model (a LlamaModel), or None."""
    arch = model.arch
    checks = (
        (arch.layer_norm and arch.layer_norm_biases and arch.mlp_biases,
         "the block is not LayerNorm with biases and an ungated MLP"),
        (arch.attention_bias and arch.o_proj_bias, "the attention projections have no biases"),
        (arch.activation in GELU_KERNELS, f"activation {arch.activation!r}"),
        (not arch.rotary and arch.alibi_bias_max is None, "rotary or ALiBi positions"),
        (not (arch.parallel_attention or arch.sandwich_norms or arch.qk_norm
              or arch.embedding_norm), "a parallel or extra-normed block"),
        (arch.attn_softcap is None and not any(w is not None for w in arch.layer_windows),
         "soft-capping or sliding windows"),
        (arch.head_dim in HEAD_DIMS, f"head_dim {arch.head_dim} (takes {HEAD_DIMS})"),
        (model.quantization is None and model.int_scheme is None, "quantized weights"),
        (model.dtype in (torch.bfloat16, torch.float16) and kv_cache_dtype == model.dtype,
         "not 16-bit weights and KV cache of one dtype"),
        (not model.tp.enabled, "tensor parallelism"),
        (model.embed_positions is not None and arch.embedding_multiplier is None,
         "not learned absolute positions added to unscaled embeddings"),
        (arch.hidden_size <= MAX_HIDDEN, f"hidden size over {MAX_HIDDEN}"),
        (max(arch.intermediate_size, arch.num_heads * arch.head_dim) <= MAX_WIDTH,
         f"a GEMV input wider than {MAX_WIDTH}"),
        (arch.hidden_size % 8 == 0 and arch.intermediate_size % 8 == 0,
         "widths not multiples of 8"),
        (arch.num_heads <= num_sms, "more query heads than SMs"),
        (-(-max(arch.intermediate_size, (arch.num_heads + 2 * arch.num_kv_heads)
                * arch.head_dim) // num_sms) <= MAX_ROWS_PER_CTA,
         f"more than {MAX_ROWS_PER_CTA} rows of a GEMV per SM"),
    )
    for holds, reason in checks:
        if not holds:
            return reason
    return None


class DecodeStack:
    """One model's decode stack over one KV cache pool. `run` takes the token and position
    of a one-token, one-sequence step, embeds it, runs every layer on the residual stream
    (`h`, a buffer of its own) and returns that stream's final LayerNorm (the logits' input)."""

    def __init__(self, model, library: KernelLibrary, kv_cache: torch.Tensor) -> None:
        arch, device = model.arch, model.device
        self.library = library
        self.arch = arch
        self.scale = arch.query_scale or arch.head_dim ** -0.5
        self.num_ctas = library.num_sms
        self.num_splits = max(1, min(MAX_SPLITS,
                                     min(self.num_ctas, MAX_TASKS) // arch.num_heads))
        self.function = (f"decode_stack_{dtype_suffix('weights', model.embed_tokens)}"
                         f"_d{arch.head_dim}_{GELU_KERNELS[arch.activation]}")
        self.table = _layer_table(model, kv_cache)
        self.kv_cache = kv_cache  # the table holds its addresses: keep it alive
        self.block_size = kv_cache.shape[3]  # [num_layers, 2, num_blocks, block_size, ...]
        self.num_slots = kv_cache.shape[2] * self.block_size
        q_size, kv_size = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
        self.qkv = torch.empty(q_size + 2 * kv_size, dtype=model.dtype, device=device)
        self.act = torch.empty(arch.intermediate_size, dtype=model.dtype, device=device)
        # the final LayerNorm of h, the kernel's last CTA out's (the logits' input)
        self.final_weight, self.final_bias = model.norm, model.norm_bias
        self.normed = torch.empty((1, arch.hidden_size), dtype=model.dtype, device=device)
        self.h = torch.empty((1, arch.hidden_size), dtype=model.dtype, device=device)
        self.token_embeddings, self.position_embeddings = (model.embed_tokens,
                                                           model.embed_positions)
        for name in ("norm", "norm_bias", "embed_tokens", "embed_positions"):
            _check_aligned(f"the model's {name}", getattr(model, name))
        self.partials = torch.empty(arch.num_heads * self.num_splits * (arch.head_dim + 4),
                                    dtype=torch.float32, device=device)
        # zero before the first step: the phases', then the step's (the kernel's last CTA
        # zeroes them after each)
        self.counters = torch.zeros(arch.num_layers * PHASES + 1, dtype=torch.int32,
                                    device=device)
        # 0, or the device address of mapped host memory, 8 words a CTA: where each CTA's
        # consumers and producer have got to, kept through a trap of the kernel's watchdog
        # (csrc/decode_stack.cuh; for debugging)
        self.trace_address = 0
        # 0, or the device address of a uint64 buffer of times_words() words where the
        # consumers stamp each phase (bench/decode_stack.py --timing)
        self.times_address = 0
        # its CTAs wait on each other, so all must be resident: one CTA an SM asks for that,
        # and the kernel's watchdog turns a grid that is not into an error. cooperative: the
        # driver's guarantee instead (an error at launch), without programmatic launch;
        # not yet run on a GPU, so off by default
        self.cooperative = False
        # the producer's copies (COPIES, csrc/decode_stack.cuh's StackCopies): 16-byte
        # cp.async by its 32 lanes, 4 % faster on an H100 than cp.async.bulk at every shape
        # measured (docs/benchmarks.md, session 21); "plain" for compute-sanitizer only (its
        # stores and releases are what racecheck follows: tests/gpu/decode_stack_sanitizer.py)
        self.copies = "cp_async"
        # the producer's pace (csrc/decode_stack.cuh's StackShape::pacing): 0, a stage at a
        # time; k, at most k half-stages on their way. 2 was the fastest of 0-3 on an H100
        # for both shapes measured (docs/benchmarks.md, session 25)
        self.pacing = 2

    def times_words(self) -> int:
        return self.num_ctas * (self.arch.num_layers * PHASES + 1) * STAMP_WORDS

    @staticmethod
    def takes(metadata: AttentionMetadata) -> bool:
        return metadata.num_tokens == 1 and metadata.num_seqs == 1

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            metadata: AttentionMetadata) -> torch.Tensor:
        """input_ids and positions int64 [1] on the device; returns the model's final
        LayerNorm of the residual stream after the last layer (a buffer each step
        rewrites)."""
        if input_ids.dtype != torch.int64 or positions.dtype != torch.int64:
            raise TypeError("decode stack: input_ids and positions must be int64")
        a = self.arch
        self.library.launch(
            "decode_stack", self.function, grid=(self.num_ctas,), block=(THREADS,),
            shared_bytes=SHARED_BYTES, cooperative=self.cooperative,
            args=(self.table.data_ptr(), self.h.data_ptr(), self.qkv.data_ptr(),
                  self.act.data_ptr(), self.partials.data_ptr(), self.counters.data_ptr(),
                  metadata.seq_lens.data_ptr(), metadata.block_tables.data_ptr(),
                  metadata.slot_mapping.data_ptr(), np.int32(a.num_layers),
                  np.int32(a.hidden_size), np.int32(a.intermediate_size),
                  np.int32(a.num_heads), np.int32(a.num_kv_heads), np.int32(self.num_splits),
                  np.int32(self.block_size), np.int64(self.num_slots),
                  np.float32(a.rms_norm_eps), np.float32(self.scale),
                  np.int32(COPIES.index(self.copies)), np.int32(self.pacing), self.trace_address,
                  self.times_address, self.normed.data_ptr(), self.final_weight.data_ptr(),
                  self.final_bias.data_ptr(), input_ids.data_ptr(), positions.data_ptr(),
                  self.token_embeddings.data_ptr(), self.position_embeddings.data_ptr()))
        return self.normed


def _check_aligned(name: str, tensor: torch.Tensor) -> None:
    """The kernel reads weights as 16-byte vectors, at addresses it is handed."""
    if not tensor.is_contiguous() or tensor.data_ptr() % 16:
        raise ValueError(f"{name} is not contiguous and 16-byte aligned")


def _layer_table(model, kv_cache: torch.Tensor) -> torch.Tensor:
    """int64 [num_layers, 14] on the device: each layer's tensor addresses in StackLayer's
    order, then its K and V caches."""
    rows = []
    for index, layer in enumerate(model.layers):
        tensors = [getattr(layer, name) for name in TABLE_COLUMNS]
        for name, tensor in zip(TABLE_COLUMNS, tensors):
            _check_aligned(f"layer {index}'s {name}", tensor)
        rows.append([t.data_ptr() for t in tensors]
                    + [kv_cache[index, 0].data_ptr(), kv_cache[index, 1].data_ptr()])
    return torch.tensor(rows, dtype=torch.int64, device=model.device)


def decode_stack_for(model, library: KernelLibrary, kv_cache: torch.Tensor
                     ) -> DecodeStack | None:
    """The model's decode stack, or None where it does not apply or is switched off."""
    if not env_switch(DECODE_STACK_ENV, default=True) or library.arch != "sm_90":
        return None
    if unsupported_reason(model, num_sms=library.num_sms, kv_cache_dtype=kv_cache.dtype):
        return None
    return DecodeStack(model, library, kv_cache)
