// The bulk decode kernel's tile math (csrc/paged_decode_bulk.cu): a consumer warp's
// fragments of one kv head's 16-key tile, read from a padded shared-memory stage. Keys in the
// MMA's M (mma.m16n8k16, the GQA group's heads in N, as
// attention_transposed.cuh): S^T = K Q^T, then O^T += V^T P^T. Lane (g = lane / 4, t =
// lane % 4). The sum over head_dim does not care which dim is which, so lane t feeds dims
// [32t, 32t + 32) of its keys g and g + 8 to its k slots, in order (k step kc: dims 32t +
// 4kc + 0..3), and Q^T's fragments follow the same order: a lane reads its K bytes as two
// (e4m3) or four (16-bit) 16-byte loads a key. P^T's C fragment becomes P V's B fragment by
// an 8x8 transpose (movmatrix): keys 2t, 2t+1, 2t+8, 2t+9 of head g. V^T's M rows are dims:
// lane g takes dims [16g, 16g + 16), M row g of m tile mt being dim 16g + 2mt and row g + 8
// dim 16g + 2mt + 1, so a lane reads each of its four keys' dims in one (e4m3) or two 16-byte
// loads, and holds 16 consecutive dims of heads 2t and 2t + 1 at the end:
//
//   # acc[mt][0] = O[head 2t][16g + 2mt]      acc[mt][1] = O[head 2t + 1][16g + 2mt]
//   # acc[mt][2] = O[head 2t][16g + 2mt + 1]  acc[mt][3] = O[head 2t + 1][16g + 2mt + 1]
//
// Keys past the sequence's length in its last tile are masked out of S, and their V rows
// (whatever the block held) zeroed, so that 0 * NaN cannot reach the sums.
#pragma once

#include "common.cuh"
#include "fp8.cuh"
#include "mma.cuh"

namespace inflightd {
namespace {  // this kernel's alone, as the rest of its file

constexpr int kBulkD = 128;

// 16 bytes of a stage; "memory": never hoisted above the wait for the stage's copies
__device__ __forceinline__ uint4 lds128(unsigned address) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(address)
               : "memory");
  return v;
}

__device__ __forceinline__ unsigned word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// 16 bytes at `at` in the V rows of keys 2t, 2t+1, 2t+8, 2t+9 (P V's k slots of the lane),
// zeros for keys past the length.
__device__ __forceinline__ void load_key_vectors(uint4 (&v)[4], unsigned at, int row_bytes,
                                                 const bool (&valid)[4]) {
  const int t = threadIdx.x & 3;
  const int keys[4] = {2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    v[k] = valid[k] ? lds128(at + keys[k] * row_bytes) : make_uint4(0u, 0u, 0u, 0u);
  }
}

template <typename T, typename KvT> struct BulkMath;

// 16-bit cache: the MMAs in T.
template <typename T> struct BulkMath<T, T> {
  using MmaT = T;
  static __device__ __forceinline__ unsigned q_pair(unsigned x) { return x; }

  // S^T for the tile: keys g, g + 8 (rows), dims 32t .. 32t + 31, four 16-byte loads a key
  static __device__ __forceinline__ void scores(float (&s)[4], unsigned k_row_g,
                                                unsigned k_row_g8,
                                                const unsigned (&qb)[kBulkD / 16][2]) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      uint4 lo[2], hi[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        lo[j] = lds128(k_row_g + 64 * t + 16 * (2 * half + j));
        hi[j] = lds128(k_row_g8 + 64 * t + 16 * (2 * half + j));
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {  // k step 4 * half + kk: words 2kk, 2kk + 1
        const int kc = 4 * half + kk;
        const unsigned a[4] = {word_of(lo[kk / 2], 2 * (kk % 2)), word_of(hi[kk / 2], 2 * (kk % 2)),
                               word_of(lo[kk / 2], 2 * (kk % 2) + 1),
                               word_of(hi[kk / 2], 2 * (kk % 2) + 1)};
        mma_16816<MmaT>(s, a, qb[kc][0], qb[kc][1]);
      }
    }
  }

  // O^T += V^T P^T: keys 2t, 2t+1, 2t+8, 2t+9 (zeroed past the length), dims 16g .. 16g+15
  static __device__ __forceinline__ void accumulate(float (&acc)[kBulkD / 16][4],
                                                    unsigned v_head, int row_bytes,
                                                    const bool (&valid)[4], unsigned pb0,
                                                    unsigned pb1) {
    const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // dims 16g + 8 half .. + 7: m tiles 4 half ..
      uint4 v[4];
      load_key_vectors(v, v_head + 32 * g + 16 * half, row_bytes, valid);
#pragma unroll
      for (int w = 0; w < 4; ++w) {  // m tile 4 half + w: dims 16g + 8 half + 2w, + 1
        const unsigned a[4] = {__byte_perm(word_of(v[0], w), word_of(v[1], w), 0x5410u),
                               __byte_perm(word_of(v[0], w), word_of(v[1], w), 0x7632u),
                               __byte_perm(word_of(v[2], w), word_of(v[3], w), 0x5410u),
                               __byte_perm(word_of(v[2], w), word_of(v[3], w), 0x7632u)};
        mma_16816<MmaT>(acc[4 * half + w], a, pb0, pb1);
      }
    }
  }
};

