// How a warp of the paged attention kernel (paged_attention.cuh) turns its Q rows and a
// shared-memory K/V tile into tensor-core operands, for each kind of KV cache:
//
// - Fragments<T, T>, a 16-bit cache: ldmatrix gives the B operands as they are, mma in T.
// - Fragments<T, Fp8>, an e4m3 cache (--kv-cache-dtype fp8): ldmatrix on the bytes, each
//   register four e4m3 values, widened to half exactly (cvt.f16x2.e4m3x2); mma in half
//   whatever T is (Q is converted once, P lies in [0, 1]).
//
// The fp8 layouts. ldmatrix moves 16-bit elements, so on bytes a lane receives four values
// where the mma wants two, and the order of the reduction dimension changes:
//
// S = Q K^T: a lane gets dims 4t .. 4t+3 of key g in a 16-dim chunk, so the chunk's
// logical k = 2t, 2t+1 | 2t+8, 2t+9 are dims 4t, 4t+1 | 4t+2, 4t+3, and Q's A fragments
// are loaded in that order too (a dot product does not care how its terms are ordered).
//
// O = P V: ldmatrix.trans gives a lane keys 2t, 2t+1 of dims 2g, 2g+1 (one byte each); a
// byte permute regroups them with keys 2t+8, 2t+9 into an "even" B operand (dim 2g) and an
// "odd" one (dim 2g+1), so a 16-dim chunk is two n8 products whose C columns are dims
//
//   # even: 4t, 4t+2 | odd: 4t+1, 4t+3     (pair(i) below puts them back in order)
#pragma once

#include "attention_common.cuh"
#include "common.cuh"
#include "fp8.cuh"
#include "mma.cuh"

namespace inflightd {

// Padding after each K/V row against bank conflicts: 16 bytes, so that a row spans an odd
// number of 16-byte units and ldmatrix's 8 rows land on 8 different ones; 32 where the row
// itself is an odd number of units (e4m3 at D = 80: 80 + 16 bytes would pair rows up).
template <typename KvT, int D>
struct KvRowPad {
  static constexpr int kBytes = D * static_cast<int>(sizeof(KvT)) / 16 % 2 == 0 ? 16 : 32;
  static constexpr int kElems = kBytes / static_cast<int>(sizeof(KvT));
};

// [K or V][key][dim]
template <typename KvT, int D>
using KvTile = KvT[2][kBlockN][D + KvRowPad<KvT, D>::kElems];

// e4m3 tiles are read two 16-dim chunks (kc, kc + 1) per ldmatrix_x4, the second in tiles 2
// and 3. Where D / 16 is odd (D = 80) the last chunk comes alone, in tiles 0 and 1 of an x2:
// the lane addresses are the same, since lanes 0..15 point into chunk kc either way.
template <int D>
__device__ __forceinline__ constexpr int e4m3_chunks_at(int kc) {
  return kc + 1 < D / 16 ? 2 : 1;
}

template <bool TRANS>
__device__ __forceinline__ void ldmatrix_e4m3_chunks(unsigned (&r)[4], const void* smem_row,
                                                     int chunks) {
  if (chunks == 2) {
    TRANS ? ldmatrix_x4_trans(r, smem_row) : ldmatrix_x4(r, smem_row);
  } else {
    TRANS ? ldmatrix_x2_trans(r, smem_row) : ldmatrix_x2(r, smem_row);
  }
}

template <typename T, typename KvT> struct Fragments;

// Elements of a Q row in shared memory: 16 bytes of padding against bank conflicts.
template <int D>
struct QRow {
  static constexpr int kPad = D + 8;
};

// Chunk kc of the A fragments of a warp's 16 Q rows (qw: its first row, PAD elements apart):
// register pair (0, 1) holds dims kc * 16 + lo and the next one of rows g and g + 8, pair
// (2, 3) dims kc * 16 + hi and the next, each passed through `convert`.
template <int PAD, typename T, typename Convert>
__device__ __forceinline__ void load_q_chunk(unsigned (&r)[4], const T* qw, int kc, int lo,
                                             int hi, Convert convert) {
  const int g = (threadIdx.x & 31) >> 2;
  r[0] = convert(load_u32(qw + g * PAD + kc * 16 + lo));
  r[1] = convert(load_u32(qw + (g + 8) * PAD + kc * 16 + lo));
  r[2] = convert(load_u32(qw + g * PAD + kc * 16 + hi));
  r[3] = convert(load_u32(qw + (g + 8) * PAD + kc * 16 + hi));
}

// Q's A fragments read from shared memory at each use instead of held in registers: at head
// dim 256 the 64 registers they would take are what the accumulator (128 floats) needs.
// q[kc] is what Fragments::load_q puts in its register row kc; the Q tile must stay put
// (SmemLayout keeps it after the K/V stages).
template <typename T, typename KvT, int D>
struct SmemQFragments {
  using Regs = unsigned[4];
  struct Chunk {
    Regs r;
    __device__ __forceinline__ operator const Regs&() const { return r; }
  };
  const T* warp_rows;  // the warp's first Q row
  __device__ __forceinline__ Chunk operator[](int kc) const {
    Chunk chunk;
    Fragments<T, KvT>::template load_q_chunk<QRow<D>::kPad>(chunk.r, warp_rows, kc);
    return chunk;
  }
};

template <typename T> struct Fragments<T, T> {
  using MmaT = T;

  template <int PAD>
  static __device__ __forceinline__ void load_q_chunk(unsigned (&r)[4], const T* qw, int kc) {
    const int t = threadIdx.x & 3;
    inflightd::load_q_chunk<PAD>(r, qw, kc, 2 * t, 2 * t + 8, [](unsigned x) { return x; });
  }

  template <int D, int PAD>
  static __device__ __forceinline__ void load_q(unsigned (&qa)[D / 16][4], const T* qw) {
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) load_q_chunk<PAD>(qa[kc], qw, kc);
  }

