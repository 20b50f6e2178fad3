// W8A8 (SmoothQuant; server/engine/ops/cuda_int.py): int8 activations with one scale per
// token times int8 weights with one scale per output channel.
//
//   quantize_int8_rows:  scale[r] = max(max_i |x[r, i]|, 1e-12) * float32(1 / 127)
//                        q[r, i]  = clamp(round_half_even(x[r, i] / scale[r]), -127, 127)
//   torch._int_mm        acc[m, n] = sum_k q[m, k] * w[n, k]       (int32, exact)
//   int8_scaled_out:     y[m, n]  = T(float(acc[m, n]) * x_scale[m] * w_scale[n] (+ b[n]))
//   gemv_w8a8 (<= 16 tokens): the last two in one kernel, same result bit for bit
//
// As the torch reference computes them (cuda_int.quantize_int8_rows_reference,
// int_linear_reference), bit for bit: an IEEE division (__fdiv_rn), not a multiply by
// 1 / scale; products left to right in float32, each rounded (no fused multiply-add).
// One CTA per row for the quantizer (the row is read twice, the second time from L2); the
// epilogue reads 4 int32 and writes 4 outputs per thread. Rows 16-byte aligned, K a
// multiple of 8 (the wrapper checks).
#include "common.cuh"
#include "gemv_mma.cuh"

using namespace inflightd;

