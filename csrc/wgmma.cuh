// Hopper's warpgroup MMA (wgmma, sm_90a only) for the prefill attention kernel
// (paged_attention_hopper.cu): shared-memory matrix descriptors, the 128-byte swizzled tile
// layout they describe, and the two MMA shapes the kernel issues.
//
// A warpgroup is 4 consecutive warps (128 threads) starting at a warp index divisible by 4;
// all 128 issue each wgmma together. Accumulators live in registers, laid out per warp as
// mma.m16n8's: warp w of the group holds rows 16w .. 16w + 15, and for each 8 columns j
//
//   # d[4j + 0], d[4j + 1] = row 16w + lane / 4,     columns 8j + 2 (lane % 4) + 0, 1
//   # d[4j + 2], d[4j + 3] = row 16w + lane / 4 + 8, the same columns
//
// A 16-bit A operand in registers (m64 x k16) is mma.m16n8k16's A fragment per warp, so the
// accumulators of two neighbouring 8-column blocks, rounded to 16 bits, are the A of one
// k16 step: the scores S become P of O += P V without leaving registers.
//
// Tiles in shared memory are rows of 64 16-bit values (128 bytes), in groups of 8 rows
// (1,024 bytes, the swizzle's period), the 16-byte chunk c of row r stored at chunk
// c ^ (r % 8), so the 8 rows' same chunk fall in 8 different bank groups:
//
//   # row r, chunk c  ->  byte r * 128 + ((c ^ (r & 7)) * 16)       (tile base 1,024-aligned)
//
// A head_dim-128 row is two such 64-column halves, stored as two tiles one after the other.
// Read K-major (the reduction dimension along the 128 bytes: Q and K in S = Q K^T), a k16
// step is 32 bytes further along the rows; read MN-major (V in O += P V, the reduction over
// the keys, i.e. the rows), a k16 step is 16 rows, 2,048 bytes, further. Either way the
// descriptor's stride between 8-row groups is 1,024 bytes.
#pragma once

#include "common.cuh"

namespace inflightd {

constexpr int kSwizzleRowBytes = 128;

__device__ __forceinline__ int swizzled_offset(int row, int chunk) {
  return row * kSwizzleRowBytes + ((chunk ^ (row & 7)) << 4);
}

// Descriptor of a 128-byte-swizzled operand starting at `smem` (a shared-memory address):
// start >> 4 in bits 0-13, leading-dimension offset (unused by the swizzled layouts read
// here: the k16 step stays inside one 128-byte row, or N is 64) in 16-29, the 8-row-group
// stride in 32-45, swizzle mode 1 (128 bytes) in 62-63.
__device__ __forceinline__ unsigned long long swizzled_desc(unsigned smem) {
  unsigned long long desc = (smem & 0x3FFFFu) >> 4;
  desc |= 1ull << 16;
  desc |= static_cast<unsigned long long>(1024 >> 4) << 32;
  desc |= 1ull << 62;
  return desc;
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins registers to this point of the program: the compiler may not move their reads above
// it nor keep their values from before it. After a wgmma wait, for the accumulators it
// completed (else their reads could be scheduled before the wait, and ptxas then serializes
// every wgmma); after a register-A wgmma's wait, for its A (else the registers could be
// reused while the MMA still reads them).
template <int N> __device__ __forceinline__ void fence_registers(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void fence_registers(unsigned (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
  }
}

// Orders this thread's earlier shared-memory writes (cp.async included) before the tensor
// cores' reads of them; then a barrier makes them everyone's.
__device__ __forceinline__ void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// d (m64 x n64, float) += A (m64 x k16, from shared memory, K-major) B (k16 x n64, from
// shared memory, K-major); accumulate 0 overwrites d instead.
template <typename T>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], unsigned long long a,
                                             unsigned long long b, int accumulate);
// d (m64 x n64, float) += A (m64 x k16, registers) B (k16 x n64, from shared memory,
// MN-major: the "transposed" B of PTX's imm-trans-b = 1).
template <typename T>
__device__ __forceinline__ void wgmma_rs_n64_tb(float (&d)[32], const unsigned (&a)[4],
                                                unsigned long long b);

// The asm of the two shapes for one 16-bit type (PTX: bf16 or f16).
#define INFLIGHTD_WGMMA_SHAPES(T, PTX)                                                        \
template <>                                                                                        \
__device__ __forceinline__ void wgmma_ss_n64<T>(float (&d)[32], unsigned long long a,              \
                                                unsigned long long b, int accumulate) {            \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTX "." PTX " {"                               \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31 "                                \
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                                           \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
      "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),      \
      "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),   \
      "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),   \
      "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                           \
      : "l"(a), "l"(b), "r"(accumulate));                                                          \
}                                                                                                  \
template <>                                                                                        \
__device__ __forceinline__ void wgmma_rs_n64_tb<T>(float (&d)[32], const unsigned (&a)[4],         \
                                                   unsigned long long b) {                         \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                   \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTX "." PTX " {"                               \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31 "                                \
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                             \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
      "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),      \
      "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),   \
      "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),   \
      "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                           \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));                                       \
}

INFLIGHTD_WGMMA_SHAPES(__nv_bfloat16, "bf16")
INFLIGHTD_WGMMA_SHAPES(__half, "f16")
#undef INFLIGHTD_WGMMA_SHAPES

}  // namespace inflightd
