// Rotary embedding of q and k fused with writing k and v into the paged KV cache.
//
// HF "rotate_half" layout: for i < D/2 the pair is (x[i], x[i + D/2]) with angle i, and
//     out[i]       = x[i] * cos_i - x[i + D/2] * sin_i
//     out[i + D/2] = x[i + D/2] * cos_i + x[i] * sin_i
// cos_sin [max_positions, D] holds cos_i in its first half and sin_i in its second.
//
// kv_cache [2, num_blocks, block_size, Hkv, D] of KvT: slot s = block * block_size + offset is row s
// of the K plane viewed as [num_slots, Hkv, D] (and of the V plane, num_slots rows later).
// q, k, v may be views into a fused qkv projection: rows `*_stride` elements apart, each row
// [H, D] contiguous. Rotated q and k go to fresh contiguous outputs; the inputs are not changed.
// One CTA per token; each thread rotates 8 pairs at a time with 16-byte loads.
//
// An e4m3 cache (KvT = Fp8, --kv-cache-dtype fp8) stores each value as its T rounding (what
// k_out holds) rounded again to e4m3, saturated to +-448, as the torch reference does.
#include "common.cuh"
#include "fp8.cuh"

using namespace inflightd;

// Eight values into the cache: as they are, or as eight e4m3 bytes.
template <typename T>
__device__ __forceinline__ void store8(T* dst, const Vec8<T>& v) { v.store(dst); }

template <typename T>
__device__ __forceinline__ void store8(Fp8* dst, const Vec8<T>& v) {
  uint2 packed;
  packed.x = to_e4m3x2(v.get(0), v.get(1)) | (to_e4m3x2(v.get(2), v.get(3)) << 16);
  packed.y = to_e4m3x2(v.get(4), v.get(5)) | (to_e4m3x2(v.get(6), v.get(7)) << 16);
  *reinterpret_cast<uint2*>(dst) = packed;
}

template <typename T, typename KvT>
__device__ __forceinline__ void rotate8(const T* src, T* dst, KvT* cache_dst, const float (&c)[8],
                                        const float (&s)[8], int i0, int half) {
  Vec8<T> lo;
  Vec8<T> hi;
  lo.load(src + i0);
  hi.load(src + half + i0);
  Vec8<T> out_lo;
  Vec8<T> out_hi;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float a = lo.get(j);
    const float b = hi.get(j);
    out_lo.set(j, a * c[j] - b * s[j]);
    out_hi.set(j, b * c[j] + a * s[j]);
  }
  out_lo.store(dst + i0);
  out_hi.store(dst + half + i0);
  if (cache_dst != nullptr) {
    store8(cache_dst + i0, out_lo);
    store8(cache_dst + half + i0, out_hi);
  }
}

template <typename T, typename C, typename KvT>
__device__ __forceinline__ void rope_and_cache_impl(
    T* __restrict__ q_out, T* __restrict__ k_out, KvT* __restrict__ kv_cache,
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const long long* __restrict__ positions, const C* __restrict__ cos_sin,
    const long long* __restrict__ slot_mapping, int num_heads, int num_kv_heads, int head_dim,
    long long q_stride, long long k_stride, long long v_stride, long long num_slots,
    long long max_positions) {
  const long long token = blockIdx.x;
  const long long pos = positions[token];
  const long long slot = slot_mapping[token];
  const int half = head_dim / 2;
  const int chunks_per_half = half / 8;
  const long long kv_row = static_cast<long long>(num_kv_heads) * head_dim;
  // A slot outside the pool would corrupt memory: such tokens are not cached.
  const bool cache_it = slot >= 0 && slot < num_slots;
  KvT* k_cache = kv_cache + slot * kv_row;
  KvT* v_cache = kv_cache + (num_slots + slot) * kv_row;
  // A position past the table has no angle: its outputs become NaN rather than read outside.
  const bool pos_ok = pos >= 0 && pos < max_positions;
  const C* angles = cos_sin + (pos_ok ? pos : 0) * head_dim;
  const float poison = pos_ok ? 1.f : __int_as_float(0x7fc00000);

  const int rotations = (num_heads + num_kv_heads) * chunks_per_half;
  for (int item = threadIdx.x; item < rotations; item += blockDim.x) {
    const int head = item / chunks_per_half;
    const int i0 = (item - head * chunks_per_half) * 8;
    Vec8Float<C> c;
    Vec8Float<C> s;
    c.load(angles + i0);
    s.load(angles + half + i0);
#pragma unroll
    for (int j = 0; j < 8; ++j) c.v[j] *= poison;
    if (head < num_heads) {
      rotate8<T, KvT>(q + token * q_stride + head * head_dim,
                      q_out + (token * num_heads + head) * head_dim, nullptr, c.v, s.v, i0,
                      half);
    } else {
      const int h = head - num_heads;
      rotate8<T, KvT>(k + token * k_stride + h * head_dim,
                      k_out + (token * num_kv_heads + h) * head_dim,
                      cache_it ? k_cache + h * head_dim : nullptr, c.v, s.v, i0, half);
    }
  }
  if (!cache_it) return;
  const int chunks_per_head = head_dim / 8;
  const int copies = num_kv_heads * chunks_per_head;
  for (int item = threadIdx.x; item < copies; item += blockDim.x) {
    const int h = item / chunks_per_head;
    const int i0 = (item - h * chunks_per_head) * 8;
    Vec8<T> val;
    val.load(v + token * v_stride + h * head_dim + i0);
    store8(v_cache + h * head_dim + i0, val);
  }
}

#define INFLIGHTD_ROPE_AND_CACHE(T, C, KvT, NAME)                                               \
  extern "C" __global__ void __launch_bounds__(256) NAME(                                        \
      T* q_out, T* k_out, KvT* kv_cache, const T* q, const T* k, const T* v,                    \
      const long long* positions, const C* cos_sin, const long long* slot_mapping,              \
      int num_heads, int num_kv_heads, int head_dim, long long q_stride, long long k_stride,    \
      long long v_stride, long long num_slots, long long max_positions) {                       \
    inflightd::wait_for_previous_kernel();                                                      \
    rope_and_cache_impl<T, C, KvT>(q_out, k_out, kv_cache, q, k, v, positions, cos_sin,          \
                                   slot_mapping, num_heads, num_kv_heads, head_dim, q_stride,    \
                                   k_stride, v_stride, num_slots, max_positions);                \
  }

INFLIGHTD_ROPE_AND_CACHE(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, rope_and_cache_bf16)
INFLIGHTD_ROPE_AND_CACHE(__nv_bfloat16, float, __nv_bfloat16, rope_and_cache_bf16_f32cos)
INFLIGHTD_ROPE_AND_CACHE(__half, __half, __half, rope_and_cache_fp16)
INFLIGHTD_ROPE_AND_CACHE(__half, float, __half, rope_and_cache_fp16_f32cos)
INFLIGHTD_ROPE_AND_CACHE(__nv_bfloat16, __nv_bfloat16, Fp8, rope_and_cache_bf16_kvfp8)
INFLIGHTD_ROPE_AND_CACHE(__nv_bfloat16, float, Fp8, rope_and_cache_bf16_f32cos_kvfp8)
INFLIGHTD_ROPE_AND_CACHE(__half, __half, Fp8, rope_and_cache_fp16_kvfp8)
INFLIGHTD_ROPE_AND_CACHE(__half, float, Fp8, rope_and_cache_fp16_f32cos_kvfp8)
