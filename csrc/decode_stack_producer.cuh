// The batch-1 decode stack's producer warp (decode_stack.cu): the walk over the stages of
// weight rows one CTA streams, and the loop that copies them into the ring of shared-memory
// stages while asking L2 for the rows further ahead.
#pragma once

#include "decode_stack.cuh"
#include "mbarrier.cuh"

namespace inflightd {

// The stages one CTA copies, in the consumers' order: each GEMV's rows of this CTA, a
// stage at a time, layer after layer. The producer walks it twice: once to copy, and once
// l2_prefetch_stages ahead of that to ask L2 for the rows.
template <typename T> struct StageWalk {
  RowDealer dealer;
  int layer = 0, gemv = -1, row = 0, end = 0, per_stage = 1, cols = 0;
  const T* weight = nullptr;

  // The next stage's first byte and its size; false past the last layer.
  __device__ __forceinline__ bool next(const StackLayer<T>* layers, const StackShape& s,
                                       const T*& source, unsigned& bytes) {
    while (row >= end) {
      if (++gemv > kProjGemv) {
        gemv = kQkvGemv;
        ++layer;
      }
      if (layer >= s.num_layers) return false;  // and on every call after
      const GemvShape shape = gemv_shape(s, gemv);
      weight = gemv_weight(layers[layer], gemv);
      const RowRange rows = dealer.next(shape.rows);
      row = rows.begin;
      end = rows.end;
      cols = shape.cols;
      per_stage = rows_per_stage<T>(cols);
    }
    bytes = min(per_stage, end - row) * cols * sizeof(T);
    source = weight + static_cast<long long>(row) * cols;
    row += per_stage;
    return true;
  }
};

__device__ __forceinline__ void prefetch_rows_to_l2(const void* source, unsigned bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(source), "r"(bytes)
               : "memory");
}

// The producer warp: every stage of StageWalk into the ring; lane 0 issues the bulk copies
// and the prefetches, the warp goes round the loop together (it meets the CTA's last
// barrier converged). Not inlined, so that its two walks get registers of their own
// (inlined, they pushed the fp16 head-dim-128 consumers into spills). The ring holds six
// stages, a few microseconds of this SM's share of HBM; the L2 prefetch keeps HBM busy
// further ahead, through the phases in which the consumers wait on the other CTAs.
template <typename T>
__device__ __noinline__ void produce_weights(const StackLayer<T>* layers, const StackShape& s,
                               const StackSmem& sm, unsigned* trace,
                               unsigned long long* times) {
  const int lane = threadIdx.x & 31;
  Ring ring;
  StageWalk<T> copies, prefetches;
  const auto prefetch_next = [&] {
    const T* ahead;
    unsigned ahead_bytes;
    if (prefetches.next(layers, s, ahead, ahead_bytes) && lane == 0) {
      prefetch_rows_to_l2(ahead, ahead_bytes);
    }
  };
  for (int i = 0; i < s.l2_prefetch_stages; ++i) prefetch_next();
  const T* source;
  unsigned bytes;
  while (copies.next(layers, s, source, bytes)) {
    if (s.l2_prefetch_stages > 0) prefetch_next();
    ring.waited += stage_wait(sm.empty(ring.stage), ring.phase ^ 1, trace, 3);
    if (lane == 0) trace_put(trace, kTraceProduced, ring.count);
    if (!s.bulk_copies) {
      for (unsigned at = lane * 16; at < bytes; at += 32 * 16) {
        cp_async_16(sm.stage(ring.stage) + at, reinterpret_cast<const char*>(source) + at);
      }
      cp_async_arrive(sm.full(ring.stage));
    } else if (lane == 0) {
      mbarrier_arrive_expect_tx(sm.full(ring.stage), bytes);
      bulk_copy_to_shared(sm.stage(ring.stage), source, bytes, sm.full(ring.stage));
    }
    __syncwarp();
    ring.advance();
  }
  if (times != nullptr && lane == 0) {
    times[(gridDim.x * s.num_layers * kStackPhases + blockIdx.x) * kStampWords + 1] = ring.waited;
  }
}

}  // namespace inflightd