  // s[nt] += Q K^T for keys key_base + 8 nt .. + 7 of the tile. qa: Q's fragments, in
  // registers (unsigned[D / 16][4]) or SmemQFragments.
  template <int D, int KEYS, typename QFragments>
  static __device__ __forceinline__ void scores(float (&s)[KEYS / 8][4],
                                                const KvTile<T, D>& kv, const QFragments& qa,
                                                int key_base) {
    // B fragments of two 8-key score tiles at once: ldmatrix tiles (keys 0-7, dims 0-7),
    // (keys 0-7, dims 8-15), (keys 8-15, dims 0-7), (keys 8-15, dims 8-15) of the chunk.
    const int lane = threadIdx.x & 31;
    const int key_in_pair = ((lane >> 3) >> 1) * 8 + (lane & 7);
    const int dim_in_chunk = ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      const auto& q = qa[kc];  // read from shared memory once per chunk, if it lives there
#pragma unroll
      for (int np = 0; np < KEYS / 16; ++np) {
        unsigned kb[4];
        ldmatrix_x4(kb, &kv[0][key_base + np * 16 + key_in_pair][kc * 16 + dim_in_chunk]);
        mma_16816<T>(s[2 * np], q, kb[0], kb[1]);
        mma_16816<T>(s[2 * np + 1], q, kb[2], kb[3]);
      }
    }
  }

  // acc += P V over 16 keys (pa: P's A fragment) at key `key0` of the tile.
  template <int D>
  static __device__ __forceinline__ void accumulate(float (&acc)[D / 8][4],
                                                    const KvTile<T, D>& kv,
                                                    const unsigned (&pa)[4], int key0) {
    const int lane = threadIdx.x & 31;
    const int key_in_chunk = ((lane >> 3) & 1) * 8 + (lane & 7);
    const int dim_in_pair = ((lane >> 3) >> 1) * 8;
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      unsigned vb[4];
      ldmatrix_x4_trans(vb, &kv[1][key0 + key_in_chunk][dp * 16 + dim_in_pair]);
      mma_16816<T>(acc[2 * dp], pa, vb[0], vb[1]);
      mma_16816<T>(acc[2 * dp + 1], pa, vb[2], vb[3]);
    }
  }

  // Output pair i (of D / 8) of row half h: its two values and the first one's dim.
  template <int D>
  static __device__ __forceinline__ int pair(const float (&acc)[D / 8][4], int i, int h,
                                             float& a, float& b) {
    a = acc[i][2 * h];
    b = acc[i][2 * h + 1];
    return i * 8 + 2 * (threadIdx.x & 3);
  }
};

// A bf16 pair as a half pair, clamped to half's range (a query beyond 65504 would be inf).
template <typename T> __device__ __forceinline__ unsigned to_half2(unsigned x);
template <> __device__ __forceinline__ unsigned to_half2<__half>(unsigned x) { return x; }
template <> __device__ __forceinline__ unsigned to_half2<__nv_bfloat16>(unsigned x) {
  float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
  f.x = fminf(fmaxf(f.x, -65504.f), 65504.f);
  f.y = fminf(fmaxf(f.y, -65504.f), 65504.f);
  return pack2<__half>(f.x, f.y);
}

