// One kernel for every layer of a batch-1 decode step of a GPT-2-style model (pre-LayerNorm
// with biases, multi-head or multi-query attention without rotary, a GELU MLP): GPT-2 and
// GPTBigCode (Starcoder 1).
//
// Why: at batch 1 a step is the weights streamed once, and a kernel per op stops the stream
// at every boundary (a small GEMV's ramp and drain: gpt2-xl ran at 48 % of its roofline).
// Here the weights depend on nothing, so a producer warp per SM copies each layer's weight
// rows (cp.async.bulk) into a ring of shared-memory stages ahead of the consumers, across
// op and layer boundaries, while the consumers' waits for the other SMs overlap the copies.
//
//   # a layer, five phases; each CTA counts itself done with a phase, and the next phase
//   # waits for all of them (a GEMV needs all of its input):
//   #   0  qkv = W_qkv LN1(h) + b            (each CTA norms the whole h for itself;
//   #                                          layer 0 embeds the token into h first)
//   #   1  attention: (head, split) tasks    (decode_stack_attention.cuh)
//   #   2  h  += W_o attention + b         (each CTA merges the heads' splits)
//   #   3  act = gelu(W_fc LN2(h) + b)
//   #   4  h  += W_proj act + b
//
//   # threads 0-255: 8 consumer warps; threads 256-287: the producer warp (its 32 lanes'
//   # cp.async, or lane 0's bulk copies)
//   #   full[s][h]: half h of the stage's rows has landed (the copies' arrivals)
//   #   empty[s]:   8 consumer-warp arrivals (256 lanes with plain copies) -> the producer may refill it
//
// A stage holds R whole rows of one GEMV (R a power of two, at most 8), each row's dot
// product split over 8 / R warps; x, the GEMV's input, sits in shared memory. Outputs are
// rounded to T where the per-op kernels store them, so the two paths agree to rounding.
// The grid is one CTA per SM (its shared memory allows no second), all resident at once.
#include "common.cuh"
#include "decode_stack.cuh"
#include "decode_stack_attention.cuh"
#include "decode_stack_gemv.cuh"
#include "decode_stack_producer.cuh"
#include "dot8_mma.cuh"
#include "gelu.cuh"
#include "mbarrier.cuh"

using namespace inflightd;

// A LayerNorm's weight and bias chunks, loaded before the wait for h.
template <typename T> struct NormParams {
  static constexpr int kItems = kStackMaxHidden / 8 / kStackConsumers;
  uint4 weight[kItems], bias[kItems];
};

template <typename T>
__device__ __forceinline__ NormParams<T> load_norm_params(const T* weight, const T* bias,
                                                          int hidden) {
  NormParams<T> p;
#pragma unroll
  for (int it = 0; it < NormParams<T>::kItems; ++it) {
    const int chunk = threadIdx.x + it * kStackConsumers;
    if (chunk * 8 < hidden) {
      p.weight[it] = __ldg(reinterpret_cast<const uint4*>(weight) + chunk);
      p.bias[it] = __ldg(reinterpret_cast<const uint4*>(bias) + chunk);
    }
  }
  return p;
}

// LayerNorm of a row whose 16-byte chunks load(chunk) gives (as csrc/layer_norm.cu: mean and
// biased variance in float32, two passes); store(it, chunk, normed) takes each 16-byte
// chunk's 8 values before the weight and bias, chunk = threadIdx.x + it * kStackConsumers.
// Consumers only.
template <typename T, typename Load, typename Store>
__device__ __forceinline__ void layer_norm_chunks(const StackSmem& sm, Load load, int hidden,
                                                  float eps, Store store) {
  constexpr int kItems = NormParams<T>::kItems;
  float v[kItems][8];
  float sum = 0.f;
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int chunk = threadIdx.x + it * kStackConsumers;
    if (chunk * 8 < hidden) {
      load_floats8<T>(v[it], load(chunk));
#pragma unroll
      for (int i = 0; i < 8; ++i) sum += v[it][i];
    }
  }
  const float mean = consumers_sum(sum, sm.norm_sums(0)) / static_cast<float>(hidden);
  float squares = 0.f;
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    if ((threadIdx.x + it * kStackConsumers) * 8 < hidden) {
#pragma unroll
      for (int i = 0; i < 8; ++i) squares += (v[it][i] - mean) * (v[it][i] - mean);
    }
  }
  const float variance = consumers_sum(squares, sm.norm_sums(1)) / static_cast<float>(hidden);
  const float rstd = rsqrtf(variance + eps);
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int chunk = threadIdx.x + it * kStackConsumers;
    if (chunk * 8 < hidden) {
      float normed[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) normed[i] = rstd * (v[it][i] - mean);
      store(it, chunk, normed);
    }
  }
}

