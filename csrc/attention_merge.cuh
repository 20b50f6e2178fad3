// Flash-decoding merge, run inside paged_attention.cu by the last CTA of a (row tile, kv
// head) to finish its partitions.
//
// For one output row (token, head) and its sequence's live partitions p (max m_p in the
// exp2 domain, sum l_p, unnormalised o_p):
//     M = max_p m_p,  w_p = 2^(m_p - M),  out = sum_p (w_p / sum_q w_q l_q) o_p
// A partition that saw no visible key has m_p = -inf, so w_p = 0; the partition holding the
// row's own key, which the row always sees, makes M finite. part_* are laid out
// [num_partitions, num_tokens * num_heads (, D)] and were written by other CTAs: they are
// read through L2 only (ld.cg, cp.async.cg), after the arrival counter and a fence.
//
// Latency, not bandwidth, is the cost: a warp merges up to kRows rows at a time. Pass 1:
// lane p loads partitions p and p + 32 of every row at once, warp reductions give each
// row's weights, kept in shared memory. Pass 2: the rows' partial outputs are copied into
// shared memory with cp.async, as many (partition, row) vectors per round as fit, then
// summed from there; the copies hold no registers, so a round has up to 64 vectors in
// flight. Per warp, the CTA's K/V buffers (free by now) are cut as
//
//   # | weights [kRows][kMaxPartitions] | staged vectors [SLOTS][D] |
//
// and slot pp * rows + j holds row j of the round's partition pp.
#pragma once

#include "attention_common.cuh"
#include "common.cuh"
#include "mma.cuh"

namespace inflightd {

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

// Counts this CTA in on its (row tile, kv head) counter once its partials are written;
// true in the last of the num_partitions CTAs to arrive. atomicInc wraps the count back to
// 0 with that last arrival, so the next launch, or the next replay of a captured graph,
// finds every counter at 0 again. Every thread of the CTA must call it. (No __shared__
// flag: 4 more bytes would cost the 64-dim 1-warp kernel a resident CTA per SM.)
__device__ __forceinline__ bool last_to_arrive(unsigned* counter, int num_partitions) {
  __threadfence();  // this thread's partials are visible device-wide before the count moves
  __syncthreads();  // ... and so are every other thread's
  int arrived_last = 0;
  if (threadIdx.x == 0) {
    const unsigned last = static_cast<unsigned>(num_partitions - 1);
    arrived_last = atomicInc(counter, last) == last;
  }
  if (!__syncthreads_or(arrived_last)) return false;
  __threadfence();  // the other CTAs' partials are read after their arrivals
  return true;
}

template <int WARPS>
struct MergeShape {
  static constexpr int kRows = WARPS == 1 ? 8 : 4;  // a decode tile is one group of heads
};

// Pass 1: weights[j][p] = w_p / sum_q w_q l_q of each of the warp's `rows` rows.
template <int R>
__device__ __forceinline__ void merge_weights(float* __restrict__ weights,
                                              const float* __restrict__ part_max,
                                              const float* __restrict__ part_sum,
                                              const long long (&out_row)[R], int rows,
                                              long long rows_total, int live) {
  const int lane = threadIdx.x & 31;
  float m[R][2];
  float l[R][2];
#pragma unroll
  for (int j = 0; j < R; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int p = lane + 32 * h;
      const bool read = j < rows && p < live;  // never read a partition nobody wrote
      m[j][h] = read ? __ldcg(part_max + p * rows_total + out_row[j]) : neg_inf();
      l[j][h] = read ? __ldcg(part_sum + p * rows_total + out_row[j]) : 0.f;
    }
  }
#pragma unroll
  for (int j = 0; j < R; ++j) {
    if (j >= rows) break;
    const float top = warp_max(fmaxf(m[j][0], m[j][1]));
    const float w0 = exp2f(m[j][0] - top);
    const float w1 = exp2f(m[j][1] - top);
    const float inv = 1.f / warp_sum(w0 * l[j][0] + w1 * l[j][1]);
    weights[j * kMaxPartitions + lane] = w0 * inv;
    weights[j * kMaxPartitions + lane + 32] = w1 * inv;
  }
}

// Pass 2, one round: partitions p0 .. p0 + parts - 1 of the `rows` rows into `stage`.
// A row is D / 4 16-byte pieces: where 32 is a multiple of that (D = 64, 128) one warp-wide
// copy covers 32 / (D / 4) whole rows; otherwise (D = 80: 20 pieces, 96: 24, 256: 64) the
// lanes walk each row's pieces in strides of 32.
template <int D, int R>
__device__ __forceinline__ void stage_partials(float* __restrict__ stage,
                                               const float* __restrict__ part_acc,
                                               const long long (&out_row)[R], int rows,
                                               long long rows_total, int p0, int parts) {
  constexpr int PIECES = D / 4;                // 16-byte pieces of a row
  const int lane = threadIdx.x & 31;
  if constexpr (32 % PIECES == 0) {
    constexpr int ROWS_PER_COPY = 32 / PIECES;  // rows one warp-wide copy covers
    static_assert(R % ROWS_PER_COPY == 0, "whole copies");
    const int piece = lane % PIECES;
    const int lane_row = lane / PIECES;
    for (int pp = 0; pp < parts; ++pp) {
      const float* src = part_acc + (p0 + pp) * rows_total * D + piece * 4;
#pragma unroll
      for (int jj = 0; jj < R; jj += ROWS_PER_COPY) {
        const int j = jj + lane_row;
        // Static indices only: a lane-dependent index would put out_row in local memory.
        const long long row = ROWS_PER_COPY == 1 || lane_row == 0 ? out_row[jj]
                                                                  : out_row[jj + ROWS_PER_COPY - 1];
        if (j < rows) cp_async_16(stage + (pp * rows + j) * D + piece * 4, src + row * D);
      }
    }
  } else {
    for (int pp = 0; pp < parts; ++pp) {
      const float* src = part_acc + (p0 + pp) * rows_total * D;
#pragma unroll
      for (int j = 0; j < R; ++j) {
        if (j >= rows) break;
        for (int piece = lane; piece < PIECES; piece += 32) {
          cp_async_16(stage + (pp * rows + j) * D + piece * 4, src + out_row[j] * D + piece * 4);
        }
      }
    }
  }
  cp_async_commit();
}

