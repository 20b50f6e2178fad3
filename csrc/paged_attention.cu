// Paged attention over a 16-bit KV cache (the cache in the model's dtype): the kernels of
// paged_attention.cuh for bf16 and fp16, head_dim 64, 96 (Phi-3) and 128. A key-split CTA
// asks for as many resident CTAs as sm_90's shared memory allows (6 at head_dim 128, 8 at
// 96, 12 at 64).
#include "paged_attention.cuh"

INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, __nv_bfloat16, paged_attention_bf16, 64, 12, 12)
INFLIGHTD_PAGED_ATTENTION_BOUNDED(__nv_bfloat16, __nv_bfloat16, paged_attention_bf16, 96, 8, 8,
                                  (32, 1), (64, 1), (128, 1))
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, __nv_bfloat16, paged_attention_bf16, 128, 6, 6)
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, __half, paged_attention_fp16, 64, 12, 12)
INFLIGHTD_PAGED_ATTENTION_BOUNDED(__half, __half, paged_attention_fp16, 96, 8, 8,
                                  (32, 1), (64, 1), (128, 1))
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, __half, paged_attention_fp16, 128, 6, 6)
