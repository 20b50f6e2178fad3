// Paged attention over an e4m3 KV cache (--kv-cache-dtype fp8): the kernels of
// paged_attention.cuh for bf16 and fp16 queries and outputs, head_dim 64, 80, 96, 128 and
// 256. K and V move at one byte a value, half of a 16-bit cache, and are widened to half
// exactly in registers (attention_fragments.cuh). Needs sm_89+ (the Python side checks).
//
// Key-split CTAs per SM: shared memory would allow 12 at head_dim 128, but above 6 (12
// warps) ptxas caps the registers at 128 and the kernel spills; 8 at head_dim 64 (above, 96);
// 6 at 96; 8 at 80 (w1tk2: 12, at 80 registers, but 10 for its _extras build, which spills
// under 80); 4 at 256, where w1k2 needs 254 registers (shared memory would allow 5; w1tk2 6).
#include "paged_attention.cuh"

using inflightd::Fp8;

#define INFLIGHTD_PAGED_ATTENTION_FP8_D80(T, NAME)                                             \
  INFLIGHTD_PAGED_ATTENTION_SET(T, Fp8, NAME, 80, 8, 12, (32), (64), (128), false, )            \
  INFLIGHTD_PAGED_ATTENTION_SET(T, Fp8, NAME, 80, 8, 10, (32), (64), (128), true, _extras)

INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, Fp8, paged_attention_bf16_kvfp8, 64, 8, 12)
INFLIGHTD_PAGED_ATTENTION_FP8_D80(__nv_bfloat16, paged_attention_bf16_kvfp8)
INFLIGHTD_PAGED_ATTENTION_BOUNDED(__nv_bfloat16, Fp8, paged_attention_bf16_kvfp8, 96, 6, 10,
                                  (32, 1), (64, 1), (128, 1))
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, Fp8, paged_attention_bf16_kvfp8, 128, 6, 10)
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__nv_bfloat16, Fp8, paged_attention_bf16_kvfp8, 256, 4, 6)
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, Fp8, paged_attention_fp16_kvfp8, 64, 8, 12)
INFLIGHTD_PAGED_ATTENTION_FP8_D80(__half, paged_attention_fp16_kvfp8)
INFLIGHTD_PAGED_ATTENTION_BOUNDED(__half, Fp8, paged_attention_fp16_kvfp8, 96, 6, 10,
                                  (32, 1), (64, 1), (128, 1))
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, Fp8, paged_attention_fp16_kvfp8, 128, 6, 10)
INFLIGHTD_PAGED_ATTENTION_VARIANTS(__half, Fp8, paged_attention_fp16_kvfp8, 256, 4, 6)
