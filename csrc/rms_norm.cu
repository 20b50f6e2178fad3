// RMSNorm, plain and fused with the residual add, one CTA per row.
//
// Arithmetic follows the torch reference (HF LlamaRMSNorm): the sum x + residual is rounded
// to T, normalised in float32, rounded to T, then multiplied by the weight and rounded again.
// Each thread keeps its ITEMS chunks of the row in registers between the two passes, so a row
// of up to ITEMS * VEC * blockDim elements is read once.
//
// The "_fp8" kernels (--quantization fp8) end in the FP8 GEMM's input instead: the normed
// row, rounded to T as the plain kernels store it, quantized as quantize.cu does (one scale
// per row from its absmax; e4m3 values), bit for bit what the two kernels give one after the
// other, without writing and reading the T row between them.
#include "common.cuh"
#include "fp8.cuh"
#include "row.cuh"

using namespace inflightd;

constexpr int ITEMS = 4;

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

// The normed row (as the plain kernels store it) quantized into q [T, hidden] e4m3 and
// scale [T] float32.
template <typename T, int VEC>
__device__ __forceinline__ void normalize_quantize_store(Fp8* __restrict__ q,
                                                         float* __restrict__ scale,
                                                         const T* __restrict__ weight,
                                                         float (&v)[ITEMS][VEC], float sum_sq,
                                                         int hidden, float eps) {
  __shared__ float sum_scratch[32];
  __shared__ float max_scratch[32];
  const float rstd = rsqrtf(block_sum(sum_sq, sum_scratch) / static_cast<float>(hidden) + eps);
  float absmax = 0.f;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * VEC;
    if (i < hidden) {
      float w[VEC];
      load_chunk<T, VEC>(weight + i, w);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        v[it][j] = round_to<T>(round_to<T>(v[it][j] * rstd) * w[j]);
        absmax = fmaxf(absmax, fabsf(v[it][j]));
      }
    }
  }
  const float s = store_row_scale(absmax, max_scratch, scale);
  Fp8* dst = q + blockIdx.x * static_cast<long long>(hidden);
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * VEC;
    if (i < hidden) {
      if constexpr (VEC == 8) {
        *reinterpret_cast<uint2*>(dst + i) = quantize8(v[it], s);
      } else {
        dst[i] = static_cast<Fp8>(to_e4m3x2(__fdiv_rn(v[it][0], s), 0.f) & 0xffu);
      }
    }
  }
}

// Loads row `blockIdx.x` of x into v; returns this thread's share of its sum of squares.
template <typename T, int VEC>
__device__ __forceinline__ float load_row(float (&v)[ITEMS][VEC], const T* __restrict__ x,
                                          int hidden, long long x_stride) {
  const T* row = x + blockIdx.x * x_stride;
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
  return sum_sq;
}

// v = x + residual (rounded to T), also stored into summed [T, hidden] contiguous; returns
// this thread's share of its sum of squares.
template <typename T, int VEC>
__device__ __forceinline__ float load_add_row(float (&v)[ITEMS][VEC], T* __restrict__ summed,
                                              const T* __restrict__ x,
                                              const T* __restrict__ residual, int hidden,
                                              long long x_stride, long long residual_stride) {
  const T* x_row = x + blockIdx.x * x_stride;
  const T* r_row = residual + blockIdx.x * residual_stride;
  T* summed_row = summed + blockIdx.x * static_cast<long long>(hidden);
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
  return sum_sq;
}

#define INFLIGHTD_RMS_NORM(T, SUFFIX, VEC)                                                \
  extern "C" __global__ void __launch_bounds__(1024, 1) rms_norm_##SUFFIX##_vec##VEC(       \
      T* out, const T* x, const T* weight, int hidden, long long x_stride, float eps) {    \
    inflightd::wait_for_previous_kernel();                                                 \
    float v[ITEMS][VEC];                                                                  \
    const float sum_sq = load_row<T, VEC>(v, x, hidden, x_stride);                        \
    normalize_store<T, VEC>(out + blockIdx.x * static_cast<long long>(hidden), weight, v, \
                            sum_sq, hidden, eps);                                         \
  }                                                                                       \
  extern "C" __global__ void __launch_bounds__(1024, 1) add_rms_norm_##SUFFIX##_vec##VEC(   \
      T* out, T* summed, const T* x, const T* residual, const T* weight, int hidden,     \
      long long x_stride, long long residual_stride, float eps) {                         \
    inflightd::wait_for_previous_kernel();                                                \
    float v[ITEMS][VEC];                                                                  \
    const float sum_sq = load_add_row<T, VEC>(v, summed, x, residual, hidden, x_stride,   \
                                              residual_stride);                           \
    normalize_store<T, VEC>(out + blockIdx.x * static_cast<long long>(hidden), weight, v, \
                            sum_sq, hidden, eps);                                         \
  }                                                                                       \
  extern "C" __global__ void __launch_bounds__(1024, 1) rms_norm_fp8_##SUFFIX##_vec##VEC(   \
      Fp8* q, float* scale, const T* x, const T* weight, int hidden, long long x_stride,  \
      float eps) {                                                                        \
    inflightd::wait_for_previous_kernel();                                                \
    float v[ITEMS][VEC];                                                                  \
    const float sum_sq = load_row<T, VEC>(v, x, hidden, x_stride);                        \
    normalize_quantize_store<T, VEC>(q, scale, weight, v, sum_sq, hidden, eps);           \
  }                                                                                       \
  extern "C" __global__ void __launch_bounds__(1024, 1)                                   \
      add_rms_norm_fp8_##SUFFIX##_vec##VEC(Fp8* q, float* scale, T* summed, const T* x,   \
                                           const T* residual, const T* weight, int hidden, \
                                           long long x_stride, long long residual_stride,  \
                                           float eps) {                                    \
    inflightd::wait_for_previous_kernel();                                                 \
    float v[ITEMS][VEC];                                                                  \
    const float sum_sq = load_add_row<T, VEC>(v, summed, x, residual, hidden, x_stride,   \
                                              residual_stride);                           \
    normalize_quantize_store<T, VEC>(q, scale, weight, v, sum_sq, hidden, eps);           \
  }

INFLIGHTD_RMS_NORM(__nv_bfloat16, bf16, 8)
INFLIGHTD_RMS_NORM(__nv_bfloat16, bf16, 1)
INFLIGHTD_RMS_NORM(__half, fp16, 8)
INFLIGHTD_RMS_NORM(__half, fp16, 1)
