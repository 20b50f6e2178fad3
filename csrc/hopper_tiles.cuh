// Shared memory of the Hopper prefill attention kernel (paged_attention_hopper.cu): its
// tiles, and the copies and conversions that fill them.
//
//   # 16-bit cache: | Q | K, V stage 0 | K, V stage 1 | K, V stage 2 |
//   # e4m3 cache:   | Q | K, V buffer 0 | K, V buffer 1 | raw K, V 0 | raw K, V 1 |
//   #   each | Q |, | K | or | V | 32 KB: two 64-column halves of 128 swizzled rows
//   #   (wgmma.cuh); each raw K or V 16 KB: 128 keys of 128 e4m3 bytes, as in the cache
//
// Over an e4m3 cache the copies land raw, and the threads convert each tile to fp16 (exact:
// every e4m3 value is a half) into a swizzled buffer, for fp16 MMAs as the mma.sync kernels
// do (attention_fragments.cuh): Q, if bf16, is converted to fp16 too, clamped to its range.
#pragma once

#include "common.cuh"
#include "fp8.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

namespace inflightd {

constexpr int kHopperRows = 128;  // query rows of a CTA: two warpgroups of 64
constexpr int kHopperKeys = 128;  // keys of a K/V tile
constexpr int kHopperD = 128;
constexpr int kHopperThreads = 256;
constexpr int kHalfBytes = 128 * kSwizzleRowBytes;  // 64 columns of 128 rows: 16 KB
constexpr int kTileBytes = 2 * kHalfBytes;          // 128 rows of head_dim 128: 32 KB
constexpr int kStages = 3;  // over a 16-bit cache; an e4m3 cache has 2 buffers, 2 raw stages
// Q and three stages of K and V (or two buffers and two raw stages: the same bytes), and
// room to align the dynamic shared memory to the swizzle's 1,024 bytes
// (server/engine/ops/cuda_attention_hopper.py launches with the same)
constexpr int kHopperSmemBytes = (1 + 2 * kStages) * kTileBytes + 1024 + 64;  // + mbarriers
static_assert(kHopperSmemBytes <= 227 * 1024, "an SM's shared memory holds one CTA");

// Shared-memory addresses of the tiles (arithmetic, not arrays: a stage is a run-time index).
struct HopperSmem {
  unsigned q;
  __device__ __forceinline__ unsigned k(int stage) const {
    return q + (1 + 2 * stage) * kTileBytes;
  }
  __device__ __forceinline__ unsigned v(int stage) const {
    return q + (2 + 2 * stage) * kTileBytes;
  }
  // an e4m3 cache's raw stages, after its two buffers
  __device__ __forceinline__ unsigned raw_k(int stage) const {
    return q + (5 + stage) * kTileBytes;
  }
  __device__ __forceinline__ unsigned raw_v(int stage) const {
    return raw_k(stage) + kTileBytes / 2;
  }
};

__device__ __forceinline__ HopperSmem hopper_smem(unsigned char* raw) {
  return HopperSmem{(static_cast<unsigned>(__cvta_generic_to_shared(raw)) + 1023u) & ~1023u};
}

// Chunk c (0..15: 8 values each) of row `row` of a 128-row tile of two halves.
__device__ __forceinline__ unsigned tile_chunk(unsigned tile, int row, int chunk) {
  return tile + (chunk >> 3) * kHalfBytes + swizzled_offset(row, chunk & 7);
}

// 16 bytes from global to shared memory, or 16 zero bytes where !valid (keys past the
// sequence, rows past the tile: a masked key still multiplies its V row by p = 0).
__device__ __forceinline__ void cp_async_16_or_zero(unsigned dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}

// Block sizes are powers of two (the launch checks): a key's block is a shift away.
struct BlockShift {
  int shift;  // log2(block_size)
  int mask;   // block_size - 1
};

// Elements from the cache's first row to key `position`'s row (0 for a key not `valid`, whose
// copy reads nothing): its slot through the block table, times the row's length.
__device__ __forceinline__ long long key_offset(const int* __restrict__ block_row, int position,
                                               bool valid, BlockShift block, long long kv_row) {
  if (!valid) return 0;
  const long long slot = (static_cast<long long>(block_row[position >> block.shift])
                          << block.shift) + (position & block.mask);
  return slot * kv_row;
}

// The raw e4m3 bytes of keys [k0, k0 + 128) into a raw stage: each thread 4 keys of one
// 16-byte chunk (16 dims), K and V.
__device__ __forceinline__ void load_kv_raw(const HopperSmem& smem, int stage,
                                            const Fp8* __restrict__ kv_head,
                                            const int* __restrict__ block_row, int k0,
                                            int kv_hi, BlockShift block, long long kv_row,
                                            long long plane) {
  const int chunk = threadIdx.x & 7;
#pragma unroll
  for (int i = 0; i < kHopperKeys / 32; ++i) {
    const int key = (threadIdx.x >> 3) + 32 * i;
    const int position = k0 + key;
    const bool valid = position < kv_hi;
    const Fp8* src = kv_head + key_offset(block_row, position, valid, block, kv_row) + chunk * 16;
    const unsigned at = (key * kHopperD + chunk * 16) * static_cast<unsigned>(sizeof(Fp8));
    cp_async_16_or_zero(smem.raw_k(stage) + at, src, valid);
    cp_async_16_or_zero(smem.raw_v(stage) + at, src + plane, valid);
  }
}

// A raw stage's K and V as fp16 into a buffer's swizzled tiles, each thread the chunks it
// copied (load_kv_raw), so its own cp.async wait covers them: 16 e4m3 values -> 2 chunks.
__device__ __forceinline__ void convert_kv_tile(const HopperSmem& smem, int stage, int buffer) {
  const int chunk = threadIdx.x & 7;
#pragma unroll
  for (int i = 0; i < kHopperKeys / 32; ++i) {
    const int key = (threadIdx.x >> 3) + 32 * i;
    const unsigned at = (key * kHopperD + chunk * 16) * static_cast<unsigned>(sizeof(Fp8));
#pragma unroll
    for (int which = 0; which < 2; ++which) {
      const unsigned raw = (which == 0 ? smem.raw_k(stage) : smem.raw_v(stage)) + at;
      const unsigned tile = which == 0 ? smem.k(buffer) : smem.v(buffer);
      uint4 bytes;
      asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(bytes.x), "=r"(bytes.y), "=r"(bytes.z), "=r"(bytes.w)
                   : "r"(raw));
      uint4 lo, hi;
      e4m3x4_to_half2x2(bytes.x, lo.x, lo.y);
      e4m3x4_to_half2x2(bytes.y, lo.z, lo.w);
      e4m3x4_to_half2x2(bytes.z, hi.x, hi.y);
      e4m3x4_to_half2x2(bytes.w, hi.z, hi.w);
      asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(
                       tile_chunk(tile, key, 2 * chunk)),
                   "r"(lo.x), "r"(lo.y), "r"(lo.z), "r"(lo.w));
      asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(
                       tile_chunk(tile, key, 2 * chunk + 1)),
                   "r"(hi.x), "r"(hi.y), "r"(hi.z), "r"(hi.w));
    }
  }
}

// The MMAs' 16-bit type: the model's, or fp16 over an e4m3 cache.
template <typename T, typename KvT> struct HopperMma {
  using type = T;
};
template <typename T> struct HopperMma<T, Fp8> {
  using type = __half;
};

// A bf16 pair as an fp16 pair, clamped to fp16's range (as attention_fragments.cuh's
// to_half2).
__device__ __forceinline__ unsigned bf16x2_to_half2(unsigned x) {
  float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
  f.x = fminf(fmaxf(f.x, -65504.f), 65504.f);
  f.y = fminf(fmaxf(f.y, -65504.f), 65504.f);
  return pack2<__half>(f.x, f.y);
}

// Over an e4m3 cache with bf16 queries: the Q chunks this thread copied, in place to fp16.
__device__ __forceinline__ void convert_q_chunk(unsigned at) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(at));
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(at), "r"(bf16x2_to_half2(v.x)),
               "r"(bf16x2_to_half2(v.y)), "r"(bf16x2_to_half2(v.z)), "r"(bf16x2_to_half2(v.w)));
}

}  // namespace inflightd
