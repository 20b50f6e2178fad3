// SiLU-and-mul for the gated MLP: out[t, i] = silu(x[t, i]) * x[t, d + i] for x [T, 2d].
//
// As the torch reference: silu of the gate is rounded to T before the product, which is
// rounded once more. grid = (T, column blocks); each thread handles VEC columns per step.
//
// silu_and_mul_fp8 (--quantization fp8) ends in the down projection's FP8 input instead: one
// CTA per row keeps the row's products (rounded to T, as stored above) in registers, takes
// their absmax and writes them quantized as quantize.cu does, bit for bit the two kernels'
// result without the T row between them.
#include "common.cuh"
#include "fp8.cuh"

using namespace inflightd;

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

template <typename T, int VEC>
__device__ __forceinline__ void silu_and_mul_impl(T* __restrict__ out, const T* __restrict__ x,
                                                  int d, long long x_stride) {
  const T* gate = x + blockIdx.x * x_stride;
  const T* up = gate + d;
  T* dst = out + blockIdx.x * static_cast<long long>(d);
  const int step = gridDim.y * blockDim.x * VEC;
  for (int i = (blockIdx.y * blockDim.x + threadIdx.x) * VEC; i < d; i += step) {
    if constexpr (VEC == 8) {
      Vec8<T> g;
      Vec8<T> u;
      Vec8<T> o;
      g.load(gate + i);
      u.load(up + i);
#pragma unroll
      for (int j = 0; j < 8; ++j) o.set(j, round_to<T>(silu(g.get(j))) * u.get(j));
      o.store(dst + i);
    } else {
      dst[i] = from_float<T>(round_to<T>(silu(to_float(gate[i]))) * to_float(up[i]));
    }
  }
}

#define INFLIGHTD_SILU_AND_MUL(T, SUFFIX, VEC)                                                   \
  extern "C" __global__ void __launch_bounds__(256)                                              \
      silu_and_mul_##SUFFIX##_vec##VEC(T* out, const T* x, int d, long long x_stride) {         \
    inflightd::wait_for_previous_kernel();                                                      \
    silu_and_mul_impl<T, VEC>(out, x, d, x_stride);                                              \
  }

constexpr int kSiluFp8Items = 4;  // 8-column chunks per thread: rows up to 32,768 wide

template <typename T>
__device__ __forceinline__ void silu_and_mul_fp8_impl(Fp8* __restrict__ q,
                                                      float* __restrict__ scale,
                                                      const T* __restrict__ x, int d,
                                                      long long x_stride) {
  __shared__ float scratch[32];
  const T* gate = x + blockIdx.x * x_stride;
  const T* up = gate + d;
  float v[kSiluFp8Items][8];
  float absmax = 0.f;
#pragma unroll
  for (int it = 0; it < kSiluFp8Items; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * 8;
    if (i < d) {
      Vec8<T> g;
      Vec8<T> u;
      g.load(gate + i);
      u.load(up + i);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        v[it][j] = round_to<T>(round_to<T>(silu(g.get(j))) * u.get(j));
        absmax = fmaxf(absmax, fabsf(v[it][j]));
      }
    }
  }
  const float s = store_row_scale(absmax, scratch, scale);
  Fp8* dst = q + blockIdx.x * static_cast<long long>(d);
#pragma unroll
  for (int it = 0; it < kSiluFp8Items; ++it) {
    const int i = (threadIdx.x + it * blockDim.x) * 8;
    if (i < d) *reinterpret_cast<uint2*>(dst + i) = quantize8(v[it], s);
  }
}

#define INFLIGHTD_SILU_AND_MUL_FP8(T, SUFFIX)                                                   \
  extern "C" __global__ void __launch_bounds__(1024) silu_and_mul_fp8_##SUFFIX(                 \
      Fp8* q, float* scale, const T* x, int d, long long x_stride) {                            \
    inflightd::wait_for_previous_kernel();                                                      \
    silu_and_mul_fp8_impl<T>(q, scale, x, d, x_stride);                                         \
  }

INFLIGHTD_SILU_AND_MUL_FP8(__nv_bfloat16, bf16)
INFLIGHTD_SILU_AND_MUL_FP8(__half, fp16)
INFLIGHTD_SILU_AND_MUL(__nv_bfloat16, bf16, 8)
INFLIGHTD_SILU_AND_MUL(__nv_bfloat16, bf16, 1)
INFLIGHTD_SILU_AND_MUL(__half, fp16, 8)
INFLIGHTD_SILU_AND_MUL(__half, fp16, 1)
