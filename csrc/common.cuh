// Shared device helpers: element conversions, 16-byte vectors, warp reductions.
// Every kernel computes in float32 and rounds once when it stores.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace inflightd {

template <typename T> struct Pair;
template <> struct Pair<__nv_bfloat16> { using type = __nv_bfloat162; };
template <> struct Pair<__half> { using type = __half2; };

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(float x) { return x; }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }

// Rounds x to T and back: reproduces a reference that stores an intermediate in T.
template <typename T> __device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

// Two floats packed into one 32-bit register of T pairs (low half = a).
template <typename T> __device__ __forceinline__ unsigned pack2(float a, float b);
template <> __device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<unsigned*>(&v);
}
template <> __device__ __forceinline__ unsigned pack2<__half>(float a, float b) {
  __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<unsigned*>(&v);
}

// Eight elements of a 2-byte type moved as one 16-byte access.
template <typename T> struct Vec8 {
  static_assert(sizeof(T) == 2, "Vec8 holds 2-byte elements");
  uint4 raw;
  __device__ __forceinline__ void load(const T* p) { raw = *reinterpret_cast<const uint4*>(p); }
  __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
  __device__ __forceinline__ float get(int i) const {
    return to_float(reinterpret_cast<const T*>(&raw)[i]);
  }
  __device__ __forceinline__ void set(int i, float v) {
    reinterpret_cast<T*>(&raw)[i] = from_float<T>(v);
  }
};

// Eight consecutive elements of T (2-byte types or float) read as floats, 16 bytes at a time.
template <typename T> struct Vec8Float {
  float v[8];
  __device__ __forceinline__ void load(const T* p) {
    Vec8<T> raw;
    raw.load(p);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = raw.get(i);
  }
};
template <> struct Vec8Float<float> {
  float v[8];
  __device__ __forceinline__ void load(const float* p) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  }
};

// Programmatic dependent launch (sm_90 and later). Launched with the PDL attribute
// (KernelLibrary's programmatic_launch), a kernel's CTAs may start while the kernel before it
// in the stream drains; they must not read what it writes, nor write what it reads, before
// this wait, which returns once that kernel has finished and its writes are visible.
// Every kernel calls it before touching activations (a GEMV after its first weight loads,
// which depend on nothing), then lets the next kernel start early in turn: the next kernel's
// CTAs take SMs only as this one's last CTAs drain, and wait in the same way. Without the
// attribute, or before sm_90, it returns at once.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// 16 bytes read once (weights streamed by a GEMV): through the non-coherent path, not
// allocated in L1.
__device__ __forceinline__ uint4 load_streaming(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The GEMVs' shape (gemv.cu, gemv_fp8.cu): one warp per output column, kGemvWarps columns
// per CTA (GEMV_COLUMNS_PER_CTA on the Python side), kGemvUnroll loads in flight per lane.
constexpr int kGemvWarps = 8;
constexpr int kGemvUnroll = 8;

// The weight-streaming loop of the GEMVs (gemv.cu, gemv_fp8.cu). Lane j of a warp takes the
// 16-byte chunks j, j + 32, ... of its weight row, UNROLL of them loaded before any is used;
// dot(w_chunk, m, chunk) returns one chunk's products with row m of x. The first UNROLL
// loads are issued before wait_for_previous_kernel: under programmatic launch the weights
// start streaming while the kernel that writes x drains. Callers read x only inside dot.
template <int M, int UNROLL, typename Dot>
__device__ __forceinline__ void gemv_stream_row(float (&acc)[M], const uint4* w_row,
                                                int num_chunks, Dot dot) {
  int chunk = threadIdx.x & 31;
  bool waited = false;
  for (; chunk + 32 * (UNROLL - 1) < num_chunks; chunk += 32 * UNROLL) {
    uint4 w_raw[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) w_raw[u] = load_streaming(w_row + chunk + 32 * u);
    if (!waited) {
      wait_for_previous_kernel();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] += dot(w_raw[u], m, chunk + 32 * u);
    }
  }
  if (!waited) wait_for_previous_kernel();  // a row shorter than one round of loads
  for (; chunk < num_chunks; chunk += 32) {  // the tail: fewer than UNROLL chunks per lane
    const uint4 w_raw = load_streaming(w_row + chunk);
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] += dot(w_raw, m, chunk);
  }
}

// -inf as a value; NVRTC has no constexpr builtin for it.
__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// SiLU as activation.cu computes it under fast math (its exp and division), for the GEMVs
// that apply SiLU-and-mul in their epilogue without fast math (gemv_fp8.cu, gemv_int.cu).
__device__ __forceinline__ float fast_silu(float g) { return __fdividef(g, 1.f + __expf(-g)); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Sum over the whole block; `scratch` holds one float per warp. Every thread gets the total.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = (blockDim.x + 31) >> 5;
  x = warp_sum(x);
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < num_warps; ++w) total += scratch[w];
  return total;
}

// Largest value over the whole block; `scratch` holds one float per warp (not the one a
// block_sum of the same kernel uses). Every thread gets the result.
__device__ __forceinline__ float block_max(float x, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float result = 0.f;
  for (int w = 0; w < num_warps; ++w) result = fmaxf(result, scratch[w]);
  return result;
}

// This thread's largest |x| over its 8-element vectors of row[0, k), the CTA striding over
// the row (k a multiple of 8, 16-byte aligned).
template <typename T>
__device__ __forceinline__ float thread_row_absmax(const T* row, int k) {
  float absmax = 0.f;
  for (int i = threadIdx.x * 8; i < k; i += blockDim.x * 8) {
    Vec8Float<T> v;
    v.load(row + i);
#pragma unroll
    for (int j = 0; j < 8; ++j) absmax = fmaxf(absmax, fabsf(v.v[j]));
  }
  return absmax;
}

// The row quantizers (quantize.cu's FP8, w8a8.cu's int8), one CTA per row of x: the row's
// absmax over the block, scale[row] = scale_of(absmax), then each 8 values as 8 bytes
// pack8(values, scale) into q. The row is read twice; the second time from L2.
template <typename T, typename ScaleOf, typename Pack8>
__device__ __forceinline__ void quantize_rows_by_absmax(unsigned char* __restrict__ q,
                                                        float* __restrict__ scale,
                                                        const T* __restrict__ x, int k,
                                                        long long x_stride, ScaleOf scale_of,
                                                        Pack8 pack8) {
  __shared__ float scratch[32];
  const T* row = x + blockIdx.x * x_stride;
  const float s = scale_of(block_max(thread_row_absmax(row, k), scratch));
  if (threadIdx.x == 0) scale[blockIdx.x] = s;
  unsigned char* dst = q + blockIdx.x * static_cast<long long>(k);
  for (int i = threadIdx.x * 8; i < k; i += blockDim.x * 8) {
    Vec8Float<T> v;
    v.load(row + i);
    *reinterpret_cast<uint2*>(dst + i) = pack8(v.v, s);
  }
}

}  // namespace inflightd
