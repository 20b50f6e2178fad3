// Warp-level pieces of the decode tiles that put the keys in the MMA's M dimension
// (attention_transposed.cuh, paged_decode_bulk.cu): lane (g = lane / 4, t = lane % 4) holds
// keys g and g + 8 of query rows 2t and 2t + 1, so a row's values are reduced over the 8
// lanes of one t, and P^T's C fragment becomes P V's B fragment by an 8x8 transpose.
#pragma once

namespace inflightd {

// An 8x8 matrix of 16-bit pairs, transposed across the warp: lane (g, t) gives M[g][2t..2t+1]
// and gets M[2t][g], M[2t + 1][g].
__device__ __forceinline__ unsigned movmatrix_trans(unsigned x) {
  unsigned y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// A row's value over the 8 lanes that hold it (one t, every g).
__device__ __forceinline__ float reduce_over_keys_max(float x) {
#pragma unroll
  for (int offset = 4; offset < 32; offset <<= 1) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

__device__ __forceinline__ float reduce_over_keys_sum(float x) {
#pragma unroll
  for (int offset = 4; offset < 32; offset <<= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

}  // namespace inflightd
