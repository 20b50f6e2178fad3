// The batch-1 decode stack's attention (decode_stack.cu): one query token against its
// sequence's paged cache, split over (head, split) tasks, one task a CTA, and the merge of
// the splits that the next GEMV's CTAs each do for themselves.
//
// A task covers positions [begin, end) of one query head. Its keys go to key groups: a key
// group is D / 8 lanes, each holding 8 of the head's dims (one 16-byte chunk), so a warp
// reads 32 / (D / 8) keys at once; group g takes positions begin + g, begin + g + kGroups, ...
//
//   # D = 64:  lanes 0-7 key 0 | lanes 8-15 key 1 | lanes 16-23 key 2 | lanes 24-31 key 3
//   # D = 128: lanes 0-15 key 0 | lanes 16-31 key 1
//
// Each group keeps its own softmax state (max, sum, output); the CTA merges its groups and
// writes partials[task] = {max, sum, output[D]} (output unnormalised). The step's own key
// and value are read from the qkv buffer, never the cache: the task that writes them into
// the cache (split 0 of the first query head of each KV head) may not have yet.
#pragma once

#include "common.cuh"
#include "decode_stack.cuh"

namespace inflightd {

// Eight 16-bit elements already in a register (common.cuh's Vec8) as floats.
template <typename T>
__device__ __forceinline__ void load_floats8(float (&out)[8], uint4 raw) {
  const Vec8<T> v{raw};
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = v.get(i);
}

// The step's key and value into the cache at its slot.
template <typename T, int D>
__device__ __forceinline__ void write_new_kv(const StackLayer<T>& layer, const StackShape& s,
                                             const StackIo<T>& io, int kv_head) {
  const long long slot = io.slot_mapping[0];
  if (threadIdx.x >= D || slot < 0 || slot >= s.num_slots) return;
  const long long at = (slot * s.num_kv_heads + kv_head) * D + threadIdx.x;
  const T* k = io.qkv + s.q_size() + kv_head * D + threadIdx.x;
  layer.k_cache[at] = load_l2_raw(k);
  layer.v_cache[at] = load_l2_raw(k + s.kv_size());
}

template <typename T, int D>
__device__ void attend_task(const StackLayer<T>& layer, const StackShape& s,
                            const StackIo<T>& io, const StackSmem& sm) {
  constexpr int kLanes = D / 8;          // lanes per key
  constexpr int kKeys = 32 / kLanes;     // keys per warp at once
  constexpr int kGroups = kStackWarps * kKeys;
  const int task = blockIdx.x;
  const int head = task / s.num_splits;
  const int split = task % s.num_splits;
  const int kv_head = head / (s.num_heads / s.num_kv_heads);
  const int seq_len = io.seq_lens[0];
  const int per_split = (seq_len + s.num_splits - 1) / s.num_splits;
  const int begin = min(seq_len, split * per_split);
  const int end = min(seq_len, begin + per_split);
  const int lane = threadIdx.x & 31;
  const int sub = lane % kLanes;  // which 8 dims
  const int group = (threadIdx.x >> 5) * kKeys + lane / kLanes;

  float q[8];
  load_floats8<T>(q, __ldcg(reinterpret_cast<const uint4*>(io.qkv + head * D) + sub));
#pragma unroll
  for (int i = 0; i < 8; ++i) q[i] *= s.scale;
  const T* new_k = io.qkv + s.q_size() + kv_head * D + sub * 8;
  const long long token_stride = static_cast<long long>(s.num_kv_heads) * D;
  const T* k_head = layer.k_cache + kv_head * D + sub * 8;
  const T* v_head = layer.v_cache + kv_head * D + sub * 8;

  float m = neg_inf(), l = 0.f, acc[8] = {};
  // The loop runs on the warp's first key, the same for every lane: the score's shuffles
  // below need the whole warp, so a lane whose own key is past the end goes round masked.
  const int warp_first = begin + (threadIdx.x >> 5) * kKeys;
  for (int first = warp_first; first < end; first += 2 * kGroups) {
    uint4 k_raw[2], v_raw[2];
    bool valid[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {  // both keys' loads before either is used
      const int p = first + lane / kLanes + u * kGroups;
      valid[u] = p < end;
      k_raw[u] = v_raw[u] = make_uint4(0, 0, 0, 0);
      if (!valid[u]) continue;
      if (p == seq_len - 1) {
        k_raw[u] = __ldcg(reinterpret_cast<const uint4*>(new_k));
        v_raw[u] = __ldcg(reinterpret_cast<const uint4*>(new_k + s.kv_size()));
      } else {
        const long long slot = static_cast<long long>(io.block_table[p / s.block_size]) *
                                   s.block_size + p % s.block_size;
        k_raw[u] = __ldcg(reinterpret_cast<const uint4*>(k_head + slot * token_stride));
        v_raw[u] = __ldcg(reinterpret_cast<const uint4*>(v_head + slot * token_stride));
      }
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      float k[8], v[8];
      load_floats8<T>(k, k_raw[u]);
      load_floats8<T>(v, v_raw[u]);
      float score = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) score = fmaf(q[i], k[i], score);
#pragma unroll
      for (int offset = 1; offset < kLanes; offset <<= 1)  // every lane: the shuffles are the warp's
        score += __shfl_xor_sync(0xffffffffu, score, offset);
      if (!valid[u]) continue;
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
  float* group_l = group_m + kGroups;
  float* group_out = group_l + kGroups;
  if (sub == 0) {
    group_m[group] = m;
    group_l[group] = l;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) group_out[group * D + sub * 8 + i] = acc[i];
  stack_consumers_sync();
  if (threadIdx.x < D) {
    float top = neg_inf();
    for (int g = 0; g < kGroups; ++g) top = fmaxf(top, group_m[g]);
    float sum = 0.f, out = 0.f;
    if (top != neg_inf()) {
      for (int g = 0; g < kGroups; ++g) {
        const float weight = __expf(group_m[g] - top);  // 0 for a group that saw no key
        sum += group_l[g] * weight;
        out += group_out[g * D + threadIdx.x] * weight;
      }
    }
    float* partial = io.partials + static_cast<long long>(task) * (D + 2);
    partial[2 + threadIdx.x] = out;
    if (threadIdx.x == 0) {
      partial[0] = top;
      partial[1] = sum;
    }
  }
  if (split == 0 && head % (s.num_heads / s.num_kv_heads) == 0) {
    write_new_kv<T, D>(layer, s, io, kv_head);
  }
}

// Every CTA, before the output projection: x = the splits merged, head by head, rounded to T
// (as the attention kernels store their output).
template <typename T, int D>
__device__ void merge_attention(T* x, const StackShape& s, const StackIo<T>& io,
                                const StackSmem& sm) {
  const int splits = s.num_splits;
  float* weights = sm.merge_weights();
  for (int head = threadIdx.x; head < s.num_heads; head += kStackConsumers) {
    const float* first = io.partials + static_cast<long long>(head) * splits * (D + 2);
    float top = neg_inf();
    for (int i = 0; i < splits; ++i) top = fmaxf(top, __ldcg(first + i * (D + 2)));
    float sum = 0.f;
    for (int i = 0; i < splits; ++i) {
      const float m = __ldcg(first + i * (D + 2));
      const float w = m == neg_inf() ? 0.f : __expf(m - top);
      weights[head * splits + i] = w;
      sum += w * __ldcg(first + i * (D + 2) + 1);
    }
    for (int i = 0; i < splits; ++i) weights[head * splits + i] /= sum;  // sum > 0: the step's own key
  }
  stack_consumers_sync();
  // kMergeElements elements a thread at once, every split's partial of each loaded before
  // any is summed: one L2 round trip for all of them
  constexpr int kMergeElements = 4;
  for (int first = threadIdx.x; first < s.q_size(); first += kMergeElements * kStackConsumers) {
    float parts[kMergeElements][kStackMaxSplits];
#pragma unroll
    for (int u = 0; u < kMergeElements; ++u) {
      const int e = first + u * kStackConsumers;
      const float* column = io.partials + static_cast<long long>(e / D) * splits * (D + 2) + 2 + e % D;
#pragma unroll
      for (int i = 0; i < kStackMaxSplits; ++i) {
        parts[u][i] = e < s.q_size() && i < splits ? __ldcg(column + i * (D + 2)) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kMergeElements; ++u) {
      const int e = first + u * kStackConsumers;
      if (e >= s.q_size()) break;
      float out = 0.f;
#pragma unroll
      for (int i = 0; i < kStackMaxSplits; ++i) {
        if (i < splits) out += weights[(e / D) * splits + i] * parts[u][i];
      }
      x[e] = from_float<T>(out);
    }
  }
}

}  // namespace inflightd
