// Work split shared by the attention kernel and the merge kernel (they must agree on it).
//
// Query rows. With group = num_heads / num_kv_heads, sequence i owns q_len * group rows per
// kv head, row r being (token r / group, query head kv_head * group + r % group), so one tile
// of rows reads each K/V tile once for every query head of the group. Tiles of sequence i
// take grid indices from tile_start(i) = query_start_loc[i] * group / rows_per_tile + i:
// that is increasing in i and leaves room for ceil(q_len * group / rows_per_tile) tiles
// before tile_start(i + 1), so the grid needs num_tokens * group / rows_per_tile + num_seqs
// CTAs in x, and a CTA finds its sequence by binary search. Unused indices exit at once.
//
// Key partitions (flash-decoding). The launch picks num_partitions; each sequence is cut
// into that many pieces of its own length, rounded up to whole key tiles:
//
//   # | part 0          | part 1          | ... | last live part |   (empty parts)
//   # 0                 part_len          2 * part_len       seq_len
//
// Lengths are read on the device, so a captured CUDA graph stays right whatever the
// sequence lengths are at replay. With num_partitions == 1 the kernel writes the output
// itself. Otherwise every live part writes (max, sum, unnormalised out) to the workspace,
// and every CTA of a (row tile, kv head), live or empty, then counts itself in on that
// pair's arrival counter; the last to arrive merges the parts (attention_merge.cuh) and
// the count wraps back to 0 for the next launch.
#pragma once

#include "common.cuh"

namespace inflightd {

// One query row of a lane: whether it exists, what it may see, and where its output goes.
struct RowInfo {
  bool valid;
  int key_limit;      // keys [0, key_limit) are visible
  long long out_row;  // token * num_heads + head
};

constexpr int kBlockN = 32;        // keys per K/V tile
constexpr int kMaxPartitions = 64;  // the merge reads two partitions' (max, sum) per lane

__device__ __forceinline__ int partition_len(int seq_len, int num_partitions) {
  const int per = max(1, (seq_len + num_partitions - 1) / num_partitions);
  return (per + kBlockN - 1) / kBlockN * kBlockN;
}

__device__ __forceinline__ int num_live_partitions(int seq_len, int part_len) {
  return (seq_len + part_len - 1) / part_len;
}

__device__ __forceinline__ int tile_start(int query_start, int seq, int group, int rows_per_tile) {
  return static_cast<int>(static_cast<long long>(query_start) * group / rows_per_tile) + seq;
}

// Online softmax, a lane's two rows (each spread over the 4 lanes of a quad, as the MMAs'
// accumulators lay rows out) after one tile of keys: tile_max (this lane's max of the tile's
// logits, per row) becomes the row's, m the running max, base what the tile's logits are
// shifted by before exp2, alpha what the earlier sum and output are scaled by.
__device__ __forceinline__ void update_row_max(float (&tile_max)[2], float (&m)[2],
                                               float (&base)[2], float (&alpha)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
    tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
    const float m_new = fmaxf(m[h], tile_max[h]);
    base[h] = m_new == neg_inf() ? 0.f : m_new;  // a row with nothing visible yet stays at 0
    alpha[h] = exp2f(m[h] - base[h]);
    m[h] = m_new;
  }
}

// Largest i in [0, n) with keys[i] <= value, for keys increasing in i (keys[0] <= value).
template <typename KeyOf>
__device__ __forceinline__ int last_not_above(int n, int value, KeyOf key_of) {
  int lo = 0;
  int hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (key_of(mid) <= value) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

}  // namespace inflightd
