// The key-split decode kernels' last step (paged_attention.cu, "w1k2"): two warps that
// attended to different keys of the same rows fold their softmax states into one.
#pragma once

#include "common.cuh"

namespace inflightd {

// Key split: folds warp 1's softmax state over its key slices into warp 0's, through the
// K/V ring, which every warp has finished with (each waited for its own copies before its
// last tile; the barrier below waits for the other warp's last reads). Per row,
//     M = max(m0, m1),  w_k = 2^(m_k - M),  l = w0 l0 + w1 l1,  acc = w0 acc0 + w1 acc1
// where a warp that saw no visible key of the row (m_k = -inf, so l_k = 0, acc_k = 0) gets
// w_k = 0: with both at -inf, 2^(m_k - M) would be NaN. (l here is still this lane's share
// of the row sum, which may be 0 for a warp that saw keys, so m decides, not l.)
// True in warp 0, which now holds the CTA's result.
// ROWS_IN_PAIRS: acc[.][0..1] belong to the lane's row 0 and [2..3] to row 1 (16-row tiles);
// else element e belongs to row e & 1 (transposed tiles, attention_transposed.cuh).
template <bool ROWS_IN_PAIRS, int N>
__device__ __forceinline__ bool combine_key_slices(float* __restrict__ ring, float (&acc)[N][4],
                                                   float (&m)[2], float (&l)[2]) {
  // | acc: [N][32 lanes] float4 | (m0, m1, l0, l1): [32 lanes] float4 |
  float4* slots = reinterpret_cast<float4*>(ring);
  const int lane = threadIdx.x & 31;
  const bool second = threadIdx.x >= 32;
  __syncthreads();
  if (second) {
#pragma unroll
    for (int dt = 0; dt < N; ++dt) {
      slots[dt * 32 + lane] = make_float4(acc[dt][0], acc[dt][1], acc[dt][2], acc[dt][3]);
    }
    slots[N * 32 + lane] = make_float4(m[0], m[1], l[0], l[1]);
  }
  __syncthreads();
  if (second) return false;
  const float4 other = slots[N * 32 + lane];
  const float other_m[2] = {other.x, other.y};
  const float other_l[2] = {other.z, other.w};
  float w_mine[2];
  float w_other[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float top = fmaxf(m[h], other_m[h]);
    w_mine[h] = m[h] == neg_inf() ? 0.f : exp2f(m[h] - top);
    w_other[h] = other_m[h] == neg_inf() ? 0.f : exp2f(other_m[h] - top);
    l[h] = w_mine[h] * l[h] + w_other[h] * other_l[h];
    m[h] = top;
  }
#pragma unroll
  for (int dt = 0; dt < N; ++dt) {
    const float4 o = slots[dt * 32 + lane];
    const float other[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = ROWS_IN_PAIRS ? e >> 1 : e & 1;
      acc[dt][e] = w_mine[h] * acc[dt][e] + w_other[h] * other[e];
    }
  }
  return true;
}

}  // namespace inflightd
