// The batch-1 decode stack's GEMVs, the consumers' side (decode_stack.cu): each stage of a
// GEMV's weight rows, as the producer warp lands it in the ring, dotted with x in shared
// memory on the tensor cores (dot8_mma.cuh), then handed back to the producer.
#pragma once

#include "common.cuh"
#include "decode_stack.cuh"
#include "dot8_mma.cuh"
#include "mbarrier.cuh"

namespace inflightd {

// A warp's dot products of R rows at once over chunks [begin, end) of x: R independent
// chains of loads and MMAs behind one load of x.
template <typename T, int R>
__device__ __forceinline__ void dot_rows(MmaDot (&dots)[R], const uint4* const (&w)[R],
                                         const uint4* x, int begin, int end) {
  const int lane = threadIdx.x & 31;
  const int full_end = begin + ((end - begin) & ~31);  // a chunk for every lane
  for (int c = begin + lane; c < full_end; c += 32) {
    const uint4 xc = x[c];
#pragma unroll
    for (int r = 0; r < R; ++r) dots[r].template add<T>(w[r][c], xc);
  }
  if (full_end < end) {
    const int c = full_end + lane;
    const bool inside = c < end;
    const uint4 zero{0, 0, 0, 0};
    const uint4 xc = inside ? x[c] : zero;
#pragma unroll
    for (int r = 0; r < R; ++r) dots[r].template add<T>(inside ? w[r][c] : zero, xc);
  }
}

__device__ __forceinline__ void warp_sum2(float& a, float& b) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, offset);
    b += __shfl_xor_sync(0xffffffffu, b, offset);
  }
}

// A GEMV whose rows fit a stage a warp each (kStackWarps rows a stage): a warp takes its row
// of two stages at once when both are there, so that it has two chains in flight where one
// left the latency of its loads, MMAs and shuffles exposed (docs/benchmarks.md, session 24). A
// warp's lane 0 finishes its rows, and the warps go on without waiting for each other (the
// empty barriers keep them within a lap of the ring).
//
//   # | stage s: rows row .. row+7 | stage s+1: rows row+8 .. row+15 |
//   #   warp w: row + w and row + 8 + w
template <typename T, typename Epilogue>
__device__ __forceinline__ void consume_rows_alone(const StackSmem& sm, Ring& ring, int cols,
                                                   RowRange rows, unsigned* trace,
                                                   Epilogue epilogue) {
  const int warp = threadIdx.x >> 5;
  const int chunks = cols / 8;  // 16-byte chunks of a row
  const uint4* x = reinterpret_cast<const uint4*>(sm.x<T>());
  for (int row = rows.begin; row < rows.end;) {
    Ring next = ring;
    next.advance();
    if (threadIdx.x == 0) trace_put(trace, kTraceConsumed, ring.count);
    ring.waited += stage_landed_wait(sm, ring.stage, ring.phase, trace);
    // the next stage too, if it has landed already: a warp that waited for it lost the time
    // it could have spent on this one (starcoder-1b's whole stages, session 24). Every lane
    // tests it (its own acquire of the rows it reads), and the warp takes it only if all saw
    // it (mma.sync needs the whole warp); the warps go at their own pace.
    bool two = row + kStackWarps < rows.end;  // then the first stage is whole
    if (two) two = __all_sync(0xffffffffu, stage_landed(sm, next.stage, next.phase));
    const int row0 = row + warp, row1 = row + kStackWarps + warp;
    const bool has0 = row0 < rows.end, has1 = two && row1 < rows.end;  // warp-uniform
    MmaDot dots[2];
    if (has1) {
      const uint4* const w[2] = {sm.stage_chunks(ring.stage) + warp * chunks,
                                 sm.stage_chunks(next.stage) + warp * chunks};
      dot_rows<T, 2>(dots, w, x, 0, chunks);
    } else if (has0) {
      MmaDot (&first)[1] = reinterpret_cast<MmaDot (&)[1]>(dots[0]);
      const uint4* const w[1] = {sm.stage_chunks(ring.stage) + warp * chunks};
      dot_rows<T, 1>(first, w, x, 0, chunks);
    }
    // every lane's reads of the stages are done past this
    float sum0 = dots[0].lane_share(), sum1 = dots[1].lane_share();
    warp_sum2(sum0, sum1);
    release_stage(sm, ring, ring.stage);
    if (two) release_stage(sm, ring, next.stage);
    if ((threadIdx.x & 31) == 0) {
      if (has0) epilogue(row0, row0 - rows.begin, sum0);
      if (has1) epilogue(row1, row1 - rows.begin, sum1);
    }
    ring.advance();
    if (two) ring.advance();
    row += two ? 2 * kStackWarps : kStackWarps;
  }
}

