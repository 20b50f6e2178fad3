// Skinny matrix product of 16-bit activations with integer weights (W4A16, W8A16; IntWeight
// of server/engine/models/int_weights.py) for decode steps of 1 to 16 tokens:
//
//   y[m, n] = sum_k x[m, k] * w[n, k]  (+ b[n])      fp32 accumulation, y in T
//   w[n, k] = (q[n, k] - zero[n, k / G]) * scale[n, k / G]   (int8: no zero)
//
// At a few tokens the step is the weights streamed once (a quarter or half of bf16's bytes),
// so the work per byte is what decides the speed: each weight is turned into T once in
// registers (int_weights.cuh) and multiplied for every token on the tensor cores
// (mma.m16n8k16, fp32 accumulators), rather than once per token on the CUDA cores. The
// weights are the MMA's A: a CTA owns 16 output columns (the MMA's M); the tokens are its N,
// 8 per tile, TILES tiles.
//
// K is cut into blocks of 4 chunks, a chunk being 16 bytes of one weight row (32 int4 or 16
// int8 values); the CTA's 8 warps take blocks in turn, UNROLL blocks in flight per warp.
// Lane (g = lane / 4, t = lane % 4) loads chunk t of the block from rows g and g + 8, and
// x[token g of each tile] at the same columns:
//
//   # block (int4: 128 columns, int8: 64):  | chunk 0 | chunk 1 | chunk 2 | chunk 3 |
//   #   weight rows col0 + g, col0 + g + 8:     t = 0     t = 1     t = 2     t = 3
//
// A sum over k does not care which k is which, so a lane feeds its own columns to the MMAs
// in any order as long as A and B agree. Each MMA takes two T pairs P, Q of its columns:
//
//   # a0 = P of row g, a1 = P of row g + 8, a2 = Q of row g, a3 = Q of row g + 8
//   # b0 = x[token g] at P's two columns,   b1 = x[token g] at Q's
//   #   int4 word i (columns 8i..8i+7 of the chunk): pairs (c0,c4) (c1,c5) | (c2,c6) (c3,c7)
//   #       -> 2 MMAs, x pairs gathered to the same order by byte_perm
//   #   int8 word i (columns 4i..4i+3):               pairs (c0,c1) (c2,c3) -> 1 MMA
//   # C: c0, c1 = (column g, tokens 2t, 2t + 1), c2, c3 = (column g + 8, same tokens)
//
// The _bs kernels serve groups that cover whole blocks (int4: 128 columns or more, int8: 64,
// or one group per row): the MMAs take (q - zero) unscaled, exact in T, and each block's
// float32 sums are scaled once, which saves a multiply per weight pair (and a rounding).
// The others scale every weight first (groups of 32 or 64), as IntWeight.dequantize does.
//
// The _silu kernels (one tile: 1 to 8 tokens) are the gated MLP's gate|up projection and its
// SiLU-and-mul in one launch, y [m, d] for a weight of 2d rows (gate rows, then up rows): a
// CTA takes gate rows as its rows g and the up rows of the same 8 outputs as its rows g + 8,
// so one lane ends with both sums; rounded as the two kernels round (to T after the
// product, silu(gate) to T, the product to T), with activation.cu's fast exp and division.
//
// Partial sums of the 8 warps meet in shared memory (gemv_mma.cuh). K a multiple of the
// chunk, group sizes powers of two and multiples of the chunk (or K: per channel), 16-byte
// aligned rows of x and of the weight, indices within 32 bits: the wrapper checks.
#include "common.cuh"
#include "gemv_mma.cuh"
#include "int_weights.cuh"
#include "mma.cuh"

using namespace inflightd;

