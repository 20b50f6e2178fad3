// Skinny FP8 matrix product for decode steps of a few tokens under --quantization fp8:
//
//   y[m, n] = x_scale[m] * w_scale[n] * sum_k x_q[m, k] * w_q[n, k]  (+ b[n]),  bf16 out
//
// x_q [M, K] and w_q [N, K] are e4m3 (x_q from quantize.cu, so the result is the FP8 GEMM's),
// M <= 4. At batch 1 the step streams the weights once, half the bytes of bf16: as gemv.cu,
// each warp owns one output column and its lanes read the weight row in 16-byte chunks
// (16 weights), UNROLL chunks in flight per lane, bypassing L1.
//
//   # w row n:  | chunk 0 | chunk 1 | ... | chunk 31 | chunk 32 | ...   (16 elements each)
//   #  lane:        0         1             31          0
//
// Products are taken in float32 from exact e4m3 -> half conversions. K must be a multiple of
// 16 and rows 16-byte aligned (the wrapper checks). Needs sm_89+ (the Python side checks).
//
// One-token steps take the weight-only kernels at the end (W8A16: the 16-bit activations as
// they are, no quantizer launched before them).
#include "common.cuh"
#include "fp8.cuh"

using namespace inflightd;

__device__ __forceinline__ float dot16(uint4 w_raw, uint4 x_raw) {
  const unsigned short* w = reinterpret_cast<const unsigned short*>(&w_raw);
  const unsigned short* x = reinterpret_cast<const unsigned short*>(&x_raw);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float2 wf = e4m3x2_to_float2(w[i]);
    const float2 xf = e4m3x2_to_float2(x[i]);
    sum = fmaf(wf.x, xf.x, sum);
    sum = fmaf(wf.y, xf.y, sum);
  }
  return sum;
}

template <int M>
__device__ __forceinline__ void gemv_fp8_impl(__nv_bfloat16* __restrict__ y,
                                              const unsigned char* __restrict__ w,
                                              const float* __restrict__ w_scale,
                                              const unsigned char* __restrict__ x,
                                              const float* __restrict__ x_scale,
                                              const __nv_bfloat16* __restrict__ bias, int n,
                                              int k) {
  const int lane = threadIdx.x & 31;
  const int col = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
  if (col >= n) return;
  const unsigned char* w_row = w + static_cast<long long>(col) * k;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  gemv_stream_row<M, kGemvUnroll>(
      acc, reinterpret_cast<const uint4*>(w_row), k / 16, [&](uint4 w_raw, int m, int chunk) {
        return dot16(w_raw, __ldg(reinterpret_cast<const uint4*>(x + static_cast<long long>(m) * k) +
                                  chunk));
      });
  const float col_scale = w_scale[col];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float total = warp_sum(acc[m]) * x_scale[m] * col_scale;
    if (lane == 0) {
      y[static_cast<long long>(m) * n + col] =
          from_float<__nv_bfloat16>(bias == nullptr ? total : total + to_float(bias[col]));
    }
  }
}

#define INFLIGHTD_GEMV_FP8(M)                                                                    \
  extern "C" __global__ void __launch_bounds__(32 * kGemvWarps) gemv_fp8_bf16_m##M(              \
      __nv_bfloat16* y, const unsigned char* w, const float* w_scale, const unsigned char* x,   \
      const float* x_scale, const __nv_bfloat16* bias, int n, int k) {                          \
    gemv_fp8_impl<M>(y, w, w_scale, x, x_scale, bias, n, k);                                     \
  }

INFLIGHTD_GEMV_FP8(1)
INFLIGHTD_GEMV_FP8(2)
INFLIGHTD_GEMV_FP8(3)
INFLIGHTD_GEMV_FP8(4)

