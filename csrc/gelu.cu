// GELU for the LayerNorm families' ungated MLP (GPT-2, Starcoder, Falcon) and GeGLU for
// Gemma's gated one: out[t, i] = gelu(x[t, i]), or gelu(x[t, i]) * x[t, d + i] for x [T, 2d].
//
// As torch's F.gelu on 16-bit inputs: computed in float32 and rounded to T; the gated form
// rounds gelu(gate) to T before the product (rounded once more), as the torch reference
// does. "erf" is the exact GELU, x / 2 * (1 + erf(x / sqrt 2)); "tanh" the approximation
// x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))). Built without fast math: erff and
// tanhf as torch computes them. grid = (T, column blocks); each thread takes VEC columns.
#include "common.cuh"
#include "gelu.cuh"

using namespace inflightd;

// GATED: x holds gate | up (row width 2d), else x is the row itself (width d).
template <typename T, int VEC, bool GATED, float (*Gelu)(float)>
__device__ __forceinline__ void gelu_impl(T* __restrict__ out, const T* __restrict__ x, int d,
                                          long long x_stride) {
  const T* gate = x + blockIdx.x * x_stride;
  const T* up = gate + d;
  T* dst = out + blockIdx.x * static_cast<long long>(d);
  const int step = gridDim.y * blockDim.x * VEC;
  for (int i = (blockIdx.y * blockDim.x + threadIdx.x) * VEC; i < d; i += step) {
    if constexpr (VEC == 8) {
      Vec8<T> g;
      Vec8<T> o;
      g.load(gate + i);
      if constexpr (GATED) {
        Vec8<T> u;
        u.load(up + i);
#pragma unroll
        for (int j = 0; j < 8; ++j) o.set(j, round_to<T>(Gelu(g.get(j))) * u.get(j));
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) o.set(j, Gelu(g.get(j)));
      }
      o.store(dst + i);
    } else if constexpr (GATED) {
      dst[i] = from_float<T>(round_to<T>(Gelu(to_float(gate[i]))) * to_float(up[i]));
    } else {
      dst[i] = from_float<T>(Gelu(to_float(gate[i])));
    }
  }
}

#define INFLIGHTD_GELU(T, SUFFIX, KIND, VEC)                                                  \
  extern "C" __global__ void __launch_bounds__(256)                                           \
      gelu_##KIND##_##SUFFIX##_vec##VEC(T* out, const T* x, int d, long long x_stride) {     \
    inflightd::wait_for_previous_kernel();                                                   \
    gelu_impl<T, VEC, false, gelu_##KIND>(out, x, d, x_stride);                               \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(256) gelu_##KIND##_and_mul_##SUFFIX##_vec##VEC( \
      T* out, const T* x, int d, long long x_stride) {                                        \
    inflightd::wait_for_previous_kernel();                                                    \
    gelu_impl<T, VEC, true, gelu_##KIND>(out, x, d, x_stride);                                \
  }

INFLIGHTD_GELU(__nv_bfloat16, bf16, erf, 8)
INFLIGHTD_GELU(__nv_bfloat16, bf16, erf, 1)
INFLIGHTD_GELU(__nv_bfloat16, bf16, tanh, 8)
INFLIGHTD_GELU(__nv_bfloat16, bf16, tanh, 1)
INFLIGHTD_GELU(__half, fp16, erf, 8)
INFLIGHTD_GELU(__half, fp16, erf, 1)
INFLIGHTD_GELU(__half, fp16, tanh, 8)
INFLIGHTD_GELU(__half, fp16, tanh, 1)
