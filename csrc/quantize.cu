// Row-wise FP8 (e4m3) quantization of the activations in front of an FP8 GEMM, as
// server.engine.quantization.quantize_rows computes it in torch:
//
//   scale[r] = max(max_i |x[r, i]|, kMinAbsMax) * float32(1 / 448)      (float32)
//   q[r, i]  = e4m3(x[r, i] / scale[r])       (nearest, ties to even; |x / scale| <= 448)
//
// One CTA per row. The row is read twice (absmax, then the conversion); the second read
// comes from L2. Rows are 16-byte aligned and K a multiple of 16 (the GEMM needs it too).
#include "common.cuh"
#include "fp8.cuh"

using namespace inflightd;

namespace {

template <typename T>
__device__ __forceinline__ void quantize_rows_impl(unsigned char* __restrict__ q,
                                                   float* __restrict__ scale,
                                                   const T* __restrict__ x, int k,
                                                   long long x_stride) {
  quantize_rows_by_absmax(q, scale, x, k, x_stride,
                          [](float absmax) { return fmaxf(absmax, kMinAbsMax) * kInvFp8Max; },
                          [](const float (&v)[8], float s) { return quantize8(v, s); });
}

}  // namespace

#define INFLIGHTD_QUANTIZE_FP8_ROWS(T, SUFFIX)                                                   \
  extern "C" __global__ void __launch_bounds__(256) quantize_fp8_rows_##SUFFIX(                  \
      unsigned char* q, float* scale, const T* x, int k, long long x_stride) {                   \
    inflightd::wait_for_previous_kernel();                                                       \
    quantize_rows_impl<T>(q, scale, x, k, x_stride);                                             \
  }

INFLIGHTD_QUANTIZE_FP8_ROWS(__nv_bfloat16, bf16)
INFLIGHTD_QUANTIZE_FP8_ROWS(__half, fp16)
