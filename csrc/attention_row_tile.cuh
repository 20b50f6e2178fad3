// The usual tile layout of the paged attention kernel (paged_attention.cuh): each warp owns
// 16 query rows in the MMA's M dimension (rows g and g + 8 of a lane's fragments) and walks
// the keys of each K/V tile in the N dimension. attention_transposed.cuh is the other layout.
#pragma once

#include "attention_common.cuh"
#include "attention_fragments.cuh"
#include "attention_scores.cuh"
#include "common.cuh"
#include "mma.cuh"

namespace inflightd {

// Keys [key_base, key_base + KEYS) of one K/V tile for this warp's 16 rows: scores, online
// softmax, and O += P V. A slice with no visible key leaves a row's state as it was (a row
// that has seen nothing keeps m = -inf, l = 0, acc = 0). `score` turns raw scores into
// exp2-domain logits (attention_scores.cuh).
template <typename T, typename KvT, int D, int KEYS, typename QFragments, typename Score>
__device__ __forceinline__ void attend_tile(const KvTile<KvT, D>& kv, const QFragments& qa,
                                            float (&acc)[D / 8][4], float (&m)[2], float (&l)[2],
                                            const RowInfo (&rows)[2], int key_base, int k0,
                                            int kv_hi, const Score& score) {
  static_assert(KEYS % 16 == 0, "whole k = 16 steps of P V");
  using Frag = Fragments<T, KvT>;
  const int lane = threadIdx.x & 31;
  const int t = lane & 3;
  float s[KEYS / 8][4];
#pragma unroll
  for (int nt = 0; nt < KEYS / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
  Frag::template scores<D, KEYS>(s, kv, qa, key_base);
  float tile_max[2] = {neg_inf(), neg_inf()};
  // s[nt][e] is key k0 + key_base + 2t + (nt * 8 + (e & 1)) of row e >> 1
  const typename Score::Tile score_tile = score.tile(k0 + key_base + 2 * t, rows);
#pragma unroll
  for (int nt = 0; nt < KEYS / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = k0 + key_base + nt * 8 + 2 * t + (e & 1);
      const bool visible = key < kv_hi && key < rows[e >> 1].key_limit;
      s[nt][e] = visible ? score(s[nt][e], score_tile, e >> 1, nt * 8 + (e & 1)) : neg_inf();
      tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[nt][e]);
    }
  }
  float base[2];
  float alpha[2];
  update_row_max(tile_max, m, base, alpha);
  float row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int nt = 0; nt < KEYS / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = exp2f(s[nt][e] - base[e >> 1]);
      row_sum[e >> 1] += s[nt][e];
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + row_sum[h];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    acc[dt][0] *= alpha[0];
    acc[dt][1] *= alpha[0];
    acc[dt][2] *= alpha[1];
    acc[dt][3] *= alpha[1];
  }
  // The C fragments of two adjacent 8-key score tiles are the A fragment of a 16-key chunk.
#pragma unroll
  for (int kc = 0; kc < KEYS / 16; ++kc) {
    using MmaT = typename Frag::MmaT;
    const unsigned pa[4] = {pack2<MmaT>(s[2 * kc][0], s[2 * kc][1]),
                            pack2<MmaT>(s[2 * kc][2], s[2 * kc][3]),
                            pack2<MmaT>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                            pack2<MmaT>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
    Frag::template accumulate<D>(acc, kv, pa, key_base + kc * 16);
  }
}

template <typename T, typename KvT, int D>
__device__ __forceinline__ void store_rows(T* __restrict__ out, float* __restrict__ part_acc,
                                           float* __restrict__ part_max,
                                           float* __restrict__ part_sum,
                                           const float (&acc)[D / 8][4], const float (&m)[2],
                                           float (&l)[2], const RowInfo (&rows)[2],
                                           int num_partitions, long long rows_total) {
  using Frag = Fragments<T, KvT>;
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (!rows[h].valid) continue;
    if (num_partitions == 1) {
      // A row always sees its own key, and the largest score adds 1: l >= 1 here.
      const float inv = 1.f / l[h];
      T* dst = out + rows[h].out_row * D;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        float a, b;
        const int dim = Frag::template pair<D>(acc, i, h, a, b);
        *reinterpret_cast<unsigned*>(dst + dim) = pack2<T>(a * inv, b * inv);
      }
    } else {
      const long long part_row = blockIdx.z * rows_total + rows[h].out_row;
      float* dst = part_acc + part_row * D;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        float a, b;
        const int dim = Frag::template pair<D>(acc, i, h, a, b);
        *reinterpret_cast<float2*>(dst + dim) = make_float2(a, b);
      }
      if (t == 0) {
        part_max[part_row] = m[h];
        part_sum[part_row] = l[h];
      }
    }
  }
}

}  // namespace inflightd
