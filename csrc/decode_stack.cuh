// The batch-1 decode stack's pieces (decode_stack.cu): its shapes, the per-layer table of
// tensors, the shared-memory layout, how rows are dealt to CTAs, and the counters through
// which the CTAs wait on each other.
#pragma once

#include "common.cuh"
#include "mbarrier.cuh"

namespace inflightd {

constexpr int kStackWarps = 8;                          // consumer warps
constexpr int kStackConsumers = 32 * kStackWarps;       // threads 0-255
constexpr int kStackThreads = kStackConsumers + 32;     // + the producer warp
constexpr int kStageBytes = 32768;                      // one stage of whole weight rows
constexpr int kStackStages = 6;
// The producer copies each stage in kCopyParts parts, each landing on a barrier of its own
// (how many it keeps on their way: StackShape::pacing).
constexpr int kCopyParts = 2;
constexpr int kStackMaxWidth = 8192;   // elements of a GEMV's input held in shared memory
constexpr int kStackMaxHidden = 4096;  // a LayerNorm's row: two chunks a consumer thread
constexpr int kStackMaxRows = 128;     // rows of one GEMV one CTA takes
constexpr int kStackMaxTasks = 256;    // attention's (head, split) tasks
constexpr int kStackMaxSplits = 8;     // splits of one head's keys
constexpr int kStackPhases = 5;        // a layer's steps, each ending in a counter

// Shared memory, in this order (bytes):
//   # | ring: kStackStages x kStageBytes | x: the GEMV's input (16-bit) | bias | residual |
//   # | row partials: kStackMaxRows x kStackWarps | norm sums: 2 x kStackWarps |
//   # | mbarriers full[6][kCopyParts], empty[6] |
// Attention's per-key-group state lives in x's place (x is free between the two GEMVs).
constexpr int kRingBytes = kStackStages * kStageBytes;
constexpr int kXOffset = kRingBytes;
constexpr int kBiasOffset = kXOffset + kStackMaxWidth * 2;
constexpr int kResidualOffset = kBiasOffset + kStackMaxRows * 4;
constexpr int kPartialsOffset = kResidualOffset + kStackMaxRows * 4;
constexpr int kReduceOffset = kPartialsOffset + kStackMaxRows * kStackWarps * 4;
constexpr int kBarrierOffset = kReduceOffset + 2 * kStackWarps * 4;
constexpr int kBusyOffset = kBarrierOffset + (kCopyParts + 1) * kStackStages * 8;
constexpr int kStackSmemBytes = kBusyOffset + 16;
// The producer's pace, in half-stages on their way, while the consumers are in a GEMV's rows:
// then nothing of theirs waits on memory but the stages, so the ring may fill faster
// (starcoder-1b's proj waited for its stages at StackShape::pacing's 2; 4: its step -2.5 %).
constexpr int kBusyPacing = 4;

// The dynamic shared memory, named at namespace scope so that every access through
// StackSmem is known to be to shared memory (LDS/STS): read through a generic pointer held in
// a struct, the consumers' loads went out as generic LD.E.128.
extern __shared__ __align__(128) unsigned char stack_smem[];

struct StackSmem {
  unsigned shared;  // stack_smem as a shared-window address (for copies and mbarriers)