// A chunk of h as every CTA reads it: from L2, where the other CTAs' stores are.
template <typename T> struct HChunks {
  const T* h;
  __device__ __forceinline__ uint4 operator()(int chunk) const {
    return __ldcg(reinterpret_cast<const uint4*>(h) + chunk);
  }
};

// A chunk of the embedded token, wte[token] + wpe[position] rounded to T (as the per-op
// path's add), for layer 0's LayerNorm: no embedding kernel runs before the stack. CTA 0
// also stores it into h, the residual stream, which phase 2 reads after two barriers.
template <typename T> struct EmbeddedChunks {
  const T* token_row; const T* position_row; T* h;
  __device__ __forceinline__ uint4 operator()(int chunk) const {
    float a[8], b[8];
    load_floats8<T>(a, __ldg(reinterpret_cast<const uint4*>(token_row) + chunk));
    load_floats8<T>(b, __ldg(reinterpret_cast<const uint4*>(position_row) + chunk));
    Vec8<T> sum;
#pragma unroll
    for (int i = 0; i < 8; ++i) sum.set(i, a[i] + b[i]);
    if (blockIdx.x == 0) sum.store(h + chunk * 8);
    return sum.raw;
  }
};

template <typename T>
__device__ __forceinline__ EmbeddedChunks<T> embedded_chunks(const StackIo<T>& io, int hidden) {
  return {io.wte + io.input_ids[0] * hidden, io.wpe + io.positions[0] * hidden, io.h};
}

// x = LayerNorm(row) * weight + bias, rounded to T, in x's chunk order (the GEMVs' input).
template <typename T, typename Load>
__device__ __forceinline__ void layer_norm_into_x(const StackSmem& sm, Load load,
                                                  const NormParams<T>& p, int hidden, float eps) {
  layer_norm_chunks<T>(sm, load, hidden, eps, [&](int it, int chunk, const float (&normed)[8]) {
    float w[8], b[8];
    load_floats8<T>(w, p.weight[it]);
    load_floats8<T>(b, p.bias[it]);
    Vec8<T> x;
#pragma unroll
    for (int i = 0; i < 8; ++i) x.set(x_chunk_slot(i), w[i] * normed[i] + b[i]);
    x.store(sm.x<T>() + chunk * 8);
  });
}

// normed = the model's final LayerNorm of h, in h's order: the last CTA out's, once every
// CTA's rows of the last projection are in h (no kernel of its own between the stack and the
// logits). Its weight and bias are read as it stores, not held through the step.
template <typename T>
__device__ __forceinline__ void final_layer_norm(const StackSmem& sm, const StackShape& s,
                                                 const StackIo<T>& io) {
  layer_norm_chunks<T>(sm, HChunks<T>{io.h}, s.hidden, s.eps,
                       [&](int, int chunk, const float (&normed)[8]) {
    float w[8], b[8];
    load_floats8<T>(w, __ldg(reinterpret_cast<const uint4*>(io.final_weight) + chunk));
    load_floats8<T>(b, __ldg(reinterpret_cast<const uint4*>(io.final_bias) + chunk));
    Vec8<T> y;
#pragma unroll
    for (int i = 0; i < 8; ++i) y.set(i, w[i] * normed[i] + b[i]);
    y.store(io.normed + chunk * 8);
  });
}

// The rows' biases into shared memory (before the wait: they depend on nothing).
template <typename T>
__device__ __forceinline__ void stage_bias(const StackSmem& sm, const T* bias, RowRange rows) {
  for (int i = threadIdx.x; i < rows.count(); i += kStackConsumers) {
    sm.bias()[i] = to_float(bias[rows.begin + i]);
  }
}

