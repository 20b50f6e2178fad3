// Integer weights (server/engine/models/int_weights.py's IntWeight) turned into pairs of
// 16-bit values in registers, for the W4A16 / W8A16 GEMV (gemv_int.cu) and the dequantize
// kernel (dequantize_int.cu).
//
//   bits 4: w = (q - zero) * scale     q in 0..15, zero an integer in 0..15
//   bits 8: w = q * scale              q in -128..127
//
// Rounding is IntWeight.dequantize's, bit for bit: q - zero and q are small integers, exact
// in T, so the product with the scale is the one rounding (__hmul2_rn), as float32 followed by
// .to(T) rounds it (the exact product fits in float32). A fractional zero point would be
// rounded to an integer here: every 4-bit format (AWQ, GPTQ, round-to-nearest) writes integers.
//
// A 16-byte chunk of a weight row holds 32 int4 or 16 int8 values, all of one group (group
// sizes are multiples of the chunk; the Python side checks), so one scale and one zero per
// chunk and row. Scales and zeros are read as their raw 16 bits and doubled into T pairs.
#pragma once

#include "common.cuh"

namespace inflightd {

// Bits of a 16-bit float whose mantissa's low bits are an unsigned integer u: its value is
// kMagic + u, exactly, for u < 128 (bf16, 7 mantissa bits) or u < 1024 (fp16, 10 bits).
template <typename T> struct IntMagic;
template <> struct IntMagic<__nv_bfloat16> {
  static constexpr unsigned kBits = 0x4300u;  // 128.0
  static constexpr float kValue = 128.f;
};
template <> struct IntMagic<__half> {
  static constexpr unsigned kBits = 0x6400u;  // 1024.0
  static constexpr float kValue = 1024.f;
};

template <typename T> __device__ __forceinline__ unsigned add2_rn(unsigned a, unsigned b);
template <typename T> __device__ __forceinline__ unsigned sub2_rn(unsigned a, unsigned b);
template <typename T> __device__ __forceinline__ unsigned mul2_rn(unsigned a, unsigned b);
template <> __device__ __forceinline__ unsigned add2_rn<__nv_bfloat16>(unsigned a, unsigned b) {
  __nv_bfloat162 r = __hadd2_rn(*reinterpret_cast<__nv_bfloat162*>(&a),
                                *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<unsigned*>(&r);
}
template <> __device__ __forceinline__ unsigned sub2_rn<__nv_bfloat16>(unsigned a, unsigned b) {
  __nv_bfloat162 r = __hsub2_rn(*reinterpret_cast<__nv_bfloat162*>(&a),
                                *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<unsigned*>(&r);
}
template <> __device__ __forceinline__ unsigned mul2_rn<__nv_bfloat16>(unsigned a, unsigned b) {
  __nv_bfloat162 r = __hmul2_rn(*reinterpret_cast<__nv_bfloat162*>(&a),
                                *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<unsigned*>(&r);
}
template <> __device__ __forceinline__ unsigned add2_rn<__half>(unsigned a, unsigned b) {
  __half2 r = __hadd2_rn(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<unsigned*>(&r);
}
template <> __device__ __forceinline__ unsigned sub2_rn<__half>(unsigned a, unsigned b) {
  __half2 r = __hsub2_rn(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<unsigned*>(&r);
}
template <> __device__ __forceinline__ unsigned mul2_rn<__half>(unsigned a, unsigned b) {
  __half2 r = __hmul2_rn(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<unsigned*>(&r);
}

// (a & b) | c in one LOP3: written out, the compiler splits it in two, as an instruction
// takes only one immediate and both masks are constants.
__device__ __forceinline__ unsigned and_or(unsigned a, unsigned b, unsigned c) {
  unsigned d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// One row's scale and zero for a chunk, as T pairs: scale2 = (s, s); zero2 = (kMagic + z,
// kMagic + z), the value that takes the magic and the zero off (q | kMagic) in one subtraction.
struct ChunkScale {
  unsigned scale2;
  unsigned zero2;
};

template <typename T>
__device__ __forceinline__ ChunkScale chunk_scale(unsigned short scale, unsigned short zero) {
  constexpr unsigned kMagic2 = IntMagic<T>::kBits * 0x10001u;
  ChunkScale out;
  out.scale2 = scale * 0x10001u;
  out.zero2 = add2_rn<T>(zero * 0x10001u, kMagic2);  // exact for integer zeros
  return out;
}

// 8 int4 values (one 32-bit word of a packed row) as 4 T pairs, in this order:
//
//   word bits:  | c7 | c6 | c5 | c4 | c3 | c2 | c1 | c0 |   (4 bits each, c0 lowest:
//                                                           pack_int4 puts even columns low)
//   (word >> 4s) & 0x000F000F  =  c_s in the low half, c_(s+4) in the high half
//   pairs[s] = (c_s, c_(s+4)) * scale,   s = 0..3
//
// One shift and one LOP3 per pair; the caller matches x to this order (or undoes it).
// SCALE false: (c - z) alone, for callers that apply the scale to the sums (gemv_int.cu).
template <typename T, bool SCALE = true>
__device__ __forceinline__ void int4_word_to_pairs(unsigned word, ChunkScale cs,
                                                   unsigned (&pairs)[4]) {
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const unsigned raw = and_or(word >> (4 * s), 0x000F000Fu, IntMagic<T>::kBits * 0x10001u);
    pairs[s] = sub2_rn<T>(raw, cs.zero2);  // kMagic + c - (kMagic + z)
    if (SCALE) pairs[s] = mul2_rn<T>(pairs[s], cs.scale2);
  }
}

// 4 int8 values (one word, c0 in the low byte) as 2 T pairs in column order, unscaled:
// pairs[0] = (c0, c1), pairs[1] = (c2, c3). Flipping the sign bits makes each byte
// u = q + 128 in 0..255, which the magic of a wider float holds exactly.
__device__ __forceinline__ void int8_word_to_pairs_impl(unsigned word, unsigned (&pairs)[2],
                                                        const __nv_bfloat16*) {
  // bf16 has 8 significant bits, too few for 128 + u, so via float32: the byte under the
  // exponent of 2^23 is the float 2^23 + u; less 2^23 + 128 it is q, and q (|q| <= 128)
  // is exact in the float's upper 16 bits, which are its bf16.
  const unsigned u = word ^ 0x80808080u;
  unsigned hi16[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float f = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540u | i)) - 8388736.f;
    hi16[i] = __float_as_uint(f);
  }
  pairs[0] = __byte_perm(hi16[0], hi16[1], 0x7632u);
  pairs[1] = __byte_perm(hi16[2], hi16[3], 0x7632u);
}

__device__ __forceinline__ void int8_word_to_pairs_impl(unsigned word, unsigned (&pairs)[2],
                                                        const __half*) {
  // fp16: each byte under 0x64 is 1024 + u; less 1024 + 128 it is q
  const unsigned u = word ^ 0x80808080u;
  constexpr unsigned kBias2 = 0x64806480u;  // (1152, 1152) in fp16
  pairs[0] = sub2_rn<__half>(__byte_perm(u, 0x64646464u, 0x4140u), kBias2);
  pairs[1] = sub2_rn<__half>(__byte_perm(u, 0x64646464u, 0x4342u), kBias2);
}

// SCALE false: q alone, for callers that apply the scale to the sums (gemv_int.cu).
template <typename T, bool SCALE = true>
__device__ __forceinline__ void int8_word_to_pairs(unsigned word, unsigned scale2,
                                                   unsigned (&pairs)[2]) {
  int8_word_to_pairs_impl(word, pairs, static_cast<const T*>(nullptr));
  if (SCALE) {
    pairs[0] = mul2_rn<T>(pairs[0], scale2);
    pairs[1] = mul2_rn<T>(pairs[1], scale2);
  }
}

__device__ __forceinline__ unsigned word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

}  // namespace inflightd
