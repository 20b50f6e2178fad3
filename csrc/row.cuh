// One row of a [T, hidden] tensor per CTA: each thread loads and stores its VEC-wide
// chunks as float32 (VEC 8: one 16-byte access; VEC 1: a scalar, for unaligned rows).
#pragma once

#include "common.cuh"

namespace inflightd {

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

}  // namespace inflightd
