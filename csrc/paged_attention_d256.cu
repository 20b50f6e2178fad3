// Paged attention over a 16-bit KV cache (the cache in the model's dtype), head_dim 256
// (Gemma): the kernels of paged_attention.cuh for bf16 and fp16. A key-split CTA asks for the
// 3 resident CTAs that sm_90's shared memory allows: a CTA takes 66-99 KB (dynamic shared
// memory, paged_attention.cuh's SmemLayout).
#include "paged_attention.cuh"

INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, __nv_bfloat16, paged_attention_bf16, 256, 3, 3)
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, __half, paged_attention_fp16, 256, 3, 3)
