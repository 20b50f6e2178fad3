// The end of the tensor-core GEMVs (gemv_int.cu, w8a8.cu): a CTA owns 16 output columns (the
// MMA's M) and TILES tiles of 8 tokens (its N), its WARPS warps each hold partial sums of
// every (column, token) over their share of K in the MMA's C layout:
//
//   # lane (g = lane / 4, t = lane % 4), tile i: c[i][0], c[i][1] = column g, tokens
//   #   8i + 2t, 8i + 2t + 1; c[i][2], c[i][3] = column g + 8, the same tokens
//
// They meet in shared memory ([warp][register][lane], so the stores of a warp are one row),
// and each (column, token) inside n and m is handed with its total to emit(col, token, sum).
#pragma once

namespace inflightd {

template <int WARPS, int TILES, typename Acc, typename Emit>
__device__ __forceinline__ void reduce_mma_columns(const Acc (&c)[TILES][4], int m, int n,
                                                   Emit emit) {
  __shared__ Acc partial[WARPS][TILES * 4][32];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int col0 = blockIdx.x * 16;
#pragma unroll
  for (int tile = 0; tile < TILES; ++tile) {
#pragma unroll
    for (int r = 0; r < 4; ++r) partial[warp][tile * 4 + r][lane] = c[tile][r];
  }
  __syncthreads();
  for (int o = threadIdx.x; o < TILES * 4 * 32; o += blockDim.x) {
    const int reg = o >> 5;
    const int l = o & 31;
    Acc total = 0;
#pragma unroll
    for (int v = 0; v < WARPS; ++v) total += partial[v][reg][l];
    const int col = col0 + (l >> 2) + ((reg & 3) >= 2 ? 8 : 0);
    const int token = (reg >> 2) * 8 + 2 * (l & 3) + (reg & 1);
    if (col < n && token < m) emit(col, token, total);
  }
}

}  // namespace inflightd
