// Paged attention over a 16-bit KV cache (the cache in the model's dtype), head_dim 64: the
// kernels of paged_attention.cuh for bf16 and fp16. A key-split CTA asks for the 12 resident
// CTAs that sm_90's shared memory allows, but for the _extras (soft-capping, ALiBi, sliding
// window) w1k2, which spills under 12 CTAs' 80 registers (and 10's 96) and takes 120 under
// 8's 128.
#include "paged_attention.cuh"

#define INFLIGHTD_PAGED_ATTENTION_D64(T, NAME)                                                 \
  INFLIGHTD_PAGED_ATTENTION_SET(T, T, NAME, 64, 12, 12, (32), (64), (128), false, )             \
  INFLIGHTD_PAGED_ATTENTION_SET(T, T, NAME, 64, 8, 12, (32), (64), (128), true, _extras)

INFLIGHTD_PAGED_ATTENTION_D64(__nv_bfloat16, paged_attention_bf16)
INFLIGHTD_PAGED_ATTENTION_D64(__half, paged_attention_fp16)
