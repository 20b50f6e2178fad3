// Decode attention (one query token a sequence) over the paged KV cache, its keys and values
// streamed by a producer warp's bulk copies into a ring of shared-memory stages (sm_90):
// issue 16's decode kernel, for caches of 8 kv heads of head_dim 128 (Llama-3's shapes), a
// 16-bit or an e4m3 cache, GQA groups of up to 8 query heads.
//
// Why: the cp.async kernels (paged_attention.cuh) keep as many bytes in flight as their
// registers and shared memory allow a few warps, and over an e4m3 cache that is too few to
// hide HBM's latency (57-80 % of the read bandwidth at batch 64-512). Here a CTA takes every
// kv head of one sequence (or of one part of its keys), so a 16-key tile of the cache is 16
// token rows of 8 heads x 128 values, each row contiguous in memory (the cache is
// [2, blocks, block_size, kv heads, head_dim]); the producer warp copies its 32 rows (K and
// V) with one cp.async.bulk a lane, and the stages ahead hold up to ~200 KB in flight an SM
// whatever the consumers' registers.
//
//   # threads 0-255: 8 consumer warps, warp h = kv head h; threads 256-287: the producer
//   # a stage: | K rows 0-15 | V rows 0-15 |, each row [8 heads][128] + 16 bytes of padding
//   #   (rows 16 bytes apart in the banks: the fragment loads below are conflict-free)
//   #   full[s]: the stage's 32 rows have landed;  empty[s]: all 256 consumer lanes are done
//
// A consumer warp's tile math, keys in the MMA's M: csrc/decode_bulk_math.cuh.
//
// Partitions (flash-decoding), the grid's y: each part takes a run of the sequence's tiles
// and writes float32 partials (the unnormalised O, the running max and sum of each query
// head); the last part of a sequence to arrive on its counter merges them and sets the
// counter back to 0 (so the counters are zero before and after every launch).
#include "common.cuh"
#include "decode_bulk_math.cuh"
#include "fp8.cuh"
#include "keys_in_m.cuh"
#include "mbarrier.cuh"
#include "mma.cuh"

