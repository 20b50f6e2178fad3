// Eight 16-bit weights times eight 16-bit inputs (one 16-byte chunk of each), summed in
// float32: the inner step of the 16-bit GEMVs (gemv.cu, decode_stack.cu).
#pragma once

#include "common.cuh"

namespace inflightd {

__device__ __forceinline__ float2 pair_to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float2 pair_to_float2(__half2 v) { return __half22float2(v); }

template <typename T>
__device__ __forceinline__ float dot8(uint4 w_raw, uint4 x_raw) {
  using P = typename Pair<T>::type;
  const P* w = reinterpret_cast<const P*>(&w_raw);
  const P* x = reinterpret_cast<const P*>(&x_raw);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = pair_to_float2(w[i]);
    const float2 xf = pair_to_float2(x[i]);
    sum = fmaf(wf.x, xf.x, sum);
    sum = fmaf(wf.y, xf.y, sum);
  }
  return sum;
}

}  // namespace inflightd
