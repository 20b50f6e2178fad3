// Decode tiles with the keys in the MMA's M dimension (the "t" kernels, paged_attention.cuh):
//
//   S^T [16 keys x 8 rows]  = K [16 keys x D] Q^T [D x 8 rows]       (A = K, B = Q^T)
//   O^T [D x 8 rows]       += V^T [D x 16 keys] P^T [16 keys x 8 rows]
//
// A decode row tile of the usual layout puts 16 rows in M, of which a GQA group of 4 fills a
// quarter. Here a tile holds at most 8 rows (n = 8): half the MMAs, and the accumulator is
// [D / 16][4] floats instead of [D / 8][4], so more warps fit on an SM.
//
// Lane (g = lane / 4, t = lane % 4) holds S^T[key g and g + 8][rows 2t, 2t + 1]: a row's
// keys are spread over the 8 lanes of one t, so row maxima and sums are reduced across
// lanes 4, 8 and 16 apart. P^T's C fragment is turned into the B fragment of P V by an
// in-register 8x8 transpose (movmatrix). O^T[dim][row]: acc[dc][e] is row 2t + (e & 1) of a
// dim given by dim_of (16-bit caches: dc * 16 + g + 8 (e >> 1); e4m3: dc * 16 + 2g + (e >> 1),
// attention_fragments.cuh's even/odd split).
#pragma once

#include "attention_fragments.cuh"
#include "attention_scores.cuh"
#include "common.cuh"
#include "keys_in_m.cuh"
#include "mma.cuh"

namespace inflightd {

constexpr int kTransposedRows = 8;

template <typename T, typename KvT> struct TransposedFragments;

// B fragments of Q^T: row g of the tile, register 0 dims kc * 16 + lo and the next one,
// register 1 dims kc * 16 + hi and the next, each passed through `convert`.
template <int D, int PAD, typename T, typename Convert>
__device__ __forceinline__ void load_qt_fragments(unsigned (&qb)[D / 16][2], const T* q_tile,
                                                  int lo, int hi, Convert convert) {
  const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) {
    qb[kc][0] = convert(load_u32(q_tile + g * PAD + kc * 16 + lo));
    qb[kc][1] = convert(load_u32(q_tile + g * PAD + kc * 16 + hi));
  }
}

template <typename T> struct TransposedFragments<T, T> {
  using MmaT = T;

  // dims 2t (b0) and 2t + 8 (b1) of each 16-dim chunk
  template <int D, int PAD>
  static __device__ __forceinline__ void load_q(unsigned (&qb)[D / 16][2], const T* q_tile) {
    const int t = threadIdx.x & 3;
    load_qt_fragments<D, PAD>(qb, q_tile, 2 * t, 2 * t + 8, [](unsigned x) { return x; });
  }

  // s += K[key0 .. key0 + 15] Q^T. ldmatrix tiles (keys 0-7, dims 0-7), (keys 8-15, dims
  // 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims 8-15) are A's a0..a3.
  template <int D>
  static __device__ __forceinline__ void scores(float (&s)[4], const KvTile<T, D>& kv,
                                                const unsigned (&qb)[D / 16][2], int key0) {
    const int lane = threadIdx.x & 31;
    const int key = key0 + ((lane >> 3) & 1) * 8 + (lane & 7);
    const int dim = ((lane >> 3) >> 1) * 8;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      unsigned a[4];
      ldmatrix_x4(a, &kv[0][key][kc * 16 + dim]);
      mma_16816<T>(s, a, qb[kc][0], qb[kc][1]);
    }
  }

  // acc += V^T P^T over keys key0 .. key0 + 15. Transposed ldmatrix tiles (keys 0-7, dims
  // 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims 0-7), (keys 8-15, dims 8-15) are V^T's
  // a0..a3.
  template <int D>
  static __device__ __forceinline__ void accumulate(float (&acc)[D / 16][4],
                                                    const KvTile<T, D>& kv, unsigned pb0,
                                                    unsigned pb1, int key0) {
    const int lane = threadIdx.x & 31;
    const int key = key0 + ((lane >> 3) >> 1) * 8 + (lane & 7);
    const int dim = ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int dc = 0; dc < D / 16; ++dc) {
      unsigned a[4];
      ldmatrix_x4_trans(a, &kv[1][key][dc * 16 + dim]);
      mma_16816<T>(acc[dc], a, pb0, pb1);
    }
  }

  static __device__ __forceinline__ int dim_of(int dc, int e) {
    return dc * 16 + ((threadIdx.x & 31) >> 2) + 8 * (e >> 1);
  }
};

