// The batch-1 decode stack's attention (decode_stack.cu): one query token against its
// sequence's paged cache, split over (head, split) tasks, one task a CTA, and the merge of
// each head's splits as the o phase loads them.
//
// A task covers positions [begin, end) of one query head. Its keys go to key groups: a key
// group is D / 8 lanes, each holding 8 of the head's dims (one 16-byte chunk), so a warp
// reads 32 / (D / 8) keys at once; group g takes positions begin + g, begin + g + kGroups, ...
//
//   # D = 64:  lanes 0-7 key 0 | lanes 8-15 key 1 | lanes 16-23 key 2 | lanes 24-31 key 3
//   # D = 128: lanes 0-15 key 0 | lanes 16-31 key 1
//
// Each group keeps its own softmax state (max, sum, output); the CTA merges its groups and
// writes partials[task] = {output[D] (unnormalised), max, sum, 2 floats of padding}, a
// stride of D + 4 floats so that every task's output starts 16-byte aligned. The step's own key
// and value are read from the qkv buffer (the qkv phase writes them into the cache too).
#pragma once

#include "common.cuh"
#include "decode_stack.cuh"
#include "dot8_mma.cuh"

namespace inflightd {

__host__ __device__ constexpr int partial_stride(int d) { return d + 4; }

// Eight 16-bit elements already in a register (common.cuh's Vec8) as floats.
template <typename T>
__device__ __forceinline__ void load_floats8(float (&out)[8], uint4 raw) {
  const Vec8<T> v{raw};
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = v.get(i);
}

// A task's keys: positions [begin, end) of one head. Known before the wait for the qkv
// phase, as are the cache's old keys and values: the sequence's length, block table and
// cache are the step's inputs, not this kernel's (the step's own key and value are).
struct AttendTask {
  int head, split, kv_head, seq_len, begin, end;
};

struct KeyRound {
  uint4 k[2], v[2];
  bool valid[2];
};

template <int D> struct KeyLayout {
  static constexpr int kLanes = D / 8;          // lanes per key
  static constexpr int kKeys = 32 / kLanes;     // keys per warp at once
  static constexpr int kGroups = kStackWarps * kKeys;
};

// Where position p's key starts in the layer's cache, for this lane's 8 dims (elements; the
// value's is the same).
template <typename T, int D>
__device__ __forceinline__ long long cache_offset(const StackShape& s, const StackIo<T>& io,
                                                  int kv_head, int p) {
  const long long slot = static_cast<long long>(io.block_table[p / s.block_size]) *
                             s.block_size + p % s.block_size;
  return (slot * s.num_kv_heads + kv_head) * D + ((threadIdx.x & 31) % (D / 8)) * 8;
}

// A round: each lane's two keys (first + its key in the warp + u * kGroups), both loaded
// before either is used; the step's own from qkv (its task writes it into the cache).
template <typename T, int D>
__device__ __forceinline__ KeyRound load_key_round(const StackLayer<T>& layer,
                                                   const StackShape& s, const StackIo<T>& io,
                                                   const AttendTask& t, int first,
                                                   const T* new_k) {
  using L = KeyLayout<D>;
  const int lane = threadIdx.x & 31;
  KeyRound r;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int p = first + lane / L::kLanes + u * L::kGroups;
    r.valid[u] = p < t.end;
    r.k[u] = r.v[u] = make_uint4(0, 0, 0, 0);
    if (!r.valid[u]) continue;
    if (p == t.seq_len - 1) {
      r.k[u] = __ldcg(reinterpret_cast<const uint4*>(new_k));
      r.v[u] = __ldcg(reinterpret_cast<const uint4*>(new_k + s.kv_size()));
    } else {
      const long long at = cache_offset<T, D>(s, io, t.kv_head, p);
      r.k[u] = __ldcg(reinterpret_cast<const uint4*>(layer.k_cache + at));
      r.v[u] = __ldcg(reinterpret_cast<const uint4*>(layer.v_cache + at));
    }
  }
  return r;
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

template <typename T, int D>
__device__ __forceinline__ const T* new_key(const StackShape& s, const StackIo<T>& io,
                                            int kv_head) {
  return io.qkv + s.q_size() + kv_head * D + ((threadIdx.x & 31) % KeyLayout<D>::kLanes) * 8;
}

// This CTA's task, and its first round of old keys and values asked of L2, before the wait
// (held in registers instead, they cost spills). The loop runs on the warp's first key.
template <typename T, int D>
__device__ __forceinline__ AttendTask prefetch_task(const StackLayer<T>& layer, const StackShape& s,
                                    const StackIo<T>& io) {
  AttendTask t;
  t.head = blockIdx.x / s.num_splits;
  t.split = blockIdx.x % s.num_splits;
  t.kv_head = t.head / (s.num_heads / s.num_kv_heads);
  t.seq_len = io.seq_lens[0];
  const int per_split = (t.seq_len + s.num_splits - 1) / s.num_splits;
  t.begin = min(t.seq_len, t.split * per_split);
  t.end = min(t.seq_len, t.begin + per_split);
  using L = KeyLayout<D>;
  const int warp_first = t.begin + (threadIdx.x >> 5) * L::kKeys;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int p = warp_first + (threadIdx.x & 31) / L::kLanes + u * L::kGroups;
    if (p < t.end && p != t.seq_len - 1) {
      const long long at = cache_offset<T, D>(s, io, t.kv_head, p);
      prefetch_l2(layer.k_cache + at);
      prefetch_l2(layer.v_cache + at);
    }
  }
  return t;
}