// Merges rows warp, warp + WARPS, ... of the tile (valid_rows of them exist) into out.
// smem: the CTA's SMEM_FLOATS floats of shared memory, free for the merge to use.
template <typename T, int D, int WARPS, int SMEM_FLOATS>
__device__ __forceinline__ void merge_partitions(
    T* __restrict__ out, const float* __restrict__ part_acc, const float* __restrict__ part_max,
    const float* __restrict__ part_sum, float* __restrict__ smem, int row0, int valid_rows,
    int group, int q_begin, int kv_head, int num_heads, long long rows_total, int live) {
  constexpr int R = MergeShape<WARPS>::kRows;
  // each lane sums PER_LANE adjacent dims of a row: 2 at D = 64, 4 at 80 (lanes 20-31 idle),
  // 96 (lanes 24-31 idle) and 128, 8 at 256
  constexpr int PER_LANE = D <= 64 ? D / 32 : (D < 128 ? 4 : D / 32);
  constexpr int ACTIVE_LANES = D / PER_LANE;
  static_assert(D % 16 == 0 && D % PER_LANE == 0 && PER_LANE % 2 == 0 && ACTIVE_LANES <= 32,
                "head_dim a multiple of 16 up to 256");
  constexpr int REGION = SMEM_FLOATS / WARPS / 4 * 4;  // floats per warp, 16-byte multiple
  constexpr int SLOTS = (REGION - R * kMaxPartitions) / D;
  static_assert(SLOTS >= R, "a round holds at least one partition of every row");
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  float* weights = smem + warp * REGION;
  float* stage = weights + R * kMaxPartitions;
  const int my_rows = valid_rows > warp ? (valid_rows - warp + WARPS - 1) / WARPS : 0;

  for (int k0 = 0; k0 < my_rows; k0 += R) {
    const int rows = min(R, my_rows - k0);
    long long out_row[R];
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int r = row0 + warp + WARPS * (k0 + min(j, rows - 1));
      const int token = r / group;
      out_row[j] = static_cast<long long>(q_begin + token) * num_heads + kv_head * group +
                   (r - token * group);
    }
    __syncwarp();  // the previous rows' weights and vectors have been read
    merge_weights<R>(weights, part_max, part_sum, out_row, rows, rows_total, live);
    float acc[R][PER_LANE];
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
      for (int e = 0; e < PER_LANE; ++e) acc[j][e] = 0.f;
    }
    const int parts_per_round = SLOTS / rows;
    for (int p0 = 0; p0 < live; p0 += parts_per_round) {
      const int parts = min(parts_per_round, live - p0);
      __syncwarp();  // weights written; the previous round's vectors have been read
      stage_partials<D, R>(stage, part_acc, out_row, rows, rows_total, p0, parts);
      cp_async_wait<0>();
      __syncwarp();  // every lane's copies have landed
      for (int pp = 0; pp < parts; ++pp) {
#pragma unroll
        for (int j = 0; j < R; ++j) {
          if (j >= rows) break;
          if (lane >= ACTIVE_LANES) break;
          const float w = weights[j * kMaxPartitions + p0 + pp];
          const float* v = stage + (pp * rows + j) * D + lane * PER_LANE;
          if constexpr (PER_LANE % 4 == 0) {
#pragma unroll
            for (int e = 0; e < PER_LANE; e += 4) {
              const float4 o = *reinterpret_cast<const float4*>(v + e);
              acc[j][e] += w * o.x;
              acc[j][e + 1] += w * o.y;
              acc[j][e + 2] += w * o.z;
              acc[j][e + 3] += w * o.w;
            }
          } else {
            const float2 o = *reinterpret_cast<const float2*>(v);
            acc[j][0] += w * o.x;
            acc[j][1] += w * o.y;
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < R; ++j) {
      if (j >= rows || lane >= ACTIVE_LANES) break;
      T* dst = out + out_row[j] * D + lane * PER_LANE;
#pragma unroll
      for (int e = 0; e < PER_LANE; e += 2) {
        *reinterpret_cast<unsigned*>(dst + e) = pack2<T>(acc[j][e], acc[j][e + 1]);
      }
    }
  }
}

}  // namespace inflightd