  __device__ __forceinline__ unsigned stage(int s) const { return shared + s * kStageBytes; }
  __device__ __forceinline__ const uint4* stage_chunks(int s) const {
    return reinterpret_cast<const uint4*>(stack_smem + s * kStageBytes);
  }
  template <typename T> __device__ __forceinline__ T* x() const {
    return reinterpret_cast<T*>(stack_smem + kXOffset);
  }
  __device__ __forceinline__ float* scratch() const {  // attention's key-group state
    return reinterpret_cast<float*>(stack_smem + kXOffset);
  }
  __device__ __forceinline__ float* bias() const {
    return reinterpret_cast<float*>(stack_smem + kBiasOffset);
  }
  __device__ __forceinline__ float* residual() const {
    return reinterpret_cast<float*>(stack_smem + kResidualOffset);
  }
  // a GEMV's parts of rows split over several warps, [rows][warps a row]
  __device__ __forceinline__ float* row_partials() const {
    return reinterpret_cast<float*>(stack_smem + kPartialsOffset);
  }
  __device__ __forceinline__ float* norm_sums(int which) const {  // 0: sum, 1: squares
    return reinterpret_cast<float*>(stack_smem + kReduceOffset) + which * kStackWarps;
  }
  __device__ __forceinline__ unsigned full(int s, int part) const {
    return shared + kBarrierOffset + 8 * (s * kCopyParts + part);
  }
  __device__ __forceinline__ unsigned empty(int s) const {
    return shared + kBarrierOffset + 8 * (kStackStages * kCopyParts + s);
  }
  // 1 while the consumers are in a GEMV's rows (thread 0 says), else 0. A hint read without
  // a barrier, so through atomics: then it is no data race to the memory model, nor to
  // compute-sanitizer's racecheck.
  __device__ __forceinline__ void set_busy(int busy) const {
    atomicExch(reinterpret_cast<int*>(stack_smem + kBusyOffset), busy);
  }
  __device__ __forceinline__ int busy() const {
    return atomicOr(reinterpret_cast<int*>(stack_smem + kBusyOffset), 0);
  }
};

// One layer's tensors, as server/engine/fused/decode_stack.py's table holds them (14
// pointers; the caches [num_blocks, block_size, num_kv_heads, head_dim]).
template <typename T> struct StackLayer {
  const T* ln1_weight; const T* ln1_bias; const T* qkv_weight; const T* qkv_bias;
  const T* o_weight; const T* o_bias; const T* ln2_weight; const T* ln2_bias;
  const T* fc_weight; const T* fc_bias; const T* proj_weight; const T* proj_bias;
  T* k_cache; T* v_cache;
};

// How the producer fills a stage: 16-byte cp.async by every lane of its warp (each lane's
// arrival on full[s] when its copies land); one cp.async.bulk by lane 0; or each lane's own
// loads and shared-memory stores, then its arrival (slow; a check of the ring's protocol
// without asynchronous copies, where every consumer lane also releases the stages it read:
// racecheck reports no hazard in the stack that way, docs/benchmarks.md, session 28).
enum StackCopies { kCopiesAsync = 0, kCopiesBulk = 1, kCopiesPlain = 2 };

struct StackShape {
  int num_layers, hidden, inter, num_heads, num_kv_heads, head_dim, num_splits, block_size;
  long long num_slots;  // the pool's; a step's slot past it writes nothing (graph padding)
  float eps, scale;
  // how the producer copies a stage (StackCopies)
  int copies;
  // how far the producer runs ahead of the copies that have landed: 0, a stage at a time (the
  // next issued once the last has landed); k > 0, at most k parts on their way
  int pacing;
  __device__ __forceinline__ int q_size() const { return num_heads * head_dim; }
  __device__ __forceinline__ int kv_size() const { return num_kv_heads * head_dim; }
};

// What the step reads and writes besides the weights. h is the residual stream, updated in
// place layer after layer; counters[layer * 5 + phase] count the CTAs done with a phase,
// counters[num_layers * 5] the CTAs done with the step (the last one zeroes those).
// partials holds each attention task's output until the o phase merges a head's splits.
template <typename T> struct StackIo {
  T* h; T* qkv; T* act; float* partials; unsigned* counters;
  const int* seq_lens; const int* block_table; const long long* slot_mapping;
  // the counters the comment above lays out
  __device__ __forceinline__ unsigned* step_done(const StackShape& s) const {
    return counters + s.num_layers * kStackPhases;
  }
  unsigned* trace;  // null, or 8 words a CTA in host memory: where each side has got to
  // null, or where each CTA's consumers stamp the time (%globaltimer, ns) of each phase's
  // four points and, fifth, their cycles so far waiting on a stage, [CTAs][layers][5][6];
  // then each CTA's cycles waiting on a stage over the step, [CTAs][6]: 0 the consumers
  // (on full), 1 the producer (on empty); for bench/decode_stack.py --timing
  unsigned long long* times;
  // the model's final LayerNorm of h, which the last CTA out writes into normed (the logits'
  // input): null normed, none
  T* normed; const T* final_weight; const T* final_bias;
  // the step's token and position (int64 [1] each) and the embedding tables: layer 0 embeds
  // the token itself (wte[token] + wpe[position]) and writes it into h
  const long long* input_ids; const long long* positions; const T* wte; const T* wpe;
};

// A phase's points:   | entry | the others done | input ready | this CTA done |
//                     ^ 0     ^ 1 (wait_count)  ^ 2 (norm,    ^ 3 (count_done)
//                                                 merge, act)
constexpr int kStampWords = 6;  // a phase's words in times
__device__ __forceinline__ void stamp_value(unsigned long long* times, int num_layers,
                                            int layer, int phase, int point,
                                            unsigned long long value) {
  if (times == nullptr || threadIdx.x != 0) return;
  times[((blockIdx.x * num_layers + layer) * kStackPhases + phase) * kStampWords + point] = value;
}
__device__ __forceinline__ void stamp(unsigned long long* times, int num_layers, int layer,
                                      int phase, int point) {
  if (times == nullptr) return;
  unsigned long long now;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(now));
  stamp_value(times, num_layers, layer, phase, point, now);
}