// Chunk c (8 dims of one head) of the heads' splits merged, rounded to T as the attention
// kernels store their output: each split's partial weighed by exp(its max - the head's). The o
// phase's CTAs merge the chunks of x they load, so no split waits to merge its head's.
template <typename T, int D>
__device__ __forceinline__ uint4 merged_chunk(const StackShape& s, const StackIo<T>& io, int c) {
  const int head = c * 8 / D, dim = c * 8 % D;
  const float* task = io.partials + static_cast<long long>(head) * s.num_splits * partial_stride(D);
  float4 part[kStackMaxSplits][2];
  float2 stats[kStackMaxSplits];  // (max, sum); -inf past num_splits: weight 0
#pragma unroll
  for (int i = 0; i < kStackMaxSplits; ++i) {
    part[i][0] = part[i][1] = make_float4(0.f, 0.f, 0.f, 0.f);
    stats[i] = make_float2(neg_inf(), 0.f);
    if (i < s.num_splits) {
      const float* partial = task + i * partial_stride(D);
      part[i][0] = __ldcg(reinterpret_cast<const float4*>(partial + dim));
      part[i][1] = __ldcg(reinterpret_cast<const float4*>(partial + dim + 4));
      stats[i] = __ldcg(reinterpret_cast<const float2*>(partial + D));
    }
  }
  float top = neg_inf();
#pragma unroll
  for (int i = 0; i < kStackMaxSplits; ++i) top = fmaxf(top, stats[i].x);
  float sum = 0.f, out[8] = {};
#pragma unroll
  for (int i = 0; i < kStackMaxSplits; ++i) {
    const float weight = stats[i].x != neg_inf() ? __expf(stats[i].x - top) : 0.f;
    sum += weight * stats[i].y;
    const float* values = reinterpret_cast<const float*>(part[i]);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] += weight * values[j];
  }
  Vec8<T> merged;
#pragma unroll
  for (int j = 0; j < 8; ++j) merged.set(j, out[j] / sum);  // sum > 0: the step's own key
  return merged.raw;
}

template <typename T, int D>
__device__ __forceinline__ void attend_task(const StackLayer<T>& layer, const StackShape& s,
                            const StackIo<T>& io, const StackSmem& sm, const AttendTask& t) {
  using L = KeyLayout<D>;
  const int lane = threadIdx.x & 31;
  const int sub = lane % L::kLanes;  // which 8 dims
  const int group = (threadIdx.x >> 5) * L::kKeys + lane / L::kLanes;
  const T* new_k = new_key<T, D>(s, io, t.kv_head);
  float q[8];
  load_floats8<T>(q, __ldcg(reinterpret_cast<const uint4*>(io.qkv + t.head * D) + sub));
#pragma unroll
  for (int i = 0; i < 8; ++i) q[i] *= s.scale;

  float m = neg_inf(), l = 0.f, acc[8] = {};
  // The loop runs on the warp's first key, the same for every lane: the score's shuffles
  // below need the whole warp, so a lane whose own key is past the end goes round masked.
  const int warp_first = t.begin + (threadIdx.x >> 5) * L::kKeys;
  for (int first = warp_first; first < t.end; first += 2 * L::kGroups) {
    const KeyRound r = load_key_round<T, D>(layer, s, io, t, first, new_k);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      float k[8], v[8];
      load_floats8<T>(k, r.k[u]);
      load_floats8<T>(v, r.v[u]);
      float score = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) score = fmaf(q[i], k[i], score);
#pragma unroll
      for (int offset = 1; offset < L::kLanes; offset <<= 1)  // every lane: the warp's shuffles
        score += __shfl_xor_sync(0xffffffffu, score, offset);
      if (!r.valid[u]) continue;
      const float m_new = fmaxf(m, score);
      const float correction = __expf(m - m_new);
      const float p = __expf(score - m_new);
      l = l * correction + p;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = acc[i] * correction + p * v[i];
      m = m_new;
    }
  }

  // the CTA's key groups merged: | m[kGroups] | l[kGroups] | out[kGroups][D] |
  float* group_m = sm.scratch();
  float* group_l = group_m + L::kGroups;
  float* group_out = group_l + L::kGroups;
  if (sub == 0) {
    group_m[group] = m;
    group_l[group] = l;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) group_out[group * D + sub * 8 + i] = acc[i];
  stack_consumers_sync();
  if (threadIdx.x < D) {
    float top = neg_inf();
    for (int g = 0; g < L::kGroups; ++g) top = fmaxf(top, group_m[g]);
    float sum = 0.f, out = 0.f;
    if (top != neg_inf()) {
      for (int g = 0; g < L::kGroups; ++g) {
        const float weight = __expf(group_m[g] - top);  // 0 for a group that saw no key
        sum += group_l[g] * weight;
        out += group_out[g * D + threadIdx.x] * weight;
      }
    }
    float* partial = io.partials + static_cast<long long>(blockIdx.x) * partial_stride(D);
    partial[threadIdx.x] = out;
    if (threadIdx.x == 0) {
      partial[D] = top;
      partial[D + 1] = sum;
    }
  }
}

}  // namespace inflightd
