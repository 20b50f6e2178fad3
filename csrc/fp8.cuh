// e4m3 (FP8) conversions shared by the FP8 kernels. The hardware instructions exist from
// sm_89 (Ada, Hopper) on; the Python side refuses FP8 on older GPUs before any launch, and
// a kernel built for an older arch traps rather than compute garbage.
#pragma once

#include <cuda_fp16.h>

#include "common.cuh"

namespace inflightd {

using Fp8 = unsigned char;  // one e4m3 value, as the kernels move it

// Row scales of quantized activations (server.engine.quantization): max(absmax, kMinAbsMax)
// times float32(1 / 448), a multiply as in the torch reference.
constexpr float kInvFp8Max = 1.f / 448.f;
constexpr float kMinAbsMax = 1e-12f;

// Two floats as two e4m3 bytes (nearest, ties to even, saturated to +-448), `lo` in the low
// byte.
__device__ __forceinline__ unsigned to_e4m3x2(float lo, float hi) {
#if __CUDA_ARCH__ >= 890
  unsigned short out;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(out) : "f"(hi), "f"(lo));
  return out;
#else
  __trap();
  return 0u;
#endif
}

// Two e4m3 values (the low 16 bits of `pair`) as a half2, low byte in the low half. Exact:
// every e4m3 value is a half.
__device__ __forceinline__ unsigned e4m3x2_to_half2(unsigned short pair) {
#if __CUDA_ARCH__ >= 890
  unsigned halves;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(pair));
  return halves;
#else
  __trap();
  return 0u;
#endif
}

__device__ __forceinline__ float2 e4m3x2_to_float2(unsigned short pair) {
  const unsigned halves = e4m3x2_to_half2(pair);
  return __half22float2(*reinterpret_cast<const __half2*>(&halves));
}

// Four e4m3 bytes as two half2: bytes 0-1 into `lo`, bytes 2-3 into `hi`. One asm block,
// so ptxas converts the upper pair in place rather than shifting it down first (6 % of an
// fp8-cache decode attention at batch 512). (Moving the bits into halves with integer ops
// instead measured 10-20 % slower: bench/kernels.py's fp8 rows, docs/kernels-notes.md.)
__device__ __forceinline__ void e4m3x4_to_half2x2(unsigned x, unsigned& lo, unsigned& hi) {
#if __CUDA_ARCH__ >= 890
  asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\t"
      "cvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;\n\t}"
      : "=r"(lo), "=r"(hi)
      : "r"(x));
#else
  __trap();
  lo = hi = 0u;
#endif
}

// A row's scale from each thread's share of its absmax, over the block (one CTA per row);
// thread 0 stores it into scale[blockIdx.x]. `scratch` as block_max's.
__device__ __forceinline__ float store_row_scale(float absmax, float* scratch, float* scale) {
  const float s = fmaxf(block_max(absmax, scratch), kMinAbsMax) * kInvFp8Max;
  if (threadIdx.x == 0) scale[blockIdx.x] = s;
  return s;
}

// Eight floats divided by `scale` as eight e4m3 bytes: an IEEE division (__fdiv_rn, also
// under --use_fast_math), not a multiply by 1 / scale, for the torch reference's rounding.
__device__ __forceinline__ uint2 quantize8(const float (&v)[8], float scale) {
  float d[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) d[i] = __fdiv_rn(v[i], scale);
  uint2 packed;
  packed.x = to_e4m3x2(d[0], d[1]) | (to_e4m3x2(d[2], d[3]) << 16);
  packed.y = to_e4m3x2(d[4], d[5]) | (to_e4m3x2(d[6], d[7]) << 16);
  return packed;
}

}  // namespace inflightd