// The trace's words of this CTA: the consumers' (layer * 16 + phase) and stage count, the
// producer's stage count, and which wait timed out (a WaitKind), written through to host
// memory so that they outlive the trap.
enum TraceWord { kTracePhase = 0, kTraceConsumed = 1, kTraceProduced = 2, kTraceTimeout = 3 };
enum WaitKind : unsigned { kWaitCounter = 1, kWaitFull = 2, kWaitEmpty = 3 };

__device__ __forceinline__ void trace_put(unsigned* trace, int word, unsigned value) {
  if (trace != nullptr) *reinterpret_cast<volatile unsigned*>(trace + blockIdx.x * 8 + word) = value;
}

constexpr long long kWatchdogCycles = 1ll << 33;  // ~4 s

__device__ __forceinline__ void watchdog_expired(unsigned* trace, WaitKind which) {
  trace_put(trace, kTraceTimeout, which);
  __threadfence_system();
  __trap();
}

__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void copy_16(unsigned dst, const void* src) {
  const uint4 v = *static_cast<const uint4*>(src);
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}

__device__ __forceinline__ bool mbarrier_ready(unsigned bar, unsigned parity) {
  unsigned ready;
  asm volatile(
      "{\n.reg .pred done;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%1], %2;\n"
      "selp.u32 %0, 1, 0, done;\n}\n"
      : "=r"(ready) : "r"(bar), "r"(parity) : "memory");
  return ready != 0;
}

// Whether the phase of `bar` with this parity has completed, without waiting (test_wait
// never suspends the thread, as try_wait may).
__device__ __forceinline__ bool mbarrier_done(unsigned bar, unsigned parity) {
  unsigned done;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  return done != 0;
}

// mbarrier_wait with the watchdog: a stage that never comes traps instead of hanging.
// Returns the cycles it took, the first try included (try_wait may suspend the thread).
__device__ __forceinline__ long long stage_wait(unsigned bar, unsigned parity, unsigned* trace,
                                                WaitKind which) {
  const long long start = clock64();
  while (!mbarrier_ready(bar, parity)) {
    if (clock64() - start > kWatchdogCycles) watchdog_expired(trace, which);
  }
  return clock64() - start;
}

// A stage has landed when each of its parts has.
__device__ __forceinline__ long long stage_landed_wait(const StackSmem& sm, int stage,
                                                       unsigned phase, unsigned* trace) {
  long long waited = 0;
#pragma unroll
  for (int part = 0; part < kCopyParts; ++part) {
    waited += stage_wait(sm.full(stage, part), phase, trace, kWaitFull);
  }
  return waited;
}
__device__ __forceinline__ bool stage_landed(const StackSmem& sm, int stage, unsigned phase) {
  bool landed = true;
#pragma unroll
  for (int part = 0; part < kCopyParts; ++part) {
    landed = landed && mbarrier_done(sm.full(stage, part), phase);
  }
  return landed;
}

// A layer's four GEMVs, in the order the producer streams them.
enum StackGemv { kQkvGemv = 0, kOutGemv = 1, kFcGemv = 2, kProjGemv = 3 };

struct GemvShape { int rows, cols; };

__device__ __forceinline__ GemvShape gemv_shape(const StackShape& s, int gemv) {
  switch (gemv) {
    case kQkvGemv: return {s.q_size() + 2 * s.kv_size(), s.hidden};
    case kOutGemv: return {s.hidden, s.q_size()};
    case kFcGemv: return {s.inter, s.hidden};
    default: return {s.hidden, s.inter};
  }
}

template <typename T>
__device__ __forceinline__ const T* gemv_weight(const StackLayer<T>& layer, int gemv) {
  switch (gemv) {
    case kQkvGemv: return layer.qkv_weight;
    case kOutGemv: return layer.o_weight;
    case kFcGemv: return layer.fc_weight;
    default: return layer.proj_weight;
  }
}

// Whole rows per stage: the most (a power of two up to one per warp) that fit a stage.
template <typename T> __device__ __forceinline__ int rows_per_stage(int cols) {
  int rows = kStackWarps;
  while (rows > 1 && rows * cols * static_cast<int>(sizeof(T)) > kStageBytes) rows >>= 1;
  return rows;
}

struct RowRange {
  int begin, end;
  __device__ __forceinline__ int count() const { return end - begin; }
};

