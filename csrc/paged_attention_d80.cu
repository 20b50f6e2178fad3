// Paged attention over a 16-bit KV cache (the cache in the model's dtype), head_dim 80 (Phi-2,
// GPT-NeoX sizes): the kernels of paged_attention.cuh for bf16 and fp16. A key-split CTA asks
// for the 9 resident CTAs that sm_90's shared memory allows, but for the _extras
// (soft-capping, ALiBi, sliding window) w1k2, which spills under 9 CTAs' 96 registers and
// fits 8's; the _extras w2, which NVRTC held to 128 registers and spilled, is let take what
// it needs (153: 6 CTAs).
#include "paged_attention.cuh"

#define INFLIGHTD_PAGED_ATTENTION_D80(T, NAME)                                                 \
  INFLIGHTD_PAGED_ATTENTION_SET(T, T, NAME, 80, 9, 9, (32), (64), (128), false, )               \
  INFLIGHTD_PAGED_ATTENTION_SET(T, T, NAME, 80, 8, 9, (32), (64, 1), (128), true, _extras)

INFLIGHTD_PAGED_ATTENTION_D80(__nv_bfloat16, paged_attention_bf16)
INFLIGHTD_PAGED_ATTENTION_D80(__half, paged_attention_fp16)
