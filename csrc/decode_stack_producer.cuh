// The batch-1 decode stack's producer warp (decode_stack.cu): the walk over the stages of
// weight rows one CTA streams, and the loop that copies them into the ring of shared-memory
// stages.
#pragma once

#include "decode_stack.cuh"
#include "mbarrier.cuh"

namespace inflightd {

// The stages one CTA copies, in the consumers' order: each GEMV's rows of this CTA, a
// stage at a time, layer after layer.
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

// One part of a stage, [begin, end) of its bytes, in the way `copies` (StackCopies) says, then
// the arrival on its full barrier. Each way has its own loop: one loop that chose per copy kept
// cp.async's from unrolling and took the stack from 66 % to 35 % of its roofline (session 28).
__device__ __forceinline__ void copy_part(int copies, unsigned stage, const char* source,
                                          unsigned begin, unsigned end, unsigned lane,
                                          unsigned full) {
  if (copies == kCopiesAsync) {
    for (unsigned at = begin + lane * 16; at < end; at += 32 * 16) {
      cp_async_16(stage + at, source + at);
    }
    cp_async_arrive(full);
  } else if (copies == kCopiesPlain) {
    for (unsigned at = begin + lane * 16; at < end; at += 32 * 16) copy_16(stage + at, source + at);
    mbarrier_arrive(full);
  } else if (lane == 0) {
    mbarrier_arrive_expect_tx(full, end - begin);
    if (end > begin) bulk_copy_to_shared(stage + begin, source + begin, end - begin, full);
  }
}

// The producer warp: every stage of StageWalk into the ring; lane 0 issues the bulk copies,
// the warp goes round the loop together (it meets the CTA's last barrier converged). Not
// inlined, so that its walk keeps registers of its own beside the consumers'. (Asking L2
// for the rows some stages ahead of the copies, cp.async.bulk.prefetch.L2, measured slower
// at every distance from 8 stages up, and no faster at 4: docs/benchmarks.md, session 23.)
template <typename T>
__device__ __noinline__ void produce_weights(const StackLayer<T>* layers, const StackShape s,
                               const StackSmem sm, unsigned* trace,
                               unsigned long long* times) {
  const int lane = threadIdx.x & 31;
  Ring ring;
  StageWalk<T> copies;
  const T* source;
  unsigned bytes;
  unsigned issued = 0;  // parts
  while (copies.next(layers, s, source, bytes)) {
    ring.waited += stage_wait(sm.empty(ring.stage), ring.phase ^ 1, trace, kWaitEmpty);
    if (lane == 0) trace_put(trace, kTraceProduced, ring.count);
    // | part 0 | part 1 | ... : 16-byte multiples, the last one to the stage's end
    const unsigned chunks = bytes / 16;
    for (int part = 0; part < kCopyParts; ++part, ++issued) {
      // Copies queued beyond what keeps HBM busy delay the consumers' own loads and the
      // counters' polls behind them: one stage in flight, not six, took gpt2-xl's step from
      // 1,778 to 1,591 us and a counter's release from 2.9 to 0.8 us (docs/benchmarks.md,
      // session 25).
      if (s.pacing == 0 && part == 0 && ring.count > 0) {
        const unsigned last = ring.count - 1;
        ring.waited += stage_landed_wait(sm, last % kStackStages, (last / kStackStages) & 1,
                                         trace);
      }
      if (s.pacing > 0) {  // lane 0 reads the consumers' word for the warp
        const int busy = __shfl_sync(0xffffffffu, lane == 0 ? sm.busy() : 0, 0);
        const unsigned pace = busy ? kBusyPacing : s.pacing;
        if (issued >= pace) {
          const unsigned landed = issued - pace;
          const unsigned stage = landed / kCopyParts;
          ring.waited += stage_wait(sm.full(stage % kStackStages, landed % kCopyParts),
                                    (stage / kStackStages) & 1, trace, kWaitFull);
        }
      }
      const unsigned begin = chunks * part / kCopyParts * 16;
      const unsigned end = part + 1 == kCopyParts ? bytes : chunks * (part + 1) / kCopyParts * 16;
      copy_part(s.copies, sm.stage(ring.stage), reinterpret_cast<const char*>(source), begin,
                end, lane, sm.full(ring.stage, part));
    }
    __syncwarp();
    ring.advance();
  }
  if (times != nullptr && lane == 0) {
    times[(gridDim.x * s.num_layers * kStackPhases + blockIdx.x) * kStampWords + 1] = ring.waited;
  }
}

}  // namespace inflightd