namespace inflightd {
namespace {

constexpr int kBulkKvHeads = 8;  // one consumer warp each
constexpr int kBulkConsumers = 32 * kBulkKvHeads;
constexpr int kBulkThreads = kBulkConsumers + 32;
constexpr int kBulkTileKeys = 16;
constexpr int kBulkRowPad = 16;
constexpr int kBulkSmemBytes = 227 * 1024;  // the most a CTA may have (sm_90)
constexpr float kLog2e = 1.4426950408889634f;

template <typename KvT> struct BulkStage {
  static constexpr int kRowData = kBulkKvHeads * kBulkD * static_cast<int>(sizeof(KvT));
  static constexpr int kRowBytes = kRowData + kBulkRowPad;  // e4m3: 1,040; 16-bit: 2,064
  static constexpr int kBytes = 2 * kBulkTileKeys * kRowBytes;
  static constexpr int kStages = (kBulkSmemBytes - 1024) / kBytes;  // e4m3: 6; 16-bit: 3
};

extern __shared__ __align__(128) unsigned char bulk_smem[];

template <typename KvT> struct BulkSmem {
  unsigned base;  // shared-window address of the ring
  __device__ __forceinline__ unsigned stage(int s) const {
    return base + s * BulkStage<KvT>::kBytes;
  }
  __device__ __forceinline__ unsigned full(int s) const {
    return base + BulkStage<KvT>::kStages * BulkStage<KvT>::kBytes + 8 * s;
  }
  __device__ __forceinline__ unsigned empty(int s) const {
    return full(BulkStage<KvT>::kStages + s);
  }
};

// An mbarrier phase wait that traps after ~4 s (a protocol bug then fails the launch with an
// error instead of hanging the GPU).
__device__ __forceinline__ void bulk_wait(unsigned bar, unsigned parity) {
  unsigned done;
  const long long start = clock64();
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (!done && clock64() - start > (1ll << 33)) __trap();
  } while (!done);
}

// The sequence's piece of the work: tiles [first, end) of its keys.
struct BulkPart {
  int seq_len, first, end;
};

__device__ __forceinline__ BulkPart bulk_part(const int* seq_lens, int seq, int part,
                                              int num_partitions) {
  const int seq_len = seq_lens[seq];
  const int tiles = (seq_len + kBulkTileKeys - 1) / kBulkTileKeys;
  const int per = (tiles + num_partitions - 1) / num_partitions;
  const int first = min(tiles, part * per);
  return {seq_len, first, min(tiles, first + per)};
}

// The producer warp: lane r < 16 copies K row r of each tile, lane 16 + r V row r.
template <typename KvT>
__device__ __forceinline__ void produce(const BulkSmem<KvT>& sm, const KvT* k_cache,
                                        long long v_offset, const int* table, int block_size,
                                        const BulkPart& part) {
  using Stage = BulkStage<KvT>;
  const int lane = threadIdx.x & 31;
  const int row = lane & 15;
  const KvT* cache = lane < 16 ? k_cache : k_cache + v_offset;
  for (int i = 0; i < part.end - part.first; ++i) {
    const int s = i % Stage::kStages;
    if (i >= Stage::kStages) bulk_wait(sm.empty(s), ((i / Stage::kStages) & 1) ^ 1);
    // keys past the length but inside the tile are inside the sequence's last block
    // (block_size is a multiple of 16): valid memory, masked by the consumers
    const int key = (part.first + i) * kBulkTileKeys + row;
    const long long slot =
        static_cast<long long>(table[key / block_size]) * block_size + key % block_size;
    if (lane == 0) mbarrier_arrive_expect_tx(sm.full(s), 2 * kBulkTileKeys * Stage::kRowData);
    __syncwarp();
    bulk_copy_to_shared(sm.stage(s) + (lane >> 4) * kBulkTileKeys * Stage::kRowBytes +
                            row * Stage::kRowBytes,
                        cache + slot * (kBulkKvHeads * kBulkD), Stage::kRowData, sm.full(s));
  }
}

// A consumer warp's running state: heads 2t, 2t + 1 of its group ([0], [1]).
struct BulkState {
  float acc[kBulkD / 16][4];
  float m[2], l[2];
};

template <typename T, typename KvT>
__device__ __forceinline__ void consume(const BulkSmem<KvT>& sm, BulkState& st,
                                        const unsigned (&qb)[kBulkD / 16][2], float scale_log2,
                                        const BulkPart& part) {
  using Stage = BulkStage<KvT>;
  using Math = BulkMath<T, KvT>;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const unsigned head_bytes = (threadIdx.x >> 5) * kBulkD * sizeof(KvT);
  for (int i = 0; i < part.end - part.first; ++i) {
    const int s = i % Stage::kStages;
    bulk_wait(sm.full(s), (i / Stage::kStages) & 1);
    const unsigned k_head = sm.stage(s) + head_bytes;
    const unsigned v_head = k_head + kBulkTileKeys * Stage::kRowBytes;
    float sc[4] = {0.f, 0.f, 0.f, 0.f};
    Math::scores(sc, k_head + g * Stage::kRowBytes, k_head + (g + 8) * Stage::kRowBytes, qb);
    const int key0 = (part.first + i) * kBulkTileKeys;
    float tile_max[2] = {neg_inf(), neg_inf()};
#pragma unroll
    for (int e = 0; e < 4; ++e) {  // sc[e]: key g + 8 (e >> 1), head 2t + (e & 1)
      sc[e] = key0 + g + 8 * (e >> 1) < part.seq_len ? sc[e] * scale_log2 : neg_inf();
      tile_max[e & 1] = fmaxf(tile_max[e & 1], sc[e]);
    }
    float base[2], alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float m_new = fmaxf(st.m[h], reduce_over_keys_max(tile_max[h]));
      base[h] = m_new == neg_inf() ? 0.f : m_new;
      alpha[h] = exp2f(st.m[h] - base[h]);
      st.m[h] = m_new;
    }
    float p[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) p[e] = exp2f(sc[e] - base[e & 1]);
#pragma unroll
    for (int h = 0; h < 2; ++h) st.l[h] = st.l[h] * alpha[h] + p[h] + p[h + 2];
#pragma unroll
    for (int mt = 0; mt < kBulkD / 16; ++mt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) st.acc[mt][e] *= alpha[e & 1];
    }
    using MmaT = typename Math::MmaT;
    const unsigned pb0 = movmatrix_trans(pack2<MmaT>(p[0], p[1]));
    const unsigned pb1 = movmatrix_trans(pack2<MmaT>(p[2], p[3]));
    const bool valid[4] = {key0 + 2 * t < part.seq_len, key0 + 2 * t + 1 < part.seq_len,
                           key0 + 2 * t + 8 < part.seq_len, key0 + 2 * t + 9 < part.seq_len};
    Math::accumulate(st.acc, v_head, Stage::kRowBytes, valid, pb0, pb1);
    mbarrier_arrive(sm.empty(s));  // every lane: its reads of the stage are done
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) st.l[h] = reduce_over_keys_sum(st.l[h]);
}

