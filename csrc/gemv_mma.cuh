// The end of the tensor-core GEMVs (gemv_int.cu, w8a8.cu): a CTA owns 16 output columns (the
// MMA's M) and TILES tiles of 8 tokens (its N), its WARPS warps each hold partial sums of
// every (column, token) over their share of K in the MMA's C layout:
//
//   # lane (g = lane / 4, t = lane % 4), tile i: c[i][0], c[i][1] = column g, tokens
//   #   8i + 2t, 8i + 2t + 1; c[i][2], c[i][3] = column g + 8, the same tokens
//
// They meet in shared memory, and each (column, token) inside n and m is handed with its
// total to emit(col, token, sum) (reduce_mma_gated: gate and up sums of one output).
#pragma once

namespace inflightd {

// Each warp's C in shared memory ([warp][register][lane]: a warp's stores are one row); the
// sum over warps of (register, lane) is then total(partial, register, lane).
template <int WARPS, int TILES, typename Acc>
__device__ __forceinline__ auto stash_mma_partials(const Acc (&c)[TILES][4]) {
  __shared__ Acc partial[WARPS][TILES * 4][32];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int tile = 0; tile < TILES; ++tile) {
#pragma unroll
    for (int r = 0; r < 4; ++r) partial[warp][tile * 4 + r][lane] = c[tile][r];
  }
  __syncthreads();
  return partial;
}

template <int WARPS, int TILES, typename Acc>
__device__ __forceinline__ Acc total(const Acc (*partial)[TILES * 4][32], int reg, int lane) {
  Acc sum = 0;
#pragma unroll
  for (int v = 0; v < WARPS; ++v) sum += partial[v][reg][lane];
  return sum;
}

template <int WARPS, int TILES, typename Acc, typename Emit>
__device__ __forceinline__ void reduce_mma_columns(const Acc (&c)[TILES][4], int m, int n,
                                                   Emit emit) {
  const auto partial = stash_mma_partials<WARPS, TILES>(c);
  const int col0 = blockIdx.x * 16;
  for (int o = threadIdx.x; o < TILES * 4 * 32; o += blockDim.x) {
    const int reg = o >> 5;
    const int l = o & 31;
    const int col = col0 + (l >> 2) + ((reg & 3) >= 2 ? 8 : 0);
    const int token = (reg >> 2) * 8 + 2 * (l & 3) + (reg & 1);
    if (col < n && token < m) emit(col, token, total<WARPS, TILES>(partial, reg, l));
  }
}

// The gated MLP's gate|up projection: the CTA's rows g are gate rows, its rows g + 8 the up
// rows of the same 8 outputs (col0 = 8 * blockIdx.x), so c[i][0..1] pair with c[i][2..3]
// and emit(col, token, gate, up) gets both sums of output col < d.
template <int WARPS, int TILES, typename Acc, typename Emit>
__device__ __forceinline__ void reduce_mma_gated(const Acc (&c)[TILES][4], int m, int d,
                                                 Emit emit) {
  const auto partial = stash_mma_partials<WARPS, TILES>(c);
  const int col0 = blockIdx.x * 8;
  for (int o = threadIdx.x; o < TILES * 2 * 32; o += blockDim.x) {
    const int pair = o >> 5;  // its tile is pair >> 1, its token's parity pair & 1
    const int l = o & 31;
    const int reg = (pair >> 1) * 4 + (pair & 1);  // the gate's register; the up's is reg + 2
    const int col = col0 + (l >> 2);
    const int token = (pair >> 1) * 8 + 2 * (l & 3) + (pair & 1);
    if (col < d && token < m) {
      emit(col, token, total<WARPS, TILES>(partial, reg, l),
           total<WARPS, TILES>(partial, reg + 2, l));
    }
  }
}

}  // namespace inflightd
