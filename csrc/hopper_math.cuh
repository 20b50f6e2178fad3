// The per-tile math of the Hopper prefill attention kernel (paged_attention_hopper.cu): its
// MMAs issued on wgmma, the online softmax in registers, the output's store, and a consumer
// thread's state over the tiles (RowsState) with one tile's steps in order (attend_tile).
#pragma once

#include "attention_common.cuh"
#include "common.cuh"
#include "hopper_tiles.cuh"
#include "wgmma.cuh"

namespace inflightd {

// Issues S (this warpgroup's 64 rows x 64 keys: rows key0 .. key0 + 63 of the K tile) =
// Q K^T, committed as one group; q_rows: the warpgroup's first Q row.
template <typename T>
__device__ __forceinline__ void issue_scores(float (&s)[32], unsigned q_rows, unsigned k_tile,
                                             int key0) {
  const unsigned k_rows = k_tile + key0 * kSwizzleRowBytes;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kHopperD / 16; ++kk) {
    // the k16 step's 32 bytes of every row, in the half holding its columns
    const unsigned step = (kk >> 2) * kHalfBytes + (kk & 3) * 32;
    wgmma_ss_n64<T>(s, swizzled_desc(q_rows + step), swizzled_desc(k_rows + step), kk > 0);
  }
  wgmma_commit();
}

// P (64 x 64, rounded to T) from the probabilities in S's accumulator layout: the A of
// k16 step kk is S's 8-column blocks 2kk and 2kk + 1 (wgmma.cuh).
template <typename T>
__device__ __forceinline__ void probabilities_to_a(unsigned (&p)[4][4], const float (&s)[32]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) p[kk][i] = pack2<T>(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1]);
  }
}

// Issues O (64 rows x 128 columns as two halves of 64) += P V over keys key0 .. key0 + 63
// of the V tile, committed as one group.
template <typename T>
__device__ __forceinline__ void issue_values(float (&o)[2][32], const unsigned (&p)[4][4],
                                             unsigned v_tile, int key0) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // 16 keys are 16 rows, two 8-row groups, of the half's tile
      const unsigned rows = v_tile + half * kHalfBytes + (key0 + 16 * kk) * kSwizzleRowBytes;
      wgmma_rs_n64_tb<T>(o[half], p[kk], swizzled_desc(rows));
    }
  }
  wgmma_commit();
}

__device__ __forceinline__ void scale_rows(float (&o)[2][32], const float (&alpha)[2]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    o[0][i] *= alpha[(i >> 1) & 1];
    o[1][i] *= alpha[(i >> 1) & 1];
  }
}

// Online softmax over 64 keys from k0 on, in place: S becomes the probabilities, m and l the
// running max and (this lane's share of the) sum, alpha what the earlier O must be scaled by.
__device__ __forceinline__ void online_softmax(float (&s)[32], float (&m)[2], float (&l)[2],
                                               float (&alpha)[2], const int (&key_limit)[2],
                                               int k0, float scale_log2) {
  const int t = threadIdx.x & 3;
  const bool masked = k0 + 64 > min(key_limit[0], key_limit[1]);
  float tile_max[2] = {neg_inf(), neg_inf()};
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = s[4 * j + e] * scale_log2;
      if (masked && k0 + 8 * j + 2 * t + (e & 1) >= key_limit[e >> 1]) x = neg_inf();
      s[4 * j + e] = x;
      tile_max[e >> 1] = fmaxf(tile_max[e >> 1], x);
    }
  }
  float base[2];
  update_row_max(tile_max, m, base, alpha);
  float row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[4 * j + e] = exp2f(s[4 * j + e] - base[e >> 1]);
      row_sum[e >> 1] += s[4 * j + e];
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + row_sum[h];
}

// Where a CTA's output goes: the output itself, or with several key partitions its
// partition's float32 partials (attention_common.cuh).
template <typename T> struct HopperOut {
  T* out;
  float* part_acc;
  float* part_max;
  float* part_sum;
  unsigned* counters;
  int num_partitions;
  long long rows_total;  // num_tokens * num_heads: one partition's rows of the partials
};