// The warp's heads 2t, 2t + 1 (those inside the group), 16 dims from 16g: normalised into
// out, or (split launches) unnormalised with the max and sum into the partials.
template <typename T>
__device__ __forceinline__ void store_heads(const BulkState& st, T* out_row, float* part_acc,
                                            float* part_ml, int group, bool split) {
  const int g = (threadIdx.x & 31) >> 2;
  const int t = threadIdx.x & 3;
  const int kv_head = threadIdx.x >> 5;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int n = 2 * t + h;
    if (n >= group) continue;
    const int head = kv_head * group + n;
    if (split) {
      float* dst = part_acc + head * kBulkD + 16 * g;
#pragma unroll
      for (int mt = 0; mt < kBulkD / 16; ++mt) {
        dst[2 * mt] = st.acc[mt][h];
        dst[2 * mt + 1] = st.acc[mt][h + 2];
      }
      if (g == 0) {
        part_ml[2 * head] = st.m[h];
        part_ml[2 * head + 1] = st.l[h];
      }
    } else {
      const float inv = 1.f / st.l[h];  // key 0 is in every sequence: l >= 1
      Vec8<T> lo, hi;
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        lo.set(2 * mt, st.acc[mt][h] * inv);
        lo.set(2 * mt + 1, st.acc[mt][h + 2] * inv);
        hi.set(2 * mt, st.acc[mt + 4][h] * inv);
        hi.set(2 * mt + 1, st.acc[mt + 4][h + 2] * inv);
      }
      lo.store(out_row + head * kBulkD + 16 * g);
      hi.store(out_row + head * kBulkD + 16 * g + 8);
    }
  }
}

// The last part of a sequence in: every query head's parts merged into out (consumers only).
template <typename T>
__device__ __forceinline__ void merge_parts(T* out_row, const float* part_acc,
                                            const float* part_ml, int num_heads,
                                            int num_partitions) {
  const long long part_stride = static_cast<long long>(num_heads) * kBulkD;
  for (int i = threadIdx.x; i < num_heads * kBulkD; i += kBulkConsumers) {
    const int head = i / kBulkD;
    float top = neg_inf();
    for (int p = 0; p < num_partitions; ++p) {
      top = fmaxf(top, __ldcg(part_ml + (p * num_heads + head) * 2));
    }
    float sum = 0.f, value = 0.f;
    for (int p = 0; p < num_partitions; ++p) {
      const float weight = exp2f(__ldcg(part_ml + (p * num_heads + head) * 2) - top);
      sum += weight * __ldcg(part_ml + (p * num_heads + head) * 2 + 1);
      value += weight * __ldcg(part_acc + p * part_stride + i);
    }
    out_row[i] = from_float<T>(value / sum);
  }
}