// The consumers' side of one GEMV: epilogue(row, index in rows, x . w[row]) for each row.
// Rows too wide for a warp each are split over kStackWarps / R warps. Each part goes to shared
// memory, and the parts of all the CTA's rows meet once, at the end: one barrier a GEMV where
// one a stage cost proj (4 warps a row) 22.6 % of its samples (session 24).
//
//   # row_partials: | row 0: part 0 .. part P-1 | row 1: ... |   (P = warps_per_row)
template <typename T, typename Epilogue>
__device__ __forceinline__ void consume_gemv_rows(const StackSmem& sm, Ring& ring, int cols,
                                                  RowRange rows, unsigned* trace,
                                                  Epilogue epilogue) {
  const int per_stage = rows_per_stage<T>(cols);
  if (per_stage == kStackWarps) {
    consume_rows_alone<T>(sm, ring, cols, rows, trace, epilogue);
    return;
  }
  const int warps_per_row = kStackWarps / per_stage;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int my_row = warp / warps_per_row;
  const int part = warp % warps_per_row;
  const int chunks = cols / 8;  // 16-byte chunks of a row
  const int chunk_begin = part * chunks / warps_per_row;
  const int chunk_end = (part + 1) * chunks / warps_per_row;
  const uint4* x = reinterpret_cast<const uint4*>(sm.x<T>());
  float* partials = sm.row_partials();
  for (int row = rows.begin; row < rows.end; row += per_stage) {
    const bool has_row = row + my_row < rows.end;  // the same for the whole warp
    if (threadIdx.x == 0) trace_put(trace, kTraceConsumed, ring.count);
    ring.waited += stage_landed_wait(sm, ring.stage, ring.phase, trace);
    MmaDot dot[1];
    if (has_row) {  // mma.sync needs the whole warp
      const uint4* const w[1] = {sm.stage_chunks(ring.stage) + my_row * chunks};
      dot_rows<T, 1>(dot, w, x, chunk_begin, chunk_end);
    }
    // every lane's reads of the stage are done past this
    const float sum = warp_sum(dot[0].lane_share());
    release_stage(sm, ring, ring.stage);
    if (lane == 0) {
      if (has_row) partials[(row + my_row - rows.begin) * warps_per_row + part] = sum;
    }
    ring.advance();
  }
  stack_consumers_sync();
  if (static_cast<int>(threadIdx.x) < rows.count()) {  // rows <= kStackMaxRows <= consumers
    float total = 0.f;
    for (int j = 0; j < warps_per_row; ++j) total += partials[threadIdx.x * warps_per_row + j];
    epilogue(rows.begin + threadIdx.x, threadIdx.x, total);
  }
}

// The consumers' side of one GEMV, the producer told when they are in its rows.
template <typename T, typename Epilogue>
__device__ __forceinline__ void consume_gemv(const StackSmem& sm, Ring& ring, int cols,
                                             RowRange rows, unsigned* trace,
                                             Epilogue epilogue) {
  if (threadIdx.x == 0) sm.set_busy(1);
  consume_gemv_rows<T>(sm, ring, cols, rows, trace, epilogue);
  if (threadIdx.x == 0) sm.set_busy(0);
}

}  // namespace inflightd
