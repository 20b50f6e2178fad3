// LayerNorm over rows, plain and fused with the residual add, with or without a bias (MPT
// has none: bias is null); one CTA per row, held in registers between its passes.
//
// As torch's F.layer_norm on 16-bit inputs: mean and (biased) variance in float32, then
// weight * (rstd * (x - mean)) + bias in float32, rounded to T once. The fused kernel
// normalises x + residual rounded to T (the sum torch stores) and stores that sum too.
// torch reduces with Welford's method and these kernels in two passes, so the two agree to
// float32 rounding, not bit for bit.
#include "common.cuh"
#include "row.cuh"

using namespace inflightd;

constexpr int ITEMS = 4;  // as rms_norm.cu: rows of up to ITEMS * VEC * blockDim elements

template <typename T, int VEC>
__device__ __forceinline__ void layer_norm_store(T* __restrict__ dst, const T* __restrict__ weight,
                                                 const T* __restrict__ bias,
                                                 const float (&v)[ITEMS][VEC], int hidden,
                                                 float eps) {
  __shared__ float sum_scratch[32];
  __shared__ float sq_scratch[32];
  float sum = 0.f;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * VEC;
    if (i < hidden) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum += v[it][j];
    }
  }
  const float mean = block_sum(sum, sum_scratch) / static_cast<float>(hidden);
  float sum_sq = 0.f;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * VEC;
    if (i < hidden) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum_sq += (v[it][j] - mean) * (v[it][j] - mean);
    }
  }
  const float rstd = rsqrtf(block_sum(sum_sq, sq_scratch) / static_cast<float>(hidden) + eps);
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * VEC;
    if (i < hidden) {
      float w[VEC];
      float b[VEC] = {};
      float o[VEC];
      load_chunk<T, VEC>(weight + i, w);
      if (bias != nullptr) load_chunk<T, VEC>(bias + i, b);
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = w[j] * (rstd * (v[it][j] - mean)) + b[j];
      store_chunk<T, VEC>(dst + i, o);
    }
  }
}

// v = row blockIdx.x of x, or of x + residual rounded to T (then also stored into summed).
template <typename T, int VEC>
__device__ __forceinline__ void load_rows(float (&v)[ITEMS][VEC], T* __restrict__ summed,
                                          const T* __restrict__ x,
                                          const T* __restrict__ residual, int hidden,
                                          long long x_stride, long long residual_stride) {
  const T* x_row = x + blockIdx.x * x_stride;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * VEC;
    if (i < hidden) {
      load_chunk<T, VEC>(x_row + i, v[it]);
      if (residual != nullptr) {
        float r[VEC];
        load_chunk<T, VEC>(residual + blockIdx.x * residual_stride + i, r);
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[it][j] = round_to<T>(v[it][j] + r[j]);
        store_chunk<T, VEC>(summed + blockIdx.x * static_cast<long long>(hidden) + i, v[it]);
      }
    }
  }
}

#define INFLIGHTD_LAYER_NORM(T, SUFFIX, VEC)                                                  \
  extern "C" __global__ void __launch_bounds__(1024, 1) layer_norm_##SUFFIX##_vec##VEC(         \
      T* out, const T* x, const T* weight, const T* bias, int hidden, long long x_stride,    \
      float eps) {                                                                          \
    inflightd::wait_for_previous_kernel();                                                  \
    float v[ITEMS][VEC];                                                                    \
    load_rows<T, VEC>(v, nullptr, x, nullptr, hidden, x_stride, 0);                         \
    layer_norm_store<T, VEC>(out + blockIdx.x * static_cast<long long>(hidden), weight, bias, \
                             v, hidden, eps);                                               \
  }                                                                                         \
  extern "C" __global__ void __launch_bounds__(1024, 1) add_layer_norm_##SUFFIX##_vec##VEC(     \
      T* out, T* summed, const T* x, const T* residual, const T* weight, const T* bias,     \
      int hidden, long long x_stride, long long residual_stride, float eps) {               \
    inflightd::wait_for_previous_kernel();                                                  \
    float v[ITEMS][VEC];                                                                    \
    load_rows<T, VEC>(v, summed, x, residual, hidden, x_stride, residual_stride);           \
    layer_norm_store<T, VEC>(out + blockIdx.x * static_cast<long long>(hidden), weight, bias, \
                             v, hidden, eps);                                               \
  }

INFLIGHTD_LAYER_NORM(__nv_bfloat16, bf16, 8)
INFLIGHTD_LAYER_NORM(__nv_bfloat16, bf16, 1)
INFLIGHTD_LAYER_NORM(__half, fp16, 8)
INFLIGHTD_LAYER_NORM(__half, fp16, 1)