namespace {

constexpr int kIntGemvWarps = 8;
constexpr int kIntGemvUnroll = 4;  // blocks each warp has in flight
constexpr int kIntGemvColumns = 16;
// CTAs per SM asked of ptxas, with one tile of tokens and the weights scaled one by one: for
// int4, 4 (registers capped at 64, 32 warps to hide the loads' latency, no spills; Llama-3-8B
// int4 batch 1 on an H100: 379 tok/s against 370 at 3, session 31); for int8, 3 (80
// registers: at 4 its large layers ran 5-10 % slower). The block-scaled kernels (their sums
// beside the accumulators) and two tiles spill at 3, so get 2 (128 registers).
template <int BITS, int TILES, bool BLOCK_SCALE> struct IntGemvCtas {
  static constexpr int value = TILES == 1 && !BLOCK_SCALE ? (BITS == 4 ? 4 : 3) : 2;
};

template <int BITS> struct ChunkShape {
  static constexpr int kValues = 128 / BITS;  // weights per 16-byte chunk
  static constexpr int kXVectors = kValues / 8;  // 16-byte vectors of x over those columns
};

// x pairs in an int4 word's order: from x columns 0..7 (one 16-byte vector, 4 pairs in
// column order) to (x0,x4) (x1,x5) (x2,x6) (x3,x7).
__device__ __forceinline__ void gather_int4_order(const uint4& v, unsigned (&out)[4]) {
  out[0] = __byte_perm(v.x, v.z, 0x5410u);
  out[1] = __byte_perm(v.x, v.z, 0x7632u);
  out[2] = __byte_perm(v.y, v.w, 0x5410u);
  out[3] = __byte_perm(v.y, v.w, 0x7632u);
}

// One chunk of rows g and g + 8 times TILES tiles of x: 8 MMAs (int4) or 4 (int8) per tile.
// SCALE: the weights are scaled before the MMAs (else the caller scales the sums).
template <typename T, int BITS, int TILES, bool SCALE>
__device__ __forceinline__ void chunk_mma(float (&c)[TILES][4], const uint4& w_lo,
                                          const uint4& w_hi, ChunkScale s_lo, ChunkScale s_hi,
                                          const uint4 (&x)[TILES][ChunkShape<BITS>::kXVectors]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (BITS == 4) {
      unsigned lo[4], hi[4];
      int4_word_to_pairs<T, SCALE>(word_of(w_lo, i), s_lo, lo);
      int4_word_to_pairs<T, SCALE>(word_of(w_hi, i), s_hi, hi);
      const unsigned a_first[4] = {lo[0], hi[0], lo[1], hi[1]};
      const unsigned a_second[4] = {lo[2], hi[2], lo[3], hi[3]};
#pragma unroll
      for (int tile = 0; tile < TILES; ++tile) {
        unsigned b[4];
        gather_int4_order(x[tile][i], b);
        mma_16816<T>(c[tile], a_first, b[0], b[1]);
        mma_16816<T>(c[tile], a_second, b[2], b[3]);
      }
    } else {
      unsigned lo[2], hi[2];
      int8_word_to_pairs<T, SCALE>(word_of(w_lo, i), s_lo.scale2, lo);
      int8_word_to_pairs<T, SCALE>(word_of(w_hi, i), s_hi.scale2, hi);
      const unsigned a[4] = {lo[0], hi[0], lo[1], hi[1]};
#pragma unroll
      for (int tile = 0; tile < TILES; ++tile) {
        const uint4& v = x[tile][i / 2];
        mma_16816<T>(c[tile], a, i % 2 ? v.z : v.x, i % 2 ? v.w : v.y);
      }
    }
  }
}

// What a lane reads: chunk t of each block from weight rows g and g + 8 (row_lo, row_hi),
// their scales and zeros, and x of token g of each tile (a token past m reads row m - 1: its
// sums are never stored). Bases are the kernel's arguments; a lane keeps 32-bit indices
// (the wrapper checks they fit), which leaves registers for the loads in flight.
template <typename T, int TILES> struct LaneRows {
  const uint4* w;  // the packed weight as 16-byte chunks
  const unsigned short* scales;
  const unsigned short* zeros;
  const T* x;
  int w_lo, w_hi;  // chunk t of block 0 in rows row_lo, row_hi
  int group_lo, group_hi;  // group 0 of rows row_lo, row_hi
  int x_offset[TILES];  // x[token][first column of chunk t of block 0]
  int num_chunks;  // per row
  int group_shift;  // group of column j: j >> group_shift (per channel: 31, always 0)
};

template <typename T, int BITS, int TILES, bool GATED>
__device__ __forceinline__ LaneRows<T, TILES> lane_rows(
    const unsigned char* w, const unsigned short* scales, const unsigned short* zeros,
    const T* x, int m, int n, int k, int group_shift, long long x_stride) {
  using Shape = ChunkShape<BITS>;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  // rows past n (GATED: past d = n / 2) read the last row (in bounds), never stored
  const int half = n / 2;
  const int col0 = blockIdx.x * (GATED ? kIntGemvColumns / 2 : kIntGemvColumns);
  const int row_lo = GATED ? min(col0 + g, half - 1) : min(col0 + g, n - 1);
  const int row_hi = GATED ? half + row_lo : min(col0 + g + 8, n - 1);
  const int num_groups = group_shift >= 31 ? 1 : k >> group_shift;
  LaneRows<T, TILES> r;
  r.w = reinterpret_cast<const uint4*>(w);
  r.scales = scales;
  r.zeros = zeros;
  r.x = x;
  r.num_chunks = k / Shape::kValues;
  r.group_shift = group_shift;
  r.w_lo = row_lo * r.num_chunks + t;
  r.w_hi = row_hi * r.num_chunks + t;
  r.group_lo = row_lo * num_groups;
  r.group_hi = row_hi * num_groups;
#pragma unroll
  for (int tile = 0; tile < TILES; ++tile)
    r.x_offset[tile] = static_cast<int>(min(tile * 8 + g, m - 1) * x_stride) + t * Shape::kValues;
  return r;
}

