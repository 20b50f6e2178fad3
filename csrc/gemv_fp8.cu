// Skinny FP8 matrix product for decode steps of a few tokens under --quantization fp8:
//
//   y[m, n] = x_scale[m] * w_scale[n] * sum_k x_q[m, k] * w_q[n, k]  (+ b[n]),  bf16 out
//
// x_q [M, K] and w_q [N, K] are e4m3 (x_q from quantize.cu, so the result is the FP8 GEMM's),
// M <= 4. At batch 1 the step streams the weights once, half the bytes of bf16: as gemv.cu,
// each warp owns one output column and its lanes read the weight row in 16-byte chunks
// (16 weights), UNROLL chunks in flight per lane, bypassing L1.
//
//   # w row n:  | chunk 0 | chunk 1 | ... | chunk 31 | chunk 32 | ...   (16 elements each)
//   #  lane:        0         1             31          0
//
// Products are taken in float32 from exact e4m3 -> half conversions. K must be a multiple of
// 16 and rows 16-byte aligned (the wrapper checks). Needs sm_89+ (the Python side checks).
#include "common.cuh"
#include "fp8.cuh"

using namespace inflightd;

__device__ __forceinline__ float dot16(uint4 w_raw, uint4 x_raw) {
  const unsigned short* w = reinterpret_cast<const unsigned short*>(&w_raw);
  const unsigned short* x = reinterpret_cast<const unsigned short*>(&x_raw);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float2 wf = e4m3x2_to_float2(w[i]);
    const float2 xf = e4m3x2_to_float2(x[i]);
    sum = fmaf(wf.x, xf.x, sum);
    sum = fmaf(wf.y, xf.y, sum);
  }
  return sum;
}

template <int M>
__device__ __forceinline__ void gemv_fp8_impl(__nv_bfloat16* __restrict__ y,
                                              const unsigned char* __restrict__ w,
                                              const float* __restrict__ w_scale,
                                              const unsigned char* __restrict__ x,
                                              const float* __restrict__ x_scale,
                                              const __nv_bfloat16* __restrict__ bias, int n,
                                              int k) {
  const int lane = threadIdx.x & 31;
  const int col = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
  if (col >= n) return;
  const unsigned char* w_row = w + static_cast<long long>(col) * k;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  gemv_stream_row<M, kGemvUnroll>(
      acc, reinterpret_cast<const uint4*>(w_row), k / 16, [&](uint4 w_raw, int m, int chunk) {
        return dot16(w_raw, __ldg(reinterpret_cast<const uint4*>(x + static_cast<long long>(m) * k) +
                                  chunk));
      });
  const float col_scale = w_scale[col];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float total = warp_sum(acc[m]) * x_scale[m] * col_scale;
    if (lane == 0) {
      y[static_cast<long long>(m) * n + col] =
          from_float<__nv_bfloat16>(bias == nullptr ? total : total + to_float(bias[col]));
    }
  }
}

#define INFLIGHTD_GEMV_FP8(M)                                                                    \
  extern "C" __global__ void __launch_bounds__(32 * kGemvWarps) gemv_fp8_bf16_m##M(              \
      __nv_bfloat16* y, const unsigned char* w, const float* w_scale, const unsigned char* x,   \
      const float* x_scale, const __nv_bfloat16* bias, int n, int k) {                          \
    gemv_fp8_impl<M>(y, w, w_scale, x, x_scale, bias, n, k);                                     \
  }

INFLIGHTD_GEMV_FP8(1)
INFLIGHTD_GEMV_FP8(2)
INFLIGHTD_GEMV_FP8(3)
INFLIGHTD_GEMV_FP8(4)