// h's rows (the residual the GEMV's outputs add to), a row a thread (rows <= kStackMaxRows
// <= consumers), loaded after the wait into a register, stored into shared memory once the
// loads of the GEMV's input are out too, so that the two share one L2 round trip.
static_assert(kStackMaxRows <= kStackConsumers, "a residual row a consumer thread");
template <typename T>
__device__ __forceinline__ float load_residual(const T* h, RowRange rows) {
  return static_cast<int>(threadIdx.x) < rows.count() ? load_l2(h + rows.begin + threadIdx.x) : 0.f;
}
__device__ __forceinline__ void store_residual(const StackSmem& sm, RowRange rows, float value) {
  if (static_cast<int>(threadIdx.x) < rows.count()) sm.residual()[threadIdx.x] = value;
}

// A GEMV's input, made by other CTAs (through L2), into x in x's chunk order: chunk(c) gives
// its 16-byte chunk c.
template <typename T, typename Chunk>
__device__ __forceinline__ void load_into_x(T* x, int width, Chunk chunk) {
  for (int c = threadIdx.x; c < width / 8; c += kStackConsumers) {
    reinterpret_cast<uint4*>(x)[c] = x_chunk_order(chunk(c));
  }
}

template <typename T, int D, float (*Gelu)(float)>
__device__ void run_layers(const StackLayer<T>* layers, const StackShape& s,
                           const StackIo<T>& io, const StackSmem& sm) {
  Ring ring;
  ring.every_lane_releases = s.copies == kCopiesPlain;
  RowDealer dealer;
  const unsigned all = gridDim.x;
  T* x = sm.x<T>();
  // the step's slot in the cache, or -1 where it writes nothing (graph padding)
  const long long slot = io.slot_mapping[0];
  const long long new_slot = slot >= 0 && slot < s.num_slots ? slot : -1;
  for (int index = 0; index < s.num_layers; ++index) {
    const StackLayer<T>& layer = layers[index];
    unsigned* done = io.counters + index * kStackPhases;
    if (threadIdx.x == 0) trace_put(io.trace, kTracePhase, index * 16);
    // 0: qkv = W_qkv LN1(h) + b
    RowRange rows = dealer.next(gemv_shape(s, kQkvGemv).rows);
    stage_bias(sm, layer.qkv_bias, rows);
    NormParams<T> norm = load_norm_params(layer.ln1_weight, layer.ln1_bias, s.hidden);
    stamp(io.times, s.num_layers, index, 0, 0);
    if (index > 0) wait_count(done - 1, all, io.trace); else stack_consumers_sync();
    stamp(io.times, s.num_layers, index, 0, 1);
    if (index > 0) {
      layer_norm_into_x(sm, HChunks<T>{io.h}, norm, s.hidden, s.eps);
    } else {
      layer_norm_into_x(sm, embedded_chunks(io, s.hidden), norm, s.hidden, s.eps);
    }
    stack_consumers_sync();
    stamp(io.times, s.num_layers, index, 0, 2);
    consume_gemv<T>(sm, ring, s.hidden, rows, io.trace, [&](int row, int i, float total) {
      const T value = from_float<T>(total + sm.bias()[i]);
      io.qkv[row] = value;
      // the step's key and value go into the cache from here, where they are made: no
      // attention task then waits to read them back for it (the tasks read them from qkv)
      const int kv_row = row - s.q_size();
      if (kv_row >= 0 && new_slot >= 0) {
        T* cache = kv_row < s.kv_size() ? layer.k_cache : layer.v_cache;
        cache[new_slot * s.kv_size() + kv_row % s.kv_size()] = value;
      }
    });
    count_done(done + 0);
    stamp(io.times, s.num_layers, index, 0, 3);
    stamp_value(io.times, s.num_layers, index, 0, 4, ring.waited);
    if (threadIdx.x == 0) trace_put(io.trace, kTracePhase, index * 16 + 1);
    // 1: attention
    const bool attends = static_cast<int>(blockIdx.x) < s.num_heads * s.num_splits;
    AttendTask task;
    if (attends) task = prefetch_task<T, D>(layer, s, io);  // the old keys: no wait for them
    stamp(io.times, s.num_layers, index, 1, 0);
    wait_count(done + 0, all, io.trace);
    stamp(io.times, s.num_layers, index, 1, 1);
    stamp(io.times, s.num_layers, index, 1, 2);
    if (attends) attend_task<T, D>(layer, s, io, sm, task);
    count_done(done + 1);
    stamp(io.times, s.num_layers, index, 1, 3);
    stamp_value(io.times, s.num_layers, index, 1, 4, ring.waited);
    if (threadIdx.x == 0) trace_put(io.trace, kTracePhase, index * 16 + 2);
    // 2: h += W_o attention + b
    rows = dealer.next(s.hidden);
    stage_bias(sm, layer.o_bias, rows);
    stamp(io.times, s.num_layers, index, 2, 0);
    wait_count(done + 1, all, io.trace);
    stamp(io.times, s.num_layers, index, 2, 1);
    float residual = load_residual(io.h, rows);
    load_into_x(x, s.q_size(), [&](int c) { return merged_chunk<T, D>(s, io, c); });
    store_residual(sm, rows, residual);
    stack_consumers_sync();
    stamp(io.times, s.num_layers, index, 2, 2);
    const auto add_to_h = [&](int row, int i, float total) {
      io.h[row] = from_float<T>(sm.residual()[i] + round_to<T>(total + sm.bias()[i]));
    };
    consume_gemv<T>(sm, ring, s.q_size(), rows, io.trace, add_to_h);
    count_done(done + 2);
    stamp(io.times, s.num_layers, index, 2, 3);
    stamp_value(io.times, s.num_layers, index, 2, 4, ring.waited);
    if (threadIdx.x == 0) trace_put(io.trace, kTracePhase, index * 16 + 3);
    // 3: act = gelu(W_fc LN2(h) + b)
    rows = dealer.next(s.inter);
    stage_bias(sm, layer.fc_bias, rows);
    norm = load_norm_params(layer.ln2_weight, layer.ln2_bias, s.hidden);
    stamp(io.times, s.num_layers, index, 3, 0);
    wait_count(done + 2, all, io.trace);
    stamp(io.times, s.num_layers, index, 3, 1);
    layer_norm_into_x(sm, HChunks<T>{io.h}, norm, s.hidden, s.eps);
    stack_consumers_sync();
    stamp(io.times, s.num_layers, index, 3, 2);
    consume_gemv<T>(sm, ring, s.hidden, rows, io.trace, [&](int row, int i, float total) {
      io.act[row] = from_float<T>(Gelu(round_to<T>(total + sm.bias()[i])));
    });
    count_done(done + 3);
    stamp(io.times, s.num_layers, index, 3, 3);
    stamp_value(io.times, s.num_layers, index, 3, 4, ring.waited);
    if (threadIdx.x == 0) trace_put(io.trace, kTracePhase, index * 16 + 4);
    // 4: h += W_proj act + b
    rows = dealer.next(s.hidden);
    stage_bias(sm, layer.proj_bias, rows);
    stamp(io.times, s.num_layers, index, 4, 0);
    wait_count(done + 3, all, io.trace);
    stamp(io.times, s.num_layers, index, 4, 1);
    residual = load_residual(io.h, rows);
    load_into_x(x, s.inter,
                [&](int c) { return __ldcg(reinterpret_cast<const uint4*>(io.act) + c); });
    store_residual(sm, rows, residual);
    stack_consumers_sync();
    stamp(io.times, s.num_layers, index, 4, 2);
    consume_gemv<T>(sm, ring, s.inter, rows, io.trace, add_to_h);
    count_done(done + 4);
    stamp(io.times, s.num_layers, index, 4, 3);
    stamp_value(io.times, s.num_layers, index, 4, 4, ring.waited);
    if (threadIdx.x == 0) trace_put(io.trace, kTracePhase, index * 16 + 5);
  }
  if (io.times != nullptr && threadIdx.x == 0) {
    io.times[(gridDim.x * s.num_layers * kStackPhases + blockIdx.x) * kStampWords] = ring.waited;
  }
}