template <typename T> struct Fragments<T, Fp8> {
  using MmaT = __half;

  template <int PAD>
  static __device__ __forceinline__ void load_q_chunk(unsigned (&r)[4], const T* qw, int kc) {
    const int t = threadIdx.x & 3;
    inflightd::load_q_chunk<PAD>(r, qw, kc, 4 * t, 4 * t + 2,
                                 [](unsigned x) { return to_half2<T>(x); });
  }

  template <int D, int PAD>
  static __device__ __forceinline__ void load_q(unsigned (&qa)[D / 16][4], const T* qw) {
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) load_q_chunk<PAD>(qa[kc], qw, kc);
  }

  template <int D, int KEYS, typename QFragments>
  static __device__ __forceinline__ void scores(float (&s)[KEYS / 8][4],
                                                const KvTile<Fp8, D>& kv, const QFragments& qa,
                                                int key_base) {
    // ldmatrix tiles (8 keys x 16 dims of bytes): (keys 0-7, chunk kc), (keys 8-15, kc),
    // (keys 0-7, kc + 1), (keys 8-15, kc + 1).
    const int lane = threadIdx.x & 31;
    const int key_in_pair = ((lane >> 3) & 1) * 8 + (lane & 7);
    const int dim_in_pair = ((lane >> 3) >> 1) * 16;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc += 2) {
      const int chunks = e4m3_chunks_at<D>(kc);
      const auto& q0 = qa[kc];
      const auto& q1 = qa[kc + chunks - 1];
#pragma unroll
      for (int np = 0; np < KEYS / 16; ++np) {
        unsigned kb[4];
        ldmatrix_e4m3_chunks<false>(
            kb, &kv[0][key_base + np * 16 + key_in_pair][kc * 16 + dim_in_pair], chunks);
#pragma unroll
        for (int i = 0; i < 2 * chunks; ++i) {
          unsigned b0, b1;
          e4m3x4_to_half2x2(kb[i], b0, b1);
          mma_16816<__half>(s[2 * np + (i & 1)], i >> 1 ? q1 : q0, b0, b1);
        }
      }
    }
  }

  template <int D>
  static __device__ __forceinline__ void accumulate(float (&acc)[D / 8][4],
                                                    const KvTile<Fp8, D>& kv,
                                                    const unsigned (&pa)[4], int key0) {
    // ldmatrix.trans tiles: (keys 0-7, chunk dp), (keys 8-15, dp), (keys 0-7, dp + 1), ...
    const int lane = threadIdx.x & 31;
    const int key_in_chunk = ((lane >> 3) & 1) * 8 + (lane & 7);
    const int dim_in_pair = ((lane >> 3) >> 1) * 16;
#pragma unroll
    for (int dp = 0; dp < D / 16; dp += 2) {
      const int chunks = e4m3_chunks_at<D>(dp);
      unsigned vb[4];
      ldmatrix_e4m3_chunks<true>(vb, &kv[1][key0 + key_in_chunk][dp * 16 + dim_in_pair],
                                 chunks);
#pragma unroll
      for (int c = 0; c < chunks; ++c) {
        // (keys 2t, 2t+1, 2t+8, 2t+9) of dim 2g, then of dim 2g + 1
        const unsigned even = __byte_perm(vb[2 * c], vb[2 * c + 1], 0x6420);
        const unsigned odd = __byte_perm(vb[2 * c], vb[2 * c + 1], 0x7531);
        unsigned b0, b1;
        e4m3x4_to_half2x2(even, b0, b1);
        mma_16816<__half>(acc[2 * (dp + c)], pa, b0, b1);
        e4m3x4_to_half2x2(odd, b0, b1);
        mma_16816<__half>(acc[2 * (dp + c) + 1], pa, b0, b1);
      }
    }
  }

  template <int D>
  static __device__ __forceinline__ int pair(const float (&acc)[D / 8][4], int i, int h,
                                             float& a, float& b) {
    const int chunk = i >> 1;
    const int j = i & 1;
    a = acc[2 * chunk][2 * h + j];
    b = acc[2 * chunk + 1][2 * h + j];
    return chunk * 16 + 4 * (threadIdx.x & 3) + 2 * j;
  }
};

}  // namespace inflightd