// A GEMV's rows go to the CTAs as contiguous ranges (one bulk copy takes a stage of them);
// the rows % CTAs ranges one row longer shift along the CTAs from one GEMV to the next, so
// that over a layer every CTA streams about the same bytes. The producer and the consumers
// each keep one and call it for the same GEMVs in the same order.
struct RowDealer {
  int rotation = 0;
  __device__ __forceinline__ RowRange next(int rows) {
    const int ctas = static_cast<int>(gridDim.x);
    const int slot = (static_cast<int>(blockIdx.x) + rotation) % ctas;
    const int base = rows / ctas;
    const int extra = rows % ctas;
    rotation = (rotation + extra) % ctas;
    const int begin = slot * base + min(slot, extra);
    return {begin, begin + base + (slot < extra ? 1 : 0)};
  }
};

// Position in the ring of stages, the same sequence on both sides.
struct Ring {
  int stage = 0;
  unsigned phase = 0;
  unsigned count = 0;
  long long waited = 0;  // cycles this side spent waiting on the other's stages
  // the consumers': every lane arrives on empty[s], not lane 0 for its warp (plain copies)
  bool every_lane_releases = false;
  __device__ __forceinline__ void advance() {
    ++count;
    if (++stage == kStackStages) {
      stage = 0;
      phase ^= 1;
    }
  }
};

// A consumer warp's release of a stage it has read, once every lane's reads are done: lane 0
// arrives for its warp (its lanes reach it through the warp's shuffles), or, with plain copies
// (StackCopies), every lane arrives, which is what racecheck can follow (lane 0 releasing its
// warp's reads it cannot: a small ring measured so, docs/benchmarks.md, session 28).
__device__ __forceinline__ void release_stage(const StackSmem& sm, const Ring& ring, int stage) {
  if (ring.every_lane_releases || (threadIdx.x & 31) == 0) mbarrier_arrive(sm.empty(stage));
}

// Named barrier 1: the consumers alone (the producer warp runs its own loop). Not the
// .aligned form (bar.sync): a warp may reach it diverged, thread 0 back from a wait.
__device__ __forceinline__ void stack_consumers_sync() {
  __syncwarp();
  asm volatile("barrier.sync 1, %0;\n" ::"n"(kStackConsumers) : "memory");
}

// True in every consumer thread if it is in any: named barrier 1 with a reduction.
__device__ __forceinline__ bool consumers_any(bool value) {
  __syncwarp();
  unsigned any;
  asm volatile(
      "{\n.reg .pred mine, all;\n"
      "setp.ne.u32 mine, %1, 0;\n"
      "barrier.red.or.pred all, 1, %2, mine;\n"
      "selp.u32 %0, 1, 0, all;\n}\n"
      : "=r"(any) : "r"(static_cast<unsigned>(value)), "n"(kStackConsumers) : "memory");
  return any != 0;
}

// The consumers wait until `target` CTAs have counted themselves done on `counter`. A wait
// of seconds means a CTA never ran (the grid was not all resident) or a counter was left
// dirty: the kernel traps, an error for the host, rather than hang the GPU.
__device__ __forceinline__ void wait_count(const unsigned* counter, unsigned target,
                                           unsigned* trace) {
  if (threadIdx.x == 0) {
    const long long start = clock64();
    unsigned seen;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(counter) : "memory");
      if (clock64() - start > kWatchdogCycles) watchdog_expired(trace, kWaitCounter);
    } while (seen < target);
  }
  stack_consumers_sync();
}

// This CTA's consumers are done with a phase: their writes become visible before the count
// (the barrier orders them before thread 0's fence; acq_rel, not __threadfence's sequentially
// consistent fence, is all a release needs, as CUTLASS's grid barrier has it).
__device__ __forceinline__ void count_done(unsigned* counter) {
  stack_consumers_sync();
  if (threadIdx.x == 0) {
    asm volatile("fence.acq_rel.gpu;\n"
                 "red.relaxed.gpu.global.add.u32 [%0], 1;\n" ::"l"(counter) : "memory");
  }
}

// Reads of what other CTAs wrote during the kernel go through L2 (L1 is not coherent).
template <typename T> __device__ __forceinline__ T load_l2_raw(const T* p) {
  const unsigned short raw = __ldcg(reinterpret_cast<const unsigned short*>(p));
  return *reinterpret_cast<const T*>(&raw);
}
template <typename T> __device__ __forceinline__ float load_l2(const T* p) {
  return to_float(load_l2_raw(p));
}

// Sum over the consumers; scratch holds one float per warp.
__device__ __forceinline__ float consumers_sum(float x, float* scratch) {
  x = warp_sum(x);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = x;
  stack_consumers_sync();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kStackWarps; ++w) total += scratch[w];
  return total;
}

}  // namespace inflightd
