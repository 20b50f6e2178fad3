// Paged attention over an e4m3 KV cache (--kv-cache-dtype fp8), head_dim 80: the kernels
// of paged_attention.cuh for bf16 and fp16 queries and outputs. K and V move at one byte a
// value, half of a 16-bit cache, and are widened to half exactly in registers
// (attention_fragments.cuh). Needs sm_89+ (the Python side checks).
//
// Key-split CTAs per SM: 8 (w1tk2: 12, at 80 registers, but 10 for its _extras build, which
// spills under 80).
#include "paged_attention.cuh"

using inflightd::Fp8;

#define INFLIGHTD_PAGED_ATTENTION_FP8_D80(T, NAME)                                             \
  INFLIGHTD_PAGED_ATTENTION_SET(T, Fp8, NAME, 80, 8, 12, (32), (64), (128), false, )            \
  INFLIGHTD_PAGED_ATTENTION_SET(T, Fp8, NAME, 80, 8, 10, (32), (64), (128), true, _extras)

INFLIGHTD_PAGED_ATTENTION_FP8_D80(__nv_bfloat16, paged_attention_bf16_kvfp8)
INFLIGHTD_PAGED_ATTENTION_FP8_D80(__half, paged_attention_fp16_kvfp8)
