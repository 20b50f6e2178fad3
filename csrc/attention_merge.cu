// Merges the key partitions of paged_attention.cu into the final output.
//
// For one output row (token, head) and its sequence's live partitions p (max m_p in the
// exp2 domain, sum l_p, unnormalised o_p):
//     M = max_p m_p,  w_p = 2^(m_p - M),  out = sum_p w_p o_p / sum_p w_p l_p
// A partition that saw no visible key has m_p = -inf, so w_p = 0.
// part_* are laid out [num_partitions, num_tokens * num_heads (, D)]. One warp per row.
#include "attention_common.cuh"
#include "common.cuh"

using namespace inflightd;

constexpr int kMergeWarps = 4;

template <typename T, int D>
__device__ __forceinline__ void attention_merge_impl(
    T* __restrict__ out, const float* __restrict__ part_acc, const float* __restrict__ part_max,
    const float* __restrict__ part_sum, const int* __restrict__ query_start_loc,
    const int* __restrict__ seq_lens, int num_seqs, int num_tokens, int num_heads,
    int num_partitions) {
  constexpr int PER_LANE = D / 32;
  static_assert(PER_LANE == 2 || PER_LANE == 4, "head_dim 64 or 128");
  const long long rows_total = static_cast<long long>(num_tokens) * num_heads;
  const long long row = static_cast<long long>(blockIdx.x) * kMergeWarps + (threadIdx.x >> 5);
  if (row >= rows_total) return;
  const int lane = threadIdx.x & 31;
  const int token = static_cast<int>(row / num_heads);
  const int seq = last_not_above(num_seqs, token, [&](int i) { return query_start_loc[i]; });
  const int seq_len = seq_lens[seq];
  const int live = num_live_partitions(seq_len, partition_len(seq_len, num_partitions));

  float top = neg_inf();
  for (int p = 0; p < live; ++p) top = fmaxf(top, part_max[p * rows_total + row]);
  float denominator = 0.f;
  float numerator[PER_LANE];
#pragma unroll
  for (int j = 0; j < PER_LANE; ++j) numerator[j] = 0.f;
  for (int p = 0; p < live; ++p) {
    const long long part_row = p * rows_total + row;
    const float w = exp2f(part_max[part_row] - top);
    denominator += w * part_sum[part_row];
    const float* src = part_acc + part_row * D + lane * PER_LANE;
    if constexpr (PER_LANE == 4) {
      const float4 o = *reinterpret_cast<const float4*>(src);
      numerator[0] += w * o.x;
      numerator[1] += w * o.y;
      numerator[2] += w * o.z;
      numerator[3] += w * o.w;
    } else {
      const float2 o = *reinterpret_cast<const float2*>(src);
      numerator[0] += w * o.x;
      numerator[1] += w * o.y;
    }
  }
  const float inv = 1.f / denominator;
  T* dst = out + row * D + lane * PER_LANE;
#pragma unroll
  for (int j = 0; j < PER_LANE; j += 2) {
    *reinterpret_cast<unsigned*>(dst + j) = pack2<T>(numerator[j] * inv, numerator[j + 1] * inv);
  }
}

#define INFLIGHTD_ATTENTION_MERGE(T, SUFFIX, D)                                                  \
  extern "C" __global__ void __launch_bounds__(32 * kMergeWarps) attention_merge_##SUFFIX##_d##D( \
      T* out, const float* part_acc, const float* part_max, const float* part_sum,              \
      const int* query_start_loc, const int* seq_lens, int num_seqs, int num_tokens,            \
      int num_heads, int num_partitions) {                                                       \
    attention_merge_impl<T, D>(out, part_acc, part_max, part_sum, query_start_loc, seq_lens,     \
                               num_seqs, num_tokens, num_heads, num_partitions);                 \
  }

INFLIGHTD_ATTENTION_MERGE(__nv_bfloat16, bf16, 64)
INFLIGHTD_ATTENTION_MERGE(__nv_bfloat16, bf16, 128)
INFLIGHTD_ATTENTION_MERGE(__half, fp16, 64)
INFLIGHTD_ATTENTION_MERGE(__half, fp16, 128)