namespace {

constexpr float kInvInt8Max = 1.f / 127.f;
constexpr float kMinAbsMax = 1e-12f;

__device__ __forceinline__ unsigned int8_byte(float v, float scale) {
  const int q = __float2int_rn(__fdiv_rn(v, scale));
  return static_cast<unsigned>(max(-127, min(127, q))) & 0xFFu;
}

__device__ __forceinline__ uint2 int8x8(const float (&v)[8], float s) {
  return make_uint2(int8_byte(v[0], s) | int8_byte(v[1], s) << 8 | int8_byte(v[2], s) << 16 |
                        int8_byte(v[3], s) << 24,
                    int8_byte(v[4], s) | int8_byte(v[5], s) << 8 | int8_byte(v[6], s) << 16 |
                        int8_byte(v[7], s) << 24);
}

template <typename T>
__device__ __forceinline__ void quantize_int8_rows_impl(signed char* q, float* scale,
                                                        const T* x, int k, long long x_stride) {
  quantize_rows_by_absmax(reinterpret_cast<unsigned char*>(q), scale, x, k, x_stride,
                          [](float absmax) { return fmaxf(absmax, kMinAbsMax) * kInvInt8Max; },
                          [](const float (&v)[8], float s) { return int8x8(v, s); });
}

// grid (column groups of 4 * blockDim.x, m): row blockIdx.y of acc [*, n] (padded rows of a
// small batch are never read)
template <typename T>
__device__ __forceinline__ void int8_scaled_out_impl(T* __restrict__ y, const int* __restrict__ acc,
                                                     const float* __restrict__ x_scale,
                                                     const T* __restrict__ w_scale,
                                                     const T* __restrict__ bias, int n) {
  const int col = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
  if (col >= n) return;
  const long long offset = static_cast<long long>(blockIdx.y) * n + col;
  const int4 sums = *reinterpret_cast<const int4*>(acc + offset);
  const float row_scale = x_scale[blockIdx.y];
  const int s[4] = {sums.x, sums.y, sums.z, sums.w};
  float out[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    out[j] = __fmul_rn(__fmul_rn(static_cast<float>(s[j]), row_scale), to_float(w_scale[col + j]));
    if (bias != nullptr) out[j] = __fadd_rn(out[j], to_float(bias[col + j]));
  }
  *reinterpret_cast<uint2*>(y + offset) = make_uint2(pack2<T>(out[0], out[1]),
                                                     pack2<T>(out[2], out[3]));
}

// Decode steps: the int8 weights streamed once through mma.m16n8k32 (s8 x s8 -> s32), laid
// out as gemv_fp8.cu's tensor-core GEMV: a CTA owns 16 output columns (weight rows: the
// MMA's M), its 8 warps split K in 64-byte blocks, tokens are the MMA's N (TILES tiles of 8).
// Lane (g = lane / 4, t = lane % 4) loads bytes [16t, 16t + 16) of a block from weight rows
// g, g + 8 and from x of token g; both MMAs of the block read them in the same lane-local
// order (a k sum does not care which k is which):
//
//   # MMA 1: a = {w[g][0:4], w[g+8][0:4], w[g][4:8], w[g+8][4:8]}   b = {x[g][0:4], x[g][4:8]}
//   # MMA 2: the same with bytes 8:16
//   # C: c0, c1 = (column g, tokens 2t, 2t + 1), c2, c3 = (column g + 8, same tokens)
//
// Integer sums are exact, so the order of the warps' partial sums does not matter either.
constexpr int kW8a8Warps = 8;
constexpr int kW8a8Unroll = 4;  // 64-byte blocks each warp has in flight

__device__ __forceinline__ void mma_s8_16832(int (&c)[4], const uint4& a_lo, const uint4& a_hi,
                                             const uint4& b, bool second) {
  const unsigned a0 = second ? a_lo.z : a_lo.x, a1 = second ? a_hi.z : a_hi.x;
  const unsigned a2 = second ? a_lo.w : a_lo.y, a3 = second ? a_hi.w : a_hi.y;
  const unsigned b0 = second ? b.z : b.x, b1 = second ? b.w : b.y;
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <typename T, int TILES>
__device__ __forceinline__ void gemv_w8a8_impl(T* __restrict__ y, const signed char* __restrict__ w,
                                               const T* __restrict__ w_scale,
                                               const signed char* __restrict__ x,
                                               const float* __restrict__ x_scale,
                                               const T* __restrict__ bias, int m, int n, int k) {
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int col0 = blockIdx.x * 16;
  // rows past n read the last row and are never stored; tokens past m read row m - 1
  const signed char* w_lo = w + static_cast<long long>(min(col0 + g, n - 1)) * k + 16 * t;
  const signed char* w_hi = w + static_cast<long long>(min(col0 + g + 8, n - 1)) * k + 16 * t;
  const signed char* x_rows[TILES];
#pragma unroll
  for (int tile = 0; tile < TILES; ++tile)
    x_rows[tile] = x + static_cast<long long>(min(tile * 8 + g, m - 1)) * k + 16 * t;
  const int num_blocks = (k + 63) / 64;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  int c[TILES][4] = {};
  for (int first = warp; first < num_blocks; first += kW8a8Warps * kW8a8Unroll) {
    uint4 a_lo[kW8a8Unroll], a_hi[kW8a8Unroll];
#pragma unroll
    for (int u = 0; u < kW8a8Unroll; ++u) {
      const int offset = (first + u * kW8a8Warps) * 64;
      const bool in_k = offset + 16 * t < k;  // k is a multiple of 16
      a_lo[u] = in_k ? load_streaming(w_lo + offset) : zero;
      a_hi[u] = in_k ? load_streaming(w_hi + offset) : zero;
    }
#pragma unroll
    for (int u = 0; u < kW8a8Unroll; ++u) {
      const int offset = (first + u * kW8a8Warps) * 64;
      if (offset >= k) break;  // the same for the whole warp
      const bool in_k = offset + 16 * t < k;
#pragma unroll
      for (int tile = 0; tile < TILES; ++tile) {
        const uint4 b = in_k ? __ldg(reinterpret_cast<const uint4*>(x_rows[tile] + offset)) : zero;
        mma_s8_16832(c[tile], a_lo[u], a_hi[u], b, false);
        mma_s8_16832(c[tile], a_lo[u], a_hi[u], b, true);
      }
    }
  }
  reduce_mma_columns<kW8a8Warps, TILES>(c, m, n, [&](int col, int token, int total) {
    float value = __fmul_rn(__fmul_rn(static_cast<float>(total), x_scale[token]),
                            to_float(w_scale[col]));
    if (bias != nullptr) value = __fadd_rn(value, to_float(bias[col]));
    y[static_cast<long long>(token) * n + col] = from_float<T>(value);
  });
}

}  // namespace

#define INFLIGHTD_GEMV_W8A8(T, SUFFIX, TILES)                                                  \
  extern "C" __global__ void __launch_bounds__(32 * kW8a8Warps) gemv_w8a8_##SUFFIX##_t##TILES( \
      T* y, const signed char* w, const T* w_scale, const signed char* x,                      \
      const float* x_scale, const T* bias, int m, int n, int k) {                              \
    inflightd::wait_for_previous_kernel();                                                     \
    gemv_w8a8_impl<T, TILES>(y, w, w_scale, x, x_scale, bias, m, n, k);                        \
  }

#define INFLIGHTD_W8A8(T, SUFFIX)                                                              \
  extern "C" __global__ void __launch_bounds__(256) quantize_int8_rows_##SUFFIX(               \
      signed char* q, float* scale, const T* x, int k, long long x_stride) {                   \
    inflightd::wait_for_previous_kernel();                                                     \
    quantize_int8_rows_impl<T>(q, scale, x, k, x_stride);                                      \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(256) int8_scaled_out_##SUFFIX(                  \
      T* y, const int* acc, const float* x_scale, const T* w_scale, const T* bias, int n) {    \
    inflightd::wait_for_previous_kernel();                                                     \
    int8_scaled_out_impl<T>(y, acc, x_scale, w_scale, bias, n);                                \
  }

INFLIGHTD_W8A8(__nv_bfloat16, bf16)
INFLIGHTD_W8A8(__half, fp16)
INFLIGHTD_GEMV_W8A8(__nv_bfloat16, bf16, 1)
INFLIGHTD_GEMV_W8A8(__nv_bfloat16, bf16, 2)
INFLIGHTD_GEMV_W8A8(__half, fp16, 1)
INFLIGHTD_GEMV_W8A8(__half, fp16, 2)