template <typename T, int D, float (*Gelu)(float)>
__device__ __forceinline__ void decode_stack(const StackLayer<T>* layers, const StackShape& s,
                                             const StackIo<T>& io) {
  const StackSmem sm{static_cast<unsigned>(__cvta_generic_to_shared(stack_smem))};
  if (threadIdx.x == 0) {
    for (int stage = 0; stage < kStackStages; ++stage) {
      for (int part = 0; part < kCopyParts; ++part) {
        mbarrier_init(sm.full(stage, part), s.copies == kCopiesBulk ? 1 : 32);
      }
      mbarrier_init(sm.empty(stage), s.copies == kCopiesPlain ? kStackConsumers : kStackWarps);
    }
    sm.set_busy(0);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x >= kStackConsumers) {
    // the weights depend on no kernel before: from the start
    produce_weights(layers, s, sm, io.trace, io.times);
  } else {
    wait_for_previous_kernel();  // the token, its position, lengths, block table and slot
    run_layers<T, D, Gelu>(layers, s, io, sm);
  }
  // The last CTA out norms h for the logits (every CTA's rows are in by then: each fenced
  // them before counting out) and zeroes the counters for the next step.
  // The flag travels in the barrier's own reduction, not through shared memory.
  __syncthreads();
  int arrived_last = 0;
  if (threadIdx.x == 0) {
    __threadfence();
    arrived_last = atomicAdd(io.step_done(s), 1u) == gridDim.x - 1;
    if (arrived_last) __threadfence();
  }
  if (!__syncthreads_or(arrived_last)) return;
  if (io.normed != nullptr && threadIdx.x < kStackConsumers) final_layer_norm(sm, s, io);
  if (threadIdx.x == 0) {
    for (int i = 0; i < s.num_layers * kStackPhases; ++i) io.counters[i] = 0;
    *io.step_done(s) = 0;
    __threadfence();
  }
}