// The same product on the tensor cores, for up to 8 tokens: mma.m16n8k32 takes e4m3
// operands as they are, so no value is converted (the conversions above, not the bytes,
// set the pace of the CUDA-core kernel). A CTA owns 16 output columns (weight rows, the
// MMA's M) and its warps split K in 64-byte blocks; the tokens are the MMA's N (rows of x
// past m are zeros). The sum over k does not care which k is which, so each lane loads 16
// contiguous bytes of its weight rows and of its token's x, and the two MMAs of a block
// read them in a lane-local order, the same for A and B:
//
//   # lane (g = lane / 4, t = lane % 4), block bytes [16t, 16t + 16) of rows g, g + 8:
//   #   MMA 1: a = {w[g][0:4], w[g+8][0:4], w[g][4:8], w[g+8][4:8]}    b = {x[g][0:4], x[g][4:8]}
//   #   MMA 2: a = {w[g][8:12], w[g+8][8:12], w[g][12:16], w[g+8][12:16]}  b = {x[g][8:16]}
//   # (offsets within the lane's 16 bytes). C: c0, c1 = (column g, tokens 2t, 2t + 1),
//   # c2, c3 = (column g + 8, tokens 2t, 2t + 1).
constexpr int kMmaGemvWarps = 8;
constexpr int kMmaGemvUnroll = 4;  // 64-byte blocks each warp has in flight

__device__ __forceinline__ void mma_e4m3_16x8x32(float (&c)[4], unsigned a0, unsigned a1,
                                                 unsigned a2, unsigned a3, unsigned b0,
                                                 unsigned b1) {
#if __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(32 * kMmaGemvWarps) gemv_fp8_mma_bf16(
    __nv_bfloat16* __restrict__ y, const unsigned char* __restrict__ w,
    const float* __restrict__ w_scale, const unsigned char* __restrict__ x,
    const float* __restrict__ x_scale, const __nv_bfloat16* __restrict__ bias, int m, int n,
    int k) {
  inflightd::wait_for_previous_kernel();
  __shared__ float partial[kMmaGemvWarps][32][4];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int col0 = blockIdx.x * 16;
  // rows past n read the last row (in bounds) and are never stored
  const unsigned char* w_lo = w + static_cast<long long>(min(col0 + g, n - 1)) * k;
  const unsigned char* w_hi = w + static_cast<long long>(min(col0 + g + 8, n - 1)) * k;
  const unsigned char* x_row = x + static_cast<long long>(g) * k;
  const bool has_token = g < m;
  const int num_blocks = (k + 63) / 64;
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  for (int first = warp; first < num_blocks; first += kMmaGemvWarps * kMmaGemvUnroll) {
    uint4 a_lo[kMmaGemvUnroll], a_hi[kMmaGemvUnroll], b[kMmaGemvUnroll];
#pragma unroll
    for (int u = 0; u < kMmaGemvUnroll; ++u) {
      const int offset = (first + u * kMmaGemvWarps) * 64 + 16 * t;
      const bool in_k = first + u * kMmaGemvWarps < num_blocks && offset < k;
      const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
      a_lo[u] = in_k ? load_streaming(w_lo + offset) : zero;
      a_hi[u] = in_k ? load_streaming(w_hi + offset) : zero;
      b[u] = in_k && has_token ? __ldg(reinterpret_cast<const uint4*>(x_row + offset)) : zero;
    }
#pragma unroll
    for (int u = 0; u < kMmaGemvUnroll; ++u) {
      mma_e4m3_16x8x32(c, a_lo[u].x, a_hi[u].x, a_lo[u].y, a_hi[u].y, b[u].x, b[u].y);
      mma_e4m3_16x8x32(c, a_lo[u].z, a_hi[u].z, a_lo[u].w, a_hi[u].w, b[u].z, b[u].w);
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) partial[warp][lane][i] = c[i];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float total = 0.f;
#pragma unroll
    for (int v = 0; v < kMmaGemvWarps; ++v) total += partial[v][lane][i];
    const int col = col0 + g + (i >= 2 ? 8 : 0);
    const int token = 2 * t + (i & 1);
    if (col < n && token < m) {
      float value = total * x_scale[token] * w_scale[col];
      if (bias != nullptr) value += to_float(bias[col]);
      y[static_cast<long long>(token) * n + col] = from_float<__nv_bfloat16>(value);
    }
  }
}