// The two rows' outputs, normalised, or with several partitions their unnormalised sums and
// (max, sum) in the partials.
template <typename T>
__device__ __forceinline__ void store_rows(const HopperOut<T>& dst, const float (&o)[2][32],
                                           const float (&m)[2], const float (&l)[2],
                                           const long long (&out_row)[2]) {
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float total = l[h] + __shfl_xor_sync(0xffffffffu, l[h], 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    if (out_row[h] < 0) continue;
    if (dst.num_partitions == 1) {
      const float inv = 1.f / total;  // a row always sees its own key: total >= 1
      T* row = dst.out + out_row[h] * kHopperD;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          *reinterpret_cast<unsigned*>(row + half * 64 + 8 * j + 2 * t) =
              pack2<T>(o[half][4 * j + 2 * h] * inv, o[half][4 * j + 2 * h + 1] * inv);
        }
      }
    } else {
      const long long part_row = blockIdx.z * dst.rows_total + out_row[h];
      float* row = dst.part_acc + part_row * kHopperD;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          *reinterpret_cast<float2*>(row + half * 64 + 8 * j + 2 * t) =
              make_float2(o[half][4 * j + 2 * h], o[half][4 * j + 2 * h + 1]);
        }
      }
      if (t == 0) {
        dst.part_max[part_row] = m[h];
        dst.part_sum[part_row] = total;
      }
    }
  }
}

// Where a CTA's rows come from (as paged_attention.cuh's TileInfo).
struct HopperTile {
  int q_begin;      // the sequence's first token in q and out
  int rows_in_seq;  // q_len * group
  int row0;         // the tile's first row
  int context;      // keys cached before the sequence's first new token
  int group;        // query heads per kv head
};

// One consumer thread's state over the key tiles: O, the running max and sum of its two rows
// (wgmma.cuh's accumulator layout), the keys they see, and the registers of a tile's halves.
struct RowsState {
  float o[2][32];
  float s_a[32], s_b[32];
  unsigned p_a[4][4], p_b[4][4];  // P of each half, live until its P V is done
  float m[2], l[2];
  int key_limit[2];
  long long out_row[2];  // token * num_heads + head, or -1 for a row past the sequence
};

// Zeroed state for this thread's two rows of the tile, keys below kv_hi.
__device__ __forceinline__ void start_rows(RowsState& st, const HopperTile& tile, int kv_head,
                                           int kv_hi, int num_heads) {
  const int lane = threadIdx.x & 31;
  const int lane_row = (threadIdx.x >> 7) * 64 + ((threadIdx.x >> 5) & 3) * 16 + (lane >> 2);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = tile.row0 + lane_row + 8 * h;
    const int token = row / tile.group;
    const bool valid = row < tile.rows_in_seq;
    st.key_limit[h] = valid ? min(tile.context + token + 1, kv_hi) : 0;  // in the partition
    st.out_row[h] = valid ? static_cast<long long>(tile.q_begin + token) * num_heads +
                                kv_head * tile.group + (row - token * tile.group)
                          : -1;
    st.m[h] = neg_inf();
    st.l[h] = 0.f;
  }
#pragma unroll
  for (int i = 0; i < 32; ++i) st.o[0][i] = st.o[1][i] = st.s_a[i] = st.s_b[i] = 0.f;
#pragma unroll
  for (int i = 0; i < 16; ++i) st.p_a[i / 4][i % 4] = st.p_b[i / 4][i % 4] = 0u;
}

// One K/V tile (keys k0 .. k0 + 127) for this warpgroup's rows: S of both halves issued,
// `meanwhile` run while they are on the tensor cores, then each half's softmax and P V.
template <typename MmaT, typename Meanwhile>
__device__ __forceinline__ void attend_tile(RowsState& st, unsigned q_rows, unsigned k_tile,
                                            unsigned v_tile, int k0, float scale_log2,
                                            Meanwhile meanwhile) {
  issue_scores<MmaT>(st.s_a, q_rows, k_tile, 0);
  issue_scores<MmaT>(st.s_b, q_rows, k_tile, 64);
  meanwhile();
  wgmma_wait<1>();  // S_a done; S_b may run on
  fence_registers(st.s_a);
  float alpha[2];
  online_softmax(st.s_a, st.m, st.l, alpha, st.key_limit, k0, scale_log2);
  scale_rows(st.o, alpha);
  probabilities_to_a<MmaT>(st.p_a, st.s_a);
  issue_values<MmaT>(st.o, st.p_a, v_tile, 0);
  wgmma_wait<1>();  // S_b done; P_a V may run on
  fence_registers(st.s_b);
  online_softmax(st.s_b, st.m, st.l, alpha, st.key_limit, k0 + 64, scale_log2);
  probabilities_to_a<MmaT>(st.p_b, st.s_b);
  wgmma_wait<0>();  // P_a V done: O may be scaled
  fence_registers(st.o[0]);
  fence_registers(st.o[1]);
  fence_registers(st.p_a);
  scale_rows(st.o, alpha);
  issue_values<MmaT>(st.o, st.p_b, v_tile, 64);
  // Waited for here, not at the next tile's S: ptxas cannot follow a wgmma group across the
  // loop's back edge and would serialize every wgmma (its warning C7514).
  wgmma_wait<0>();
  fence_registers(st.o[0]);
  fence_registers(st.o[1]);
  fence_registers(st.p_b);
}

}  // namespace inflightd
