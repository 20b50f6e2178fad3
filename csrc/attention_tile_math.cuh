// What attend_partition (paged_attention.cuh) runs per tile, for each tile layout: where a
// lane's two rows sit, its Q fragments and accumulator, one K/V tile's math and the store.
#pragma once

#include "attention_common.cuh"
#include "attention_fragments.cuh"
#include "attention_row_tile.cuh"
#include "attention_transposed.cuh"

namespace inflightd {

// The row-tile math attend_partition runs: the usual layout (16 rows a warp in the MMA's M),
// or the transposed decode tile (keys in M, up to 8 rows: attention_transposed.cuh).
template <typename T, typename KvT, int D, int KEYS, bool TRANSPOSED> struct TileMath;

// The first type where B, else the second.
template <bool B, typename IfTrue, typename IfFalse> struct Pick { using type = IfTrue; };
template <typename IfTrue, typename IfFalse> struct Pick<false, IfTrue, IfFalse> {
  using type = IfFalse;
};

template <typename T, typename KvT, int D, int KEYS> struct TileMath<T, KvT, D, KEYS, false> {
  static constexpr int kRowsPerWarp = 16;
  // At head_dim 256, Q's fragments stay in shared memory (SmemQFragments): with 64 more
  // registers next to the 128-float accumulator, ptxas spilled.
  static constexpr bool kQInSmem = D >= 256;
  using QFragments =
      typename Pick<kQInSmem, SmemQFragments<T, KvT, D>, unsigned[D / 16][4]>::type;
  using Accumulator = float[D / 8][4];
  // The tile row of this lane's row h (h = 0, 1), relative to its warp's first row.
  static __device__ __forceinline__ int lane_row(int h) {
    return ((threadIdx.x & 31) >> 2) + 8 * h;
  }
  template <int PAD>
  static __device__ __forceinline__ void load_q(QFragments& q, const T* warp_rows) {
    static_assert(PAD == QRow<D>::kPad, "SmemQFragments reads rows QRow<D>::kPad apart");
    if constexpr (kQInSmem) {
      q.warp_rows = warp_rows;
    } else {
      Fragments<T, KvT>::template load_q<D, PAD>(q, warp_rows);
    }
  }
  template <typename Score>
  static __device__ __forceinline__ void attend(const KvTile<KvT, D>& kv, const QFragments& q,
                                                Accumulator& acc, float (&m)[2], float (&l)[2],
                                                const RowInfo (&rows)[2], int key_base, int k0,
                                                int kv_hi, const Score& score) {
    attend_tile<T, KvT, D, KEYS>(kv, q, acc, m, l, rows, key_base, k0, kv_hi, score);
  }
  static __device__ __forceinline__ void store(T* out, float* part_acc, float* part_max,
                                               float* part_sum, const Accumulator& acc,
                                               const float (&m)[2], float (&l)[2],
                                               const RowInfo (&rows)[2], int num_partitions,
                                               long long rows_total) {
    store_rows<T, KvT, D>(out, part_acc, part_max, part_sum, acc, m, l, rows, num_partitions,
                          rows_total);
  }
};

template <typename T, typename KvT, int D, int KEYS> struct TileMath<T, KvT, D, KEYS, true> {
  static constexpr int kRowsPerWarp = kTransposedRows;
  static constexpr bool kQInSmem = false;  // half the accumulator: Q fits in registers
  using QFragments = unsigned[D / 16][2];
  using Accumulator = float[D / 16][4];
  static __device__ __forceinline__ int lane_row(int h) { return 2 * (threadIdx.x & 3) + h; }
  template <int PAD>
  static __device__ __forceinline__ void load_q(QFragments& q, const T* warp_rows) {
    TransposedFragments<T, KvT>::template load_q<D, PAD>(q, warp_rows);
  }
  template <typename Score>
  static __device__ __forceinline__ void attend(const KvTile<KvT, D>& kv, const QFragments& q,
                                                Accumulator& acc, float (&m)[2], float (&l)[2],
                                                const RowInfo (&rows)[2], int key_base, int k0,
                                                int kv_hi, const Score& score) {
    attend_tile_transposed<T, KvT, D, KEYS>(kv, q, acc, m, l, rows, key_base, k0, kv_hi,
                                            score);
  }
  static __device__ __forceinline__ void store(T* out, float* part_acc, float* part_max,
                                               float* part_sum, const Accumulator& acc,
                                               const float (&m)[2], float (&l)[2],
                                               const RowInfo (&rows)[2], int num_partitions,
                                               long long rows_total) {
    store_rows_transposed<T, KvT, D>(out, part_acc, part_max, part_sum, acc, m, l, rows,
                                     num_partitions, rows_total);
  }
};

}  // namespace inflightd
