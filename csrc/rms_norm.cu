// RMSNorm, plain and fused with the residual add, one CTA per row.
//
// Arithmetic follows the torch reference (HF LlamaRMSNorm): the sum x + residual is rounded
// to T, normalised in float32, rounded to T, then multiplied by the weight and rounded again.
// Each thread keeps its ITEMS chunks of the row in registers between the two passes, so a row
// of up to ITEMS * VEC * blockDim elements is read once.
#include "common.cuh"

using namespace inflightd;

constexpr int ITEMS = 4;

template <typename T, int VEC>
__device__ __forceinline__ void load_chunk(const T* p, float (&v)[VEC]) {
  if constexpr (VEC == 8) {
    Vec8<T> raw;
    raw.load(p);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = raw.get(j);
  } else {
    v[0] = to_float(p[0]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_chunk(T* p, const float (&v)[VEC]) {
  if constexpr (VEC == 8) {
    Vec8<T> raw;
#pragma unroll
    for (int j = 0; j < 8; ++j) raw.set(j, v[j]);
    raw.store(p);
  } else {
    p[0] = from_float<T>(v[0]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void normalize_store(T* __restrict__ dst, const T* __restrict__ weight,
                                                float (&v)[ITEMS][VEC], float sum_sq, int hidden,
                                                float eps) {
  __shared__ float scratch[32];
  const float rstd = rsqrtf(block_sum(sum_sq, scratch) / static_cast<float>(hidden) + eps);
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * VEC;
    if (i < hidden) {
      float w[VEC];
      float o[VEC];
      load_chunk<T, VEC>(weight + i, w);
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = round_to<T>(v[it][j] * rstd) * w[j];
      store_chunk<T, VEC>(dst + i, o);
    }
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void rms_norm_impl(T* __restrict__ out, const T* __restrict__ x,
                                              const T* __restrict__ weight, int hidden,
                                              long long x_stride, float eps) {
  const T* row = x + blockIdx.x * x_stride;
  float v[ITEMS][VEC];
  float sum_sq = 0.f;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * VEC;
    if (i < hidden) {
      load_chunk<T, VEC>(row + i, v[it]);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum_sq += v[it][j] * v[it][j];
    }
  }
  normalize_store<T, VEC>(out + blockIdx.x * static_cast<long long>(hidden), weight, v, sum_sq,
                          hidden, eps);
}

// out = rms_norm(x + residual) * weight and summed = x + residual, both [T, hidden] contiguous.
template <typename T, int VEC>
__device__ __forceinline__ void add_rms_norm_impl(T* __restrict__ out, T* __restrict__ summed,
                                                  const T* __restrict__ x,
                                                  const T* __restrict__ residual,
                                                  const T* __restrict__ weight, int hidden,
                                                  long long x_stride, long long residual_stride,
                                                  float eps) {
  const T* x_row = x + blockIdx.x * x_stride;
  const T* r_row = residual + blockIdx.x * residual_stride;
  T* summed_row = summed + blockIdx.x * static_cast<long long>(hidden);
  float v[ITEMS][VEC];
  float sum_sq = 0.f;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * VEC;
    if (i < hidden) {
      float a[VEC];
      float b[VEC];
      load_chunk<T, VEC>(x_row + i, a);
      load_chunk<T, VEC>(r_row + i, b);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        v[it][j] = round_to<T>(a[j] + b[j]);
        sum_sq += v[it][j] * v[it][j];
      }
      store_chunk<T, VEC>(summed_row + i, v[it]);
    }
  }
  normalize_store<T, VEC>(out + blockIdx.x * static_cast<long long>(hidden), weight, v, sum_sq,
                          hidden, eps);
}

#define INFLIGHTD_RMS_NORM(T, SUFFIX, VEC)                                                \
  extern "C" __global__ void __launch_bounds__(1024, 1) rms_norm_##SUFFIX##_vec##VEC(       \
      T* out, const T* x, const T* weight, int hidden, long long x_stride, float eps) {    \
    rms_norm_impl<T, VEC>(out, x, weight, hidden, x_stride, eps);                        \
  }                                                                                       \
  extern "C" __global__ void __launch_bounds__(1024, 1) add_rms_norm_##SUFFIX##_vec##VEC(   \
      T* out, T* summed, const T* x, const T* residual, const T* weight, int hidden,     \
      long long x_stride, long long residual_stride, float eps) {                         \
    add_rms_norm_impl<T, VEC>(out, summed, x, residual, weight, hidden, x_stride,       \
                              residual_stride, eps);                                      \
  }

INFLIGHTD_RMS_NORM(__nv_bfloat16, bf16, 8)
INFLIGHTD_RMS_NORM(__nv_bfloat16, bf16, 1)
INFLIGHTD_RMS_NORM(__half, fp16, 8)
INFLIGHTD_RMS_NORM(__half, fp16, 1)