// UNROLL blocks of K from `first` on, kIntGemvWarps apart. TAIL: some of them may be past K
// (whole blocks, or chunks of the last one): those are skipped or multiply zeros (scale 0
// zeroes the weights, x is 0). BLOCK_SCALE: one group per block (int4: groups of 128 or more,
// int8: 64), so each block's sums are scaled once instead of every weight.
template <typename T, int BITS, int TILES, bool BLOCK_SCALE, bool TAIL>
__device__ __forceinline__ void blocks_pass(const LaneRows<T, TILES>& r, int first,
                                            float (&c)[TILES][4]) {
  using Shape = ChunkShape<BITS>;
  const int t = threadIdx.x & 3;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  uint4 a_lo[kIntGemvUnroll], a_hi[kIntGemvUnroll];
#pragma unroll
  for (int u = 0; u < kIntGemvUnroll; ++u) {  // the weights first: all in flight at once
    const int offset = (first + u * kIntGemvWarps) * 4;
    const bool in_k = !TAIL || offset + t < r.num_chunks;
    a_lo[u] = in_k ? load_streaming(r.w + (r.w_lo + offset)) : zero;
    a_hi[u] = in_k ? load_streaming(r.w + (r.w_hi + offset)) : zero;
  }
#pragma unroll
  for (int u = 0; u < kIntGemvUnroll; ++u) {
    const int block = first + u * kIntGemvWarps;
    if (TAIL && block * 4 >= r.num_chunks) break;  // the same for the whole warp
    const int chunk = block * 4 + t;
    const bool in_k = !TAIL || chunk < r.num_chunks;
    const int group = (chunk * Shape::kValues) >> r.group_shift;
    const unsigned short none = 0;
    const unsigned short raw_s_lo = in_k ? __ldg(r.scales + (r.group_lo + group)) : none;
    const unsigned short raw_s_hi = in_k ? __ldg(r.scales + (r.group_hi + group)) : none;
    const bool has_zero = BITS == 4 && in_k;
    const ChunkScale s_lo =
        chunk_scale<T>(raw_s_lo, has_zero ? __ldg(r.zeros + (r.group_lo + group)) : none);
    const ChunkScale s_hi =
        chunk_scale<T>(raw_s_hi, has_zero ? __ldg(r.zeros + (r.group_hi + group)) : none);
    uint4 xv[TILES][Shape::kXVectors];
#pragma unroll
    for (int tile = 0; tile < TILES; ++tile) {
      const uint4* src =
          reinterpret_cast<const uint4*>(r.x + (r.x_offset[tile] + block * 4 * Shape::kValues));
#pragma unroll
      for (int j = 0; j < Shape::kXVectors; ++j) xv[tile][j] = in_k ? __ldg(src + j) : zero;
    }
    if constexpr (BLOCK_SCALE) {
      float sums[TILES][4] = {};
      chunk_mma<T, BITS, TILES, false>(sums, a_lo[u], a_hi[u], s_lo, s_hi, xv);
      // C rows: c0, c1 belong to row g (scale_lo), c2, c3 to row g + 8
      const float f_lo = to_float(*reinterpret_cast<const T*>(&raw_s_lo));
      const float f_hi = to_float(*reinterpret_cast<const T*>(&raw_s_hi));
#pragma unroll
      for (int tile = 0; tile < TILES; ++tile) {
        c[tile][0] = fmaf(sums[tile][0], f_lo, c[tile][0]);
        c[tile][1] = fmaf(sums[tile][1], f_lo, c[tile][1]);
        c[tile][2] = fmaf(sums[tile][2], f_hi, c[tile][2]);
        c[tile][3] = fmaf(sums[tile][3], f_hi, c[tile][3]);
      }
    } else {
      chunk_mma<T, BITS, TILES, true>(c, a_lo[u], a_hi[u], s_lo, s_hi, xv);
    }
  }
}