// Weight-only FP8 for one-token steps (quantization.FP8_WEIGHT_ONLY_MAX_TOKENS):
//
//   y[n] = w_scale[n] * sum_k x[k] * w_q[n, k]  (+ b[n]),  x and y 16-bit (T)
//
// No quantizer runs before it and the norms before it write 16-bit rows: at batch 1 every
// launch between two weight streams is exposed time (an H200's FP8 step was 77 % of its
// roofline with them). The streaming is the CUDA-core kernel's; a 16-byte weight chunk (16
// weights) meets 32 bytes of x, read through L1 by every warp.
//
// _silu: the gated MLP's gate|up (n = 2d weight rows) with SiLU-and-mul as its epilogue,
// y [d]. A CTA's first kGemvWarps / 2 warps take gate rows c0 .. c0 + 3, the others the up
// rows d + c0 .. d + c0 + 3 (d a multiple of 4: the wrapper checks); gate and up are rounded
// to T first, as the unfused GEMV and silu_and_mul would store them.
constexpr int kSiluColumns = kGemvWarps / 2;

template <typename T>
__device__ __forceinline__ float dot16_w8a16(uint4 w_raw, const T* __restrict__ x16) {
  const unsigned short* w = reinterpret_cast<const unsigned short*>(&w_raw);
  Vec8<T> x[2];
  x[0].raw = __ldg(reinterpret_cast<const uint4*>(x16));
  x[1].raw = __ldg(reinterpret_cast<const uint4*>(x16) + 1);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float2 wf = e4m3x2_to_float2(w[i]);
    sum = fmaf(wf.x, x[i / 4].get(2 * (i % 4)), sum);
    sum = fmaf(wf.y, x[i / 4].get(2 * (i % 4) + 1), sum);
  }
  return sum;
}

template <typename T>
__device__ __forceinline__ float w8a16_row(const unsigned char* __restrict__ w,
                                           const float* __restrict__ w_scale,
                                           const T* __restrict__ x, int row, int k) {
  float acc[1] = {0.f};
  gemv_stream_row<1, kGemvUnroll>(
      acc, reinterpret_cast<const uint4*>(w + static_cast<long long>(row) * k), k / 16,
      [&](uint4 w_raw, int, int chunk) { return dot16_w8a16<T>(w_raw, x + 16 * chunk); });
  return warp_sum(acc[0]) * w_scale[row];
}

#define INFLIGHTD_GEMV_W8A16(T, SUFFIX)                                                         \
  extern "C" __global__ void __launch_bounds__(32 * kGemvWarps) gemv_w8a16_##SUFFIX(            \
      T* y, const unsigned char* w, const float* w_scale, const T* x, const T* bias, int n,     \
      int k) {                                                                                   \
    const int row = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);                               \
    if (row >= n) return;                                                                        \
    const float total = w8a16_row<T>(w, w_scale, x, row, k);                                     \
    if ((threadIdx.x & 31) == 0)                                                                 \
      y[row] = from_float<T>(bias == nullptr ? total : total + to_float(bias[row]));            \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(32 * kGemvWarps) gemv_w8a16_silu_##SUFFIX(       \
      T* y, const unsigned char* w, const float* w_scale, const T* x, int n, int k) {           \
    __shared__ float up[kSiluColumns];                                                           \
    const int warp = threadIdx.x >> 5;                                                           \
    const int col = blockIdx.x * kSiluColumns + warp % kSiluColumns;                             \
    const bool is_up = warp >= kSiluColumns;                                                     \
    const float total =                                                                          \
        round_to<T>(w8a16_row<T>(w, w_scale, x, is_up ? n / 2 + col : col, k));                  \
    if (is_up && (threadIdx.x & 31) == 0) up[warp - kSiluColumns] = total;                       \
    __syncthreads();                                                                             \
    if (!is_up && (threadIdx.x & 31) == 0)                                                       \
      y[col] = from_float<T>(round_to<T>(fast_silu(total)) * up[warp]);                         \
  }

INFLIGHTD_GEMV_W8A16(__nv_bfloat16, bf16)
INFLIGHTD_GEMV_W8A16(__half, fp16)
