// Paged attention over a 16-bit KV cache (the cache in the model's dtype), head_dim 96
// (Phi-3): the kernels of paged_attention.cuh for bf16 and fp16. A key-split CTA asks for the
// 8 resident CTAs that sm_90's shared memory allows.
#include "paged_attention.cuh"

INFLIGHTD_PAGED_ATTENTION_BOUNDED(__nv_bfloat16, __nv_bfloat16, paged_attention_bf16, 96, 8, 8,
                                  (32, 1), (64, 1), (128, 1))
INFLIGHTD_PAGED_ATTENTION_BOUNDED(__half, __half, paged_attention_fp16, 96, 8, 8,
                                  (32, 1), (64, 1), (128, 1))
