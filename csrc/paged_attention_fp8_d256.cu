// Paged attention over an e4m3 KV cache (--kv-cache-dtype fp8), head_dim 256: the kernels
// of paged_attention.cuh for bf16 and fp16 queries and outputs. K and V move at one byte a
// value, half of a 16-bit cache, and are widened to half exactly in registers
// (attention_fragments.cuh). Needs sm_89+ (the Python side checks).
//
// Key-split CTAs per SM: 4, where w1k2 needs 254 registers (shared memory would allow 5;
// w1tk2 6).
#include "paged_attention.cuh"

using inflightd::Fp8;

INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, Fp8, paged_attention_bf16_kvfp8, 256, 4, 6)
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, Fp8, paged_attention_fp16_kvfp8, 256, 4, 6)
