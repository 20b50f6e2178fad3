// Integer weights (IntWeight: W4A16, W8A16) into a dense T [N, K] matrix, bit for bit
// IntWeight.dequantize(T), for prefill and large batches: the dense copy goes through the
// usual cuBLAS GEMM (server/engine/ops/cuda_int.py), whose cost at hundreds of tokens
// dwarfs this pass (read 0.5 or 1 byte a weight, write 2).
//
// One thread per 16-byte chunk of qweight (32 int4 or 16 int8 values of one row, one group),
// consecutive threads on consecutive chunks, so reads are coalesced and each thread writes
// 64 (int4) or 32 (int8) contiguous bytes:
//
//   # chunk c (of N * K / values):  row = c / chunks_per_row,
//   #                               columns [(c % chunks_per_row) * values, + values)
//
// int4 words come out of int4_word_to_pairs as (c0,c4) (c1,c5) (c2,c6) (c3,c7); byte_perm
// puts them back in column order before the store.
#include "common.cuh"
#include "int_weights.cuh"

using namespace inflightd;

namespace {

template <typename T, int BITS>
__device__ __forceinline__ void dequantize_impl(T* __restrict__ out,
                                                const unsigned char* __restrict__ q,
                                                const unsigned short* __restrict__ scales,
                                                const unsigned short* __restrict__ zeros,
                                                int k, int group_size, long long num_chunks) {
  constexpr int kValues = 128 / BITS;
  const long long chunk = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (chunk >= num_chunks) return;
  const int chunks_per_row = k / kValues;
  const long long row = chunk / chunks_per_row;
  const int column = static_cast<int>(chunk - row * chunks_per_row) * kValues;
  const long long group = row * (k / group_size) + column / group_size;
  const uint4 raw = load_streaming(q + chunk * 16);
  const ChunkScale cs = chunk_scale<T>(scales[group], BITS == 4 ? zeros[group] : 0);
  uint4* dst = reinterpret_cast<uint4*>(out + row * k + column);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (BITS == 4) {
      unsigned p[4];
      int4_word_to_pairs<T>(word_of(raw, i), cs, p);
      dst[i] = make_uint4(__byte_perm(p[0], p[1], 0x5410u), __byte_perm(p[2], p[3], 0x5410u),
                          __byte_perm(p[0], p[1], 0x7632u), __byte_perm(p[2], p[3], 0x7632u));
    } else if (i % 2 == 0) {
      unsigned lo[2], hi[2];
      int8_word_to_pairs<T>(word_of(raw, i), cs.scale2, lo);
      int8_word_to_pairs<T>(word_of(raw, i + 1), cs.scale2, hi);
      dst[i / 2] = make_uint4(lo[0], lo[1], hi[0], hi[1]);
    }
  }
}

}  // namespace

#define INFLIGHTD_DEQUANTIZE(T, SUFFIX, BITS)                                                  \
  extern "C" __global__ void __launch_bounds__(256) dequantize_w##BITS##_##SUFFIX(             \
      T* out, const unsigned char* q, const unsigned short* scales,                            \
      const unsigned short* zeros, int k, int group_size, long long num_chunks) {              \
    inflightd::wait_for_previous_kernel();                                                     \
    dequantize_impl<T, BITS>(out, q, scales, zeros, k, group_size, num_chunks);                \
  }

INFLIGHTD_DEQUANTIZE(__nv_bfloat16, bf16, 4)
INFLIGHTD_DEQUANTIZE(__nv_bfloat16, bf16, 8)
INFLIGHTD_DEQUANTIZE(__half, fp16, 4)
INFLIGHTD_DEQUANTIZE(__half, fp16, 8)