template <typename T, typename KvT>
__device__ __forceinline__ void paged_decode_bulk(
    T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
    int* __restrict__ counters, const T* __restrict__ q, const KvT* __restrict__ kv_cache,
    const int* __restrict__ query_start_loc, const int* __restrict__ seq_lens,
    const int* __restrict__ block_tables, int num_heads, int block_size, int table_width,
    long long num_slots, float scale, int num_partitions) {
  using Stage = BulkStage<KvT>;
  const BulkSmem<KvT> sm{static_cast<unsigned>(__cvta_generic_to_shared(bulk_smem))};
  if (threadIdx.x == 0) {
    for (int s = 0; s < Stage::kStages; ++s) {
      mbarrier_init(sm.full(s), 1);
      mbarrier_init(sm.empty(s), kBulkConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  wait_for_previous_kernel();  // the step's own key and value, its lengths and tables
  const int seq = blockIdx.x;
  const int part_index = blockIdx.y;
  const BulkPart part = bulk_part(seq_lens, seq, part_index, num_partitions);
  if (threadIdx.x >= kBulkConsumers) {
    produce(sm, kv_cache, num_slots * kBulkKvHeads * kBulkD,
            block_tables + static_cast<long long>(seq) * table_width, block_size, part);
    return;
  }
  const int group = num_heads / kBulkKvHeads;
  const T* q_row = q + static_cast<long long>(query_start_loc[seq]) * num_heads * kBulkD;
  T* out_row = out + static_cast<long long>(query_start_loc[seq]) * num_heads * kBulkD;
  unsigned qb[kBulkD / 16][2];
  load_q<T, KvT>(qb, q_row, group);
  BulkState st;
#pragma unroll
  for (int mt = 0; mt < kBulkD / 16; ++mt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) st.acc[mt][e] = 0.f;
  }
  st.m[0] = st.m[1] = neg_inf();
  st.l[0] = st.l[1] = 0.f;
  consume<T, KvT>(sm, st, qb, scale * kLog2e, part);
  const bool split = num_partitions > 1;
  const long long rows = static_cast<long long>(seq) * num_partitions + part_index;
  store_heads<T>(st, out_row, part_acc + rows * num_heads * kBulkD, part_ml + rows * num_heads * 2,
                 group, split);
  if (!split) return;
  // the last part in merges: every consumer's partials are fenced before the count
  __shared__ int last_in;
  __threadfence();
  asm volatile("bar.sync 1, %0;" ::"r"(kBulkConsumers) : "memory");
  if (threadIdx.x == 0) {
    last_in = atomicAdd(counters + seq, 1) == num_partitions - 1;
    if (last_in) __threadfence();
  }
  asm volatile("bar.sync 1, %0;" ::"r"(kBulkConsumers) : "memory");
  if (!last_in) return;
  const long long seq_parts = static_cast<long long>(seq) * num_partitions;
  merge_parts<T>(out_row, part_acc + seq_parts * num_heads * kBulkD,
                 part_ml + seq_parts * num_heads * 2, num_heads, num_partitions);
  if (threadIdx.x == 0) counters[seq] = 0;
}

}  // namespace
}  // namespace inflightd

using inflightd::Fp8;

// grid (num_seqs, num_partitions), kBulkThreads threads, BulkStage<KvT>::kStages stages of
// dynamic shared memory (+ their mbarriers): ops/cuda_decode_bulk.py's decode_bulk_into.
#define INFLIGHTD_DECODE_BULK(T, KVT, NAME)                                                     \
  extern "C" __global__ void __launch_bounds__(inflightd::kBulkThreads, 1) NAME(                 \
      T* out, float* part_acc, float* part_ml, int* counters, const T* q, const KVT* kv_cache,  \
      const int* query_start_loc, const int* seq_lens, const int* block_tables, int num_heads, \
      int block_size, int table_width, long long num_slots, float scale,                       \
      int num_partitions) {                                                                     \
    inflightd::paged_decode_bulk<T, KVT>(out, part_acc, part_ml, counters, q, kv_cache,         \
                                         query_start_loc, seq_lens, block_tables, num_heads,   \
                                         block_size, table_width, num_slots, scale,            \
                                         num_partitions);                                       \
  }

INFLIGHTD_DECODE_BULK(__nv_bfloat16, __nv_bfloat16, paged_decode_bulk_bf16_d128)
INFLIGHTD_DECODE_BULK(__half, __half, paged_decode_bulk_fp16_d128)
INFLIGHTD_DECODE_BULK(__nv_bfloat16, Fp8, paged_decode_bulk_bf16_kvfp8_d128)
INFLIGHTD_DECODE_BULK(__half, Fp8, paged_decode_bulk_fp16_kvfp8_d128)
