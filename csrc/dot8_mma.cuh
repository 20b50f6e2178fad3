// Dot products of 16-byte chunks on the tensor cores: a warp's sum over its lanes of
// dot8(w, x), in two m16n8k16 MMAs a chunk instead of eight FMAs and their conversions.
//
// Each lane puts its own weights in A and its own inputs in B at matching places
// (g = lane / 4; w's and x's 32-bit words hold elements 0-1, 2-3, 4-5, 6-7):
//   first MMA:   A = w (a0 .. a3 = w.x .. w.w)   B column g: b0 = x word 0, b1 = x word 2
//   second MMA:  A = w                           B column g: b0 = x word 1, b1 = x word 3
// so the first's C[g][g] sums w0 x0 + w2 x2 over group g's four lanes (A row g holds a0
// and a2), and the second's C[g+8][g] sums w1 x1 + w3 x3 (A row g+8 holds a1 and a3): the
// two diagonals are the warp's dot product. The other outputs are wasted, which costs
// nothing here: a batch-1 GEMV leaves the tensor cores nearly idle.
// x comes in the order (word 0, 2, 1, 3), so that one 16-byte load gives both B pairs
// (x_chunk_order below).
#pragma once

#include "common.cuh"
#include "mma.cuh"

namespace inflightd {

// Where element e of a row of x sits in x's shared-memory order: words 1 and 2 of each
// 16-byte chunk swapped.
__device__ __forceinline__ int x_chunk_slot(int e) {
  const int word = (e >> 1) & 3;
  return (e & ~7) | ((((word & 1) << 1) | (word >> 1)) << 1) | (e & 1);
}
__device__ __forceinline__ uint4 x_chunk_order(uint4 v) { return {v.x, v.z, v.y, v.w}; }

// Two accumulators, so that a chunk's two MMAs do not wait on each other.
struct MmaDot {
  float c0[4] = {0.f, 0.f, 0.f, 0.f};
  float c1[4] = {0.f, 0.f, 0.f, 0.f};

  // Every lane of the warp must call it (mma.sync); a lane with nothing to add passes zeros.
  // x in x_chunk_order.
  template <typename T> __device__ __forceinline__ void add(uint4 w, uint4 x) {
    const unsigned a[4] = {w.x, w.y, w.z, w.w};
    mma_16816<T>(c0, a, x.x, x.y);
    mma_16816<T>(c1, a, x.z, x.w);
  }

  // This lane's share of the warp's sum: C[g][g] and C[g+8][g] sit in lane 4g + g/2, in
  // column 2t + (g & 1) of the fragments' first and second row pairs.
  __device__ __forceinline__ float lane_share() const {
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    if ((lane & 3) != (g >> 1)) return 0.f;
    return (g & 1) ? c0[1] + c1[3] : c0[0] + c1[2];
  }
};

}  // namespace inflightd
