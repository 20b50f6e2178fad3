// Paged attention over a 16-bit KV cache (the cache in the model's dtype), head_dim 128: the
// kernels of paged_attention.cuh for bf16 and fp16. A key-split CTA asks for the 6 resident
// CTAs that sm_90's shared memory allows.
#include "paged_attention.cuh"

INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, __nv_bfloat16, paged_attention_bf16, 128, 6, 6)
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, __half, paged_attention_fp16, 128, 6, 6)
