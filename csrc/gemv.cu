// Skinny matrix product for decode steps of a few tokens: y[m, n] = x[m, :] . w[n, :] (+ b[n])
// for M <= 4 rows of x, w [N, K] row-major (a linear layer's weight), fp32 accumulation.
//
// At batch 1 a decode step is the weights streamed once from memory, so this kernel is
// about keeping enough bytes in flight: each warp owns one output column n and reads its
// weight row in 16-byte chunks, lane j taking chunks j, j + 32, ...; UNROLL chunks per lane
// are loaded before any is used, and the weights bypass L1 (read once). x is tiny and read
// through L1 by every warp.
//
//   # w row n:  | chunk 0 | chunk 1 | ... | chunk 31 | chunk 32 | ...   (8 elements each)
//   #  lane:        0         1             31          0
//
// K must be a multiple of 8 and the rows 16-byte aligned (the wrapper checks).
//
// The _gelu_{erf,tanh} kernels apply GELU to each output (the ungated MLP's up projection:
// GPT-2, Starcoder, Falcon), one launch where there were two. They round y + b to T before
// the GELU, as the two kernels do, so the fused output is bit for bit the unfused one.
//
// The _logits kernels write y in float32, unrounded: the LM head's logits, which rounded to
// 16 bits tie candidates that float32 tells apart (ops/cuda.py's logits).
#include "common.cuh"
#include "dot8.cuh"
#include "gelu.cuh"

using namespace inflightd;


template <typename T, typename Y, int M, float (*Act)(float)>
__device__ __forceinline__ void gemv_impl(Y* __restrict__ y, const T* __restrict__ w,
                                          const T* __restrict__ x, const T* __restrict__ bias,
                                          int n, int k, long long x_stride) {
  const int lane = threadIdx.x & 31;
  const int col = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
  if (col >= n) return;
  const T* w_row = w + static_cast<long long>(col) * k;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  gemv_stream_row<M, kGemvUnroll>(
      acc, reinterpret_cast<const uint4*>(w_row), k / 8, [&](uint4 w_raw, int m, int chunk) {
        return dot8<T>(w_raw, __ldg(reinterpret_cast<const uint4*>(x + m * x_stride) + chunk));
      });
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float total = warp_sum(acc[m]);
    if (lane == 0) {
      const float biased = bias == nullptr ? total : total + to_float(bias[col]);
      y[static_cast<long long>(m) * n + col] =
          from_float<Y>(Act == identity ? biased : Act(round_to<T>(biased)));
    }
  }
}

#define INFLIGHTD_GEMV_ACT(T, Y, NAME, M, ACT)                                                 \
  extern "C" __global__ void __launch_bounds__(32 * kGemvWarps) NAME(                           \
      Y* y, const T* w, const T* x, const T* bias, int n, int k, long long x_stride) {          \
    gemv_impl<T, Y, M, ACT>(y, w, x, bias, n, k, x_stride);                                      \
  }

#define INFLIGHTD_GEMV(T, SUFFIX, M)                                                           \
  INFLIGHTD_GEMV_ACT(T, T, gemv_##SUFFIX##_m##M, M, identity)                                  \
  INFLIGHTD_GEMV_ACT(T, T, gemv_gelu_erf_##SUFFIX##_m##M, M, gelu_erf)                         \
  INFLIGHTD_GEMV_ACT(T, T, gemv_gelu_tanh_##SUFFIX##_m##M, M, gelu_tanh)                       \
  INFLIGHTD_GEMV_ACT(T, float, gemv_logits_##SUFFIX##_m##M, M, identity)

INFLIGHTD_GEMV(__nv_bfloat16, bf16, 1)
INFLIGHTD_GEMV(__nv_bfloat16, bf16, 2)
INFLIGHTD_GEMV(__nv_bfloat16, bf16, 3)
INFLIGHTD_GEMV(__nv_bfloat16, bf16, 4)
INFLIGHTD_GEMV(__half, fp16, 1)
INFLIGHTD_GEMV(__half, fp16, 2)
INFLIGHTD_GEMV(__half, fp16, 3)
INFLIGHTD_GEMV(__half, fp16, 4)