#define INFLIGHTD_DECODE_STACK(T, SUFFIX, D, GELU, GELU_NAME)                                   \
  extern "C" __global__ void __launch_bounds__(kStackThreads, 1)                                \
      decode_stack_##SUFFIX##_d##D##_##GELU_NAME(                                               \
          const void* layers, T* h, T* qkv, T* act, float* partials, unsigned* counters,        \
          const int* seq_lens, const int* block_table, const long long* slot_mapping,          \
          int num_layers, int hidden, int inter, int num_heads, int num_kv_heads,               \
          int num_splits, int block_size, long long num_slots, float eps, float scale,          \
          int copies, int pacing, unsigned* trace, unsigned long long* times, T* normed,         \
          const T* final_weight, const T* final_bias, const long long* input_ids,               \
          const long long* positions, const T* wte, const T* wpe) {                             \
    const StackShape s{num_layers,  hidden,      inter,        num_heads,                       \
                       num_kv_heads, D,          num_splits,   block_size,                      \
                       num_slots,   eps,         scale,        copies,      pacing};            \
    const StackIo<T> io{h, qkv, act, partials, counters, seq_lens, block_table, slot_mapping,   \
                        trace, times, normed, final_weight, final_bias, input_ids, positions,   \
                        wte, wpe};                                                              \
    decode_stack<T, D, GELU>(static_cast<const StackLayer<T>*>(layers), s, io);                 \
  }

#define INFLIGHTD_DECODE_STACK_DTYPE(T, SUFFIX)                                                 \
  INFLIGHTD_DECODE_STACK(T, SUFFIX, 64, gelu_tanh, gelu_tanh)                                   \
  INFLIGHTD_DECODE_STACK(T, SUFFIX, 64, gelu_erf, gelu_erf)                                     \
  INFLIGHTD_DECODE_STACK(T, SUFFIX, 128, gelu_tanh, gelu_tanh)                                  \
  INFLIGHTD_DECODE_STACK(T, SUFFIX, 128, gelu_erf, gelu_erf)

INFLIGHTD_DECODE_STACK_DTYPE(__nv_bfloat16, bf16)
INFLIGHTD_DECODE_STACK_DTYPE(__half, fp16)
