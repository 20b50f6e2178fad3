// Greedy sampling's argmax over rows of float32 logits: out[r] = the index torch.argmax(dim=-1)
// picks in row r, one CTA a row.
//
// torch's own reduction of one 49,152-wide row took 13.4 us of a batch-1 step on an H100
// (bench/batch1_kernels.py), more than the row's 196 KB need from L2. Here every thread walks
// its 16-byte chunks of the row, all loads of a pass issued before any compare, and the CTA
// reduces the threads' bests:
//
//   # row:    | chunk 0 | chunk 1 | ... | chunk T-1 | chunk T | ...   (4 floats each)
//   # thread:      0         1              T-1         0
//
// Order (torch's): a NaN above every number, then the larger value, then the lower index, so
// equal maxima give the first. A row that does not start on a 16-byte boundary, or whose width
// is no multiple of 4, has its first and last few floats read one by one.
#include "common.cuh"

using namespace inflightd;

constexpr int kArgmaxThreads = 1024;
constexpr int kArgmaxUnroll = 4;

namespace {

struct Best {
  float value;
  int index;
};

__device__ __forceinline__ bool beats(Best a, Best b) {
  const bool a_nan = a.value != a.value, b_nan = b.value != b.value;
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a.value != b.value) return a.value > b.value;
  return a.index < b.index;
}

__device__ __forceinline__ void offer(Best& best, float value, int index) {
  const Best other{value, index};
  if (beats(other, best)) best = other;
}

__device__ __forceinline__ Best warp_best(Best best) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Best other{__shfl_xor_sync(0xffffffffu, best.value, offset),
                     __shfl_xor_sync(0xffffffffu, best.index, offset)};
    if (beats(other, best)) best = other;
  }
  return best;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kArgmaxThreads)
    argmax_f32(long long* out, const float* logits, int vocab, long long row_stride) {
  wait_for_previous_kernel();
  const float* row = logits + blockIdx.x * row_stride;
  // loses to any entry: a -inf at index i < INT_MAX beats it on the index
  Best best{-__int_as_float(0x7f800000), 0x7fffffff};
  // | head: to a 16-byte boundary | 16-byte chunks | tail: vocab % 4 or fewer |
  //                                ^ head           ^ head + 4 * num_chunks
  const int to_boundary = static_cast<int>((16 - reinterpret_cast<size_t>(row) % 16) % 16) / 4;
  const int head = min(vocab, to_boundary);
  const int num_chunks = (vocab - head) / 4;
  for (int i = threadIdx.x; i < head; i += kArgmaxThreads) offer(best, row[i], i);
  const float4* chunks = reinterpret_cast<const float4*>(row + head);
  for (int base = threadIdx.x; base < num_chunks; base += kArgmaxUnroll * kArgmaxThreads) {
    float4 v[kArgmaxUnroll];
#pragma unroll
    for (int u = 0; u < kArgmaxUnroll; ++u) {
      const int chunk = base + u * kArgmaxThreads;
      v[u] = chunk < num_chunks ? chunks[chunk] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < kArgmaxUnroll; ++u) {
      const int chunk = base + u * kArgmaxThreads;
      if (chunk < num_chunks) {
        const int index = head + 4 * chunk;
        offer(best, v[u].x, index);
        offer(best, v[u].y, index + 1);
        offer(best, v[u].z, index + 2);
        offer(best, v[u].w, index + 3);
      }
    }
  }
  for (int i = head + 4 * num_chunks + threadIdx.x; i < vocab; i += kArgmaxThreads) {
    offer(best, row[i], i);
  }
  __shared__ float values[kArgmaxThreads / 32];
  __shared__ int indices[kArgmaxThreads / 32];
  best = warp_best(best);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    values[warp] = best.value;
    indices[warp] = best.index;
  }
  __syncthreads();
  if (warp == 0) {
    best = lane < kArgmaxThreads / 32 ? Best{values[lane], indices[lane]}
                                      : Best{-__int_as_float(0x7f800000), 0x7fffffff};
    best = warp_best(best);
    if (lane == 0) out[blockIdx.x] = best.index;
  }
}