template <typename T> struct TransposedFragments<T, Fp8> {
  using MmaT = __half;

  // in the e4m3 K fragments' dim order: dims 4t, 4t+1 (b0), 4t+2, 4t+3 (b1)
  template <int D, int PAD>
  static __device__ __forceinline__ void load_q(unsigned (&qb)[D / 16][2], const T* q_tile) {
    const int t = threadIdx.x & 3;
    load_qt_fragments<D, PAD>(qb, q_tile, 4 * t, 4 * t + 2,
                              [](unsigned x) { return to_half2<T>(x); });
  }

  // ldmatrix tiles of bytes: (keys 0-7, chunk kc), (keys 8-15, kc), (keys 0-7, kc + 1),
  // (keys 8-15, kc + 1); a lane gets dims 4t .. 4t+3 of key g (or g + 8).
  template <int D>
  static __device__ __forceinline__ void scores(float (&s)[4], const KvTile<Fp8, D>& kv,
                                                const unsigned (&qb)[D / 16][2], int key0) {
    const int lane = threadIdx.x & 31;
    const int key = key0 + ((lane >> 3) & 1) * 8 + (lane & 7);
    const int dim = ((lane >> 3) >> 1) * 16;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc += 2) {
      const int chunks = e4m3_chunks_at<D>(kc);
      unsigned r[4];
      ldmatrix_e4m3_chunks<false>(r, &kv[0][key][kc * 16 + dim], chunks);
#pragma unroll
      for (int c = 0; c < chunks; ++c) {
        unsigned a[4];
        e4m3x4_to_half2x2(r[2 * c], a[0], a[2]);
        e4m3x4_to_half2x2(r[2 * c + 1], a[1], a[3]);
        mma_16816<__half>(s, a, qb[kc + c][0], qb[kc + c][1]);
      }
    }
  }

  // Transposed ldmatrix tiles of bytes: (keys 0-7, chunk dc), (keys 8-15, dc), (keys 0-7,
  // dc + 1), (keys 8-15, dc + 1); a lane gets keys 2t, 2t+1 of dims 2g, 2g+1. M row g of V^T
  // is dim 2g ("even"), row g + 8 dim 2g + 1 ("odd").
  template <int D>
  static __device__ __forceinline__ void accumulate(float (&acc)[D / 16][4],
                                                    const KvTile<Fp8, D>& kv, unsigned pb0,
                                                    unsigned pb1, int key0) {
    const int lane = threadIdx.x & 31;
    const int key = key0 + ((lane >> 3) & 1) * 8 + (lane & 7);
    const int dim = ((lane >> 3) >> 1) * 16;
#pragma unroll
    for (int dc = 0; dc < D / 16; dc += 2) {
      const int chunks = e4m3_chunks_at<D>(dc);
      unsigned r[4];
      ldmatrix_e4m3_chunks<true>(r, &kv[1][key][dc * 16 + dim], chunks);
#pragma unroll
      for (int c = 0; c < chunks; ++c) {
        // (keys 2t, 2t+1, 2t+8, 2t+9) of dim 2g, then of dim 2g + 1
        const unsigned even = __byte_perm(r[2 * c], r[2 * c + 1], 0x6420);
        const unsigned odd = __byte_perm(r[2 * c], r[2 * c + 1], 0x7531);
        unsigned a[4];
        e4m3x4_to_half2x2(even, a[0], a[2]);
        e4m3x4_to_half2x2(odd, a[1], a[3]);
        mma_16816<__half>(acc[dc + c], a, pb0, pb1);
      }
    }
  }

  static __device__ __forceinline__ int dim_of(int dc, int e) {
    return dc * 16 + 2 * ((threadIdx.x & 31) >> 2) + (e >> 1);
  }
};