template <typename T, int BITS, int TILES, bool BLOCK_SCALE, bool GATED>
__device__ __forceinline__ void gemv_int_impl(T* __restrict__ y,
                                              const unsigned char* __restrict__ w,
                                              const unsigned short* __restrict__ scales,
                                              const unsigned short* __restrict__ zeros,
                                              const T* __restrict__ x,
                                              const T* __restrict__ bias, int m, int n, int k,
                                              int group_shift, long long x_stride) {
  const LaneRows<T, TILES> rows =
      lane_rows<T, BITS, TILES, GATED>(w, scales, zeros, x, m, n, k, group_shift, x_stride);
  const int full_blocks = rows.num_chunks / 4;  // blocks with all 4 chunks inside K
  const int num_blocks = (rows.num_chunks + 3) / 4;
  constexpr int kStep = kIntGemvWarps * kIntGemvUnroll;
  float c[TILES][4] = {};
  int first = threadIdx.x >> 5;
  for (; first + (kIntGemvUnroll - 1) * kIntGemvWarps < full_blocks; first += kStep)
    blocks_pass<T, BITS, TILES, BLOCK_SCALE, false>(rows, first, c);
  if (first < num_blocks) blocks_pass<T, BITS, TILES, BLOCK_SCALE, true>(rows, first, c);
  if constexpr (GATED) {
    const int d = n / 2;
    reduce_mma_gated<kIntGemvWarps, TILES>(c, m, d,
                                           [&](int col, int token, float gate, float up) {
      const float act = round_to<T>(fast_silu(round_to<T>(gate)));
      y[static_cast<long long>(token) * d + col] = from_float<T>(act * round_to<T>(up));
    });
  } else {
    reduce_mma_columns<kIntGemvWarps, TILES>(c, m, n, [&](int col, int token, float total) {
      if (bias != nullptr) total += to_float(bias[col]);
      y[static_cast<long long>(token) * n + col] = from_float<T>(total);
    });
  }
}

}  // namespace

// _bs: one group per block of K (int4: groups of 128 columns or more, int8: 64 or more);
// _silu: the gated MLP's gate|up with SiLU-and-mul (n = 2d weight rows, y [m, d], no bias)
#define INFLIGHTD_GEMV_INT(T, SUFFIX, BITS, TILES, BLOCK_SCALE, GATED, NAME_END)               \
  extern "C" __global__ void __launch_bounds__(                                                 \
      32 * kIntGemvWarps, IntGemvCtas<BITS, TILES, BLOCK_SCALE>::value)                         \
      gemv_w##BITS##_##SUFFIX##_t##TILES##NAME_END(                                             \
          T* y, const unsigned char* w, const unsigned short* scales,                          \
          const unsigned short* zeros, const T* x, const T* bias, int m, int n, int k,         \
          int group_shift, long long x_stride) {                                                \
    inflightd::wait_for_previous_kernel();                                                      \
    gemv_int_impl<T, BITS, TILES, BLOCK_SCALE, GATED>(y, w, scales, zeros, x, bias, m, n, k,   \
                                                      group_shift, x_stride);                   \
  }
#define INFLIGHTD_GEMV_INT_BOTH(T, SUFFIX, BITS, TILES)                                         \
  INFLIGHTD_GEMV_INT(T, SUFFIX, BITS, TILES, false, false, )                                    \
  INFLIGHTD_GEMV_INT(T, SUFFIX, BITS, TILES, true, false, _bs)
#define INFLIGHTD_GEMV_INT_SILU(T, SUFFIX, BITS)                                                \
  INFLIGHTD_GEMV_INT(T, SUFFIX, BITS, 1, false, true, _silu)                                    \
  INFLIGHTD_GEMV_INT(T, SUFFIX, BITS, 1, true, true, _bs_silu)

INFLIGHTD_GEMV_INT_BOTH(__nv_bfloat16, bf16, 4, 1)
INFLIGHTD_GEMV_INT_BOTH(__nv_bfloat16, bf16, 4, 2)
INFLIGHTD_GEMV_INT_BOTH(__nv_bfloat16, bf16, 8, 1)
INFLIGHTD_GEMV_INT_BOTH(__nv_bfloat16, bf16, 8, 2)
INFLIGHTD_GEMV_INT_BOTH(__half, fp16, 4, 1)
INFLIGHTD_GEMV_INT_BOTH(__half, fp16, 4, 2)
INFLIGHTD_GEMV_INT_BOTH(__half, fp16, 8, 1)
INFLIGHTD_GEMV_INT_BOTH(__half, fp16, 8, 2)
INFLIGHTD_GEMV_INT_SILU(__nv_bfloat16, bf16, 4)
INFLIGHTD_GEMV_INT_SILU(__nv_bfloat16, bf16, 8)
INFLIGHTD_GEMV_INT_SILU(__half, fp16, 4)
INFLIGHTD_GEMV_INT_SILU(__half, fp16, 8)