// e4m3 cache: the values widened to fp16 in registers (exact), the MMAs in fp16.
template <typename T> struct BulkMath<T, Fp8> {
  using MmaT = __half;
  static __device__ __forceinline__ unsigned q_pair(unsigned x) {
    const float2 f = make_float2(to_float(reinterpret_cast<const T*>(&x)[0]),
                                 to_float(reinterpret_cast<const T*>(&x)[1]));
    return pack2<__half>(f.x, f.y);
  }

  static __device__ __forceinline__ void scores(float (&s)[4], unsigned k_row_g,
                                                unsigned k_row_g8,
                                                const unsigned (&qb)[kBulkD / 16][2]) {
    const int t = threadIdx.x & 3;
    uint4 lo[2], hi[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      lo[j] = lds128(k_row_g + 32 * t + 16 * j);
      hi[j] = lds128(k_row_g8 + 32 * t + 16 * j);
    }
#pragma unroll
    for (int kc = 0; kc < kBulkD / 16; ++kc) {  // word kc: dims 32t + 4kc .. + 3
      unsigned a[4];
      e4m3x4_to_half2x2(word_of(lo[kc / 4], kc % 4), a[0], a[2]);
      e4m3x4_to_half2x2(word_of(hi[kc / 4], kc % 4), a[1], a[3]);
      mma_16816<MmaT>(s, a, qb[kc][0], qb[kc][1]);
    }
  }

  static __device__ __forceinline__ void accumulate(float (&acc)[kBulkD / 16][4],
                                                    unsigned v_head, int row_bytes,
                                                    const bool (&valid)[4], unsigned pb0,
                                                    unsigned pb1) {
    const int g = (threadIdx.x & 31) >> 2;
    uint4 v[4];
    load_key_vectors(v, v_head + 16 * g, row_bytes, valid);
#pragma unroll
    for (int mt = 0; mt < kBulkD / 16; ++mt) {  // dims 16g + 2mt, + 1: bytes 2mt, 2mt + 1
      const unsigned select = mt % 2 ? 0x7362u : 0x5140u;  // (x_j, y_j, x_j+1, y_j+1)
      const unsigned first = __byte_perm(word_of(v[0], mt / 2), word_of(v[1], mt / 2), select);
      const unsigned second = __byte_perm(word_of(v[2], mt / 2), word_of(v[3], mt / 2), select);
      unsigned a[4];
      e4m3x4_to_half2x2(first, a[0], a[1]);
      e4m3x4_to_half2x2(second, a[2], a[3]);
      mma_16816<MmaT>(acc[mt], a, pb0, pb1);
    }
  }
};

// B fragments of Q^T for the warp's kv head: head g of the group (zeros past it), dims in the
// K fragments' order (k step kc: 32t + 4kc, + 1 in b0; + 2, + 3 in b1).
template <typename T, typename KvT>
__device__ __forceinline__ void load_q(unsigned (&qb)[kBulkD / 16][2], const T* q_row, int group) {
  const int g = (threadIdx.x & 31) >> 2;
  const int t = threadIdx.x & 3;
  const int kv_head = threadIdx.x >> 5;
  const bool live = g < group;
  const int head = kv_head * group + (live ? g : 0);
  const uint4* src = reinterpret_cast<const uint4*>(q_row + head * kBulkD + 32 * t);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint4 v = live ? __ldg(src + j) : make_uint4(0u, 0u, 0u, 0u);
    qb[2 * j][0] = BulkMath<T, KvT>::q_pair(v.x);
    qb[2 * j][1] = BulkMath<T, KvT>::q_pair(v.y);
    qb[2 * j + 1][0] = BulkMath<T, KvT>::q_pair(v.z);
    qb[2 * j + 1][1] = BulkMath<T, KvT>::q_pair(v.w);
  }
}

}  // namespace
}  // namespace inflightd
