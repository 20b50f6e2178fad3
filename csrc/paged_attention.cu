// Paged attention over a 16-bit KV cache (the cache in the model's dtype): the kernels of
// paged_attention.cuh for bf16 and fp16, head_dim 64, 80 (Phi-2, GPT-NeoX sizes), 96
// (Phi-3), 128 and 256 (Gemma). A key-split CTA asks for as many resident CTAs as sm_90's
// shared memory allows (3 at head_dim 256, 6 at 128, 8 at 96, 9 at 80, 12 at 64), but for
// the _extras (soft-capping, ALiBi, sliding window) w1k2 at head_dims 64 and 80: at 64 it
// spills under 12 CTAs' 80 registers (and 10's 96), and takes 120 under 8's 128; at 80 it
// spills under 9 CTAs' (96) and fits 8's, and the _extras w2 at 80, which NVRTC held to 128
// registers and spilled, is let take what it needs (153: 6 CTAs). At 256 a CTA takes
// 66-99 KB (dynamic shared memory, paged_attention.cuh's SmemLayout).
#include "paged_attention.cuh"

#define INFLIGHTD_PAGED_ATTENTION_D64(T, NAME)                                                 \
  INFLIGHTD_PAGED_ATTENTION_SET(T, T, NAME, 64, 12, 12, (32), (64), (128), false, )             \
  INFLIGHTD_PAGED_ATTENTION_SET(T, T, NAME, 64, 8, 12, (32), (64), (128), true, _extras)
#define INFLIGHTD_PAGED_ATTENTION_D80(T, NAME)                                                 \
  INFLIGHTD_PAGED_ATTENTION_SET(T, T, NAME, 80, 9, 9, (32), (64), (128), false, )               \
  INFLIGHTD_PAGED_ATTENTION_SET(T, T, NAME, 80, 8, 9, (32), (64, 1), (128), true, _extras)

INFLIGHTD_PAGED_ATTENTION_D64(__nv_bfloat16, paged_attention_bf16)
INFLIGHTD_PAGED_ATTENTION_D80(__nv_bfloat16, paged_attention_bf16)
INFLIGHTD_PAGED_ATTENTION_BOUNDED(__nv_bfloat16, __nv_bfloat16, paged_attention_bf16, 96, 8, 8,
                                  (32, 1), (64, 1), (128, 1))
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, __nv_bfloat16, paged_attention_bf16, 128, 6, 6)
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, __nv_bfloat16, paged_attention_bf16, 256, 3, 3)
INFLIGHTD_PAGED_ATTENTION_D64(__half, paged_attention_fp16)
INFLIGHTD_PAGED_ATTENTION_D80(__half, paged_attention_fp16)
INFLIGHTD_PAGED_ATTENTION_BOUNDED(__half, __half, paged_attention_fp16, 96, 8, 8,
                                  (32, 1), (64, 1), (128, 1))
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, __half, paged_attention_fp16, 128, 6, 6)
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, __half, paged_attention_fp16, 256, 3, 3)