// The transposed counterpart of attend_tile (paged_attention.cuh): keys [key_base, key_base +
// KEYS) of the tile for the warp's rows 2t and 2t + 1 (rows[0], rows[1]).
template <typename T, typename KvT, int D, int KEYS, typename Score>
__device__ __forceinline__ void attend_tile_transposed(
    const KvTile<KvT, D>& kv, const unsigned (&qb)[D / 16][2], float (&acc)[D / 16][4],
    float (&m)[2], float (&l)[2], const RowInfo (&rows)[2], int key_base, int k0, int kv_hi,
    const Score& score) {
  static_assert(KEYS % 16 == 0, "whole 16-key tiles");
  using Frag = TransposedFragments<T, KvT>;
  constexpr int TILES = KEYS / 16;
  const int g = (threadIdx.x & 31) >> 2;
  float s[TILES][4];
#pragma unroll
  for (int mt = 0; mt < TILES; ++mt) {
    s[mt][0] = s[mt][1] = s[mt][2] = s[mt][3] = 0.f;
    Frag::template scores<D>(s[mt], kv, qb, key_base + mt * 16);
  }
  float tile_max[2] = {neg_inf(), neg_inf()};
  // s[mt][e] is key k0 + key_base + g + (mt * 16 + 8 * (e >> 1)) of row e & 1
  const typename Score::Tile score_tile = score.tile(k0 + key_base + g, rows);
#pragma unroll
  for (int mt = 0; mt < TILES; ++mt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = k0 + key_base + mt * 16 + g + 8 * (e >> 1);
      const bool visible = key < kv_hi && key < rows[e & 1].key_limit;
      s[mt][e] = visible ? score(s[mt][e], score_tile, e & 1, mt * 16 + 8 * (e >> 1))
                         : neg_inf();
      tile_max[e & 1] = fmaxf(tile_max[e & 1], s[mt][e]);
    }
  }
  float base[2];
  float alpha[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float m_new = fmaxf(m[h], reduce_over_keys_max(tile_max[h]));
    base[h] = m_new == neg_inf() ? 0.f : m_new;  // a row with nothing visible yet stays at 0
    alpha[h] = exp2f(m[h] - base[h]);
    m[h] = m_new;
  }
  float row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int mt = 0; mt < TILES; ++mt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[mt][e] = exp2f(s[mt][e] - base[e & 1]);
      row_sum[e & 1] += s[mt][e];
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + row_sum[h];
#pragma unroll
  for (int dc = 0; dc < D / 16; ++dc) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dc][e] *= alpha[e & 1];
  }
#pragma unroll
  for (int mt = 0; mt < TILES; ++mt) {
    using MmaT = typename Frag::MmaT;
    // P^T[key g][rows 2t, 2t+1] and [key g + 8][...], transposed into P V's B fragment.
    const unsigned pb0 = movmatrix_trans(pack2<MmaT>(s[mt][0], s[mt][1]));
    const unsigned pb1 = movmatrix_trans(pack2<MmaT>(s[mt][2], s[mt][3]));
    Frag::template accumulate<D>(acc, kv, pb0, pb1, key_base + mt * 16);
  }
}

// The transposed counterpart of store_rows: rows 2t and 2t + 1, each dim from its lane.
template <typename T, typename KvT, int D>
__device__ __forceinline__ void store_rows_transposed(
    T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_max,
    float* __restrict__ part_sum, const float (&acc)[D / 16][4], const float (&m)[2],
    float (&l)[2], const RowInfo (&rows)[2], int num_partitions, long long rows_total) {
  using Frag = TransposedFragments<T, KvT>;
#pragma unroll
  for (int h = 0; h < 2; ++h) l[h] = reduce_over_keys_sum(l[h]);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (!rows[h].valid) continue;
    if (num_partitions == 1) {
      const float inv = 1.f / l[h];  // key 0 is visible to every row, so l >= 1
      T* dst = out + rows[h].out_row * D;
#pragma unroll
      for (int dc = 0; dc < D / 16; ++dc) {
        dst[Frag::dim_of(dc, h)] = from_float<T>(acc[dc][h] * inv);
        dst[Frag::dim_of(dc, h + 2)] = from_float<T>(acc[dc][h + 2] * inv);
      }
    } else {
      const long long part_row = blockIdx.z * rows_total + rows[h].out_row;
      float* dst = part_acc + part_row * D;
#pragma unroll
      for (int dc = 0; dc < D / 16; ++dc) {
        dst[Frag::dim_of(dc, h)] = acc[dc][h];
        dst[Frag::dim_of(dc, h + 2)] = acc[dc][h + 2];
      }
      if ((threadIdx.x & 31) < 4) {
        part_max[part_row] = m[h];
        part_sum[part_row] = l[h];
      }
    }
  }
}

}  // namespace inflightd
