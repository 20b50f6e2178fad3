// Prefill and mixed-step attention on Hopper's warpgroup MMA (sm_90a only): the job of
// paged_attention.cuh's 4-warp kernel for sequences of many query rows, at head_dim 128 over
// a 16-bit cache, with S = Q K^T and O += P V on wgmma (wgmma.cuh) instead of mma.sync.
//
// One CTA = (128 query rows, kv head). Rows are laid out as attention_common.cuh says
// (token-major, the group's query heads side by side), so each K/V tile serves every query
// head of the group. Two warpgroups own 64 rows each and walk the keys in tiles of 128, in
// three shared-memory stages filled by cp.async: over a 16-bit cache by a third, producer
// warpgroup, the stages handed over by mbarriers (hopper_ws.cuh); over an e4m3 cache by the
// two warpgroups themselves, two tiles ahead, each tile's copies issued once its S is on the
// tensor cores:
//
//   # | Q, 128 rows | K, V stage 0 | K, V stage 1 | K, V stage 2 |   32 KB a tile,
//   #   each tile two 64-column halves of 128 swizzled rows (wgmma.cuh)
//
// A warpgroup takes each tile in two halves of 64 keys, a and b, so that its tensor cores
// run while it computes a softmax (wgmma is asynchronous: issued, committed, waited for):
//
//   # issue S_a, S_b | softmax a   | issue P_a V | softmax b   | issue P_b V, wait
//   #   tensor cores:  S_a, then S_b ---------->   P_a V ------>  P_b V
//
// each half's softmax an online-softmax step of its own (exp2 domain, the causal mask where
// the half reaches past a row's last visible key), P rounded to T in registers as the A of
// O += P V. While one warpgroup waits on its tensor cores, the other's MMAs can run (over a
// 16-bit cache the two take turns at issuing S; over e4m3 a barrier a tile keeps them on the
// same tile). Causality as in paged_attention.cuh:
// query token j of a sequence with q_len new tokens sits at position context + j and sees
// keys 0 ..= context + j. Key partitions (flash-decoding) as attention_common.cuh lays them
// out: a split launch writes float32 partials and the last CTA of a (row tile, kv head) to
// arrive merges them (attention_merge.cuh). No soft-capping, ALiBi or window (the _extras
// kernels have them).
//
// Over an e4m3 cache (the _kvfp8 kernels) the copies land raw and each tile is converted to
// fp16 in shared memory while the tile before it is on the tensor cores, and the MMAs run in
// fp16 (hopper_tiles.cuh). hopper_tiles.cuh holds the shared memory and its copies,
// hopper_math.cuh a tile's MMAs, softmax and the store, hopper_ws.cuh the mbarriers and the
// producer's copies.
//
// The wgmma_probe_* kernels run the kernel's two MMA steps alone on one tile, so a test can
// check the shared-memory layouts and fragment orders apart from the softmax.
#include "attention_common.cuh"
#include "attention_merge.cuh"
#include "common.cuh"
#include "fp8.cuh"
#include "hopper_math.cuh"
#include "hopper_tiles.cuh"
#include "hopper_ws.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

namespace inflightd {
namespace {

// Whether T is fp16 (bf16 queries over an e4m3 cache are converted to fp16).
template <typename T> struct IsHalf {
  static constexpr bool value = false;
};
template <> struct IsHalf<__half> {
  static constexpr bool value = true;
};

// Query rows of the tile -> shared memory, THREADS threads from `first` on copying.
template <typename T, int THREADS>
__device__ __forceinline__ void load_q(const HopperSmem& smem, const HopperTile& tile,
                                       int kv_head, const T* __restrict__ q, int num_heads,
                                       int first) {
  const int thread = threadIdx.x - first;
  const int chunk = thread & 15;
#pragma unroll
  for (int i = 0; i < kHopperRows * 16 / THREADS; ++i) {
    const int r = (thread >> 4) + (THREADS / 16) * i;
    const int row = tile.row0 + r;
    const bool valid = row < tile.rows_in_seq;
    const int token = row / tile.group;
    const long long head = kv_head * tile.group + (row - token * tile.group);
    const T* src = valid ? q + (static_cast<long long>(tile.q_begin + token) * num_heads + head) *
                               kHopperD + chunk * 8
                         : q;
    cp_async_16_or_zero(tile_chunk(smem.q, r, chunk), src, valid);
  }
}

// Over an e4m3 cache, all 256 threads copying, converting and multiplying: keys [kv_lo,
// kv_hi) for the tile's rows, then its output (one partition) or partials.
template <typename T>
__device__ __forceinline__ void attend_keys_e4m3(
    const HopperOut<T>& dst, const HopperSmem& smem, const HopperTile& tile, int kv_head,
    int kv_lo, int kv_hi, const T* __restrict__ q, const Fp8* __restrict__ kv_cache,
    const int* __restrict__ block_row, int num_heads, int num_kv_heads, int block_size,
    long long num_slots, float scale_log2) {
  load_q<T, kHopperThreads>(smem, tile, kv_head, q, num_heads, 0);
  if constexpr (!IsHalf<T>::value) {  // bf16 queries, fp16 MMAs
    cp_async_commit();
    cp_async_wait<0>();
#pragma unroll
    for (int i = 0; i < kHopperRows / 16; ++i) {
      convert_q_chunk(tile_chunk(smem.q, (threadIdx.x >> 4) + 16 * i, threadIdx.x & 15));
    }
  }
  const long long kv_row = static_cast<long long>(num_kv_heads) * kHopperD;
  const long long plane = num_slots * kv_row;
  const Fp8* kv_head_base = kv_cache + kv_head * kHopperD;
  const BlockShift block_shift{__ffs(block_size) - 1, block_size - 1};
  load_kv_raw(smem, 0, kv_head_base, block_row, kv_lo, kv_hi, block_shift, kv_row, plane);
  if (kv_hi - kv_lo > kHopperKeys) {
    load_kv_raw(smem, 1, kv_head_base, block_row, kv_lo + kHopperKeys, kv_hi, block_shift,
                kv_row, plane);
  }
  cp_async_commit();
  cp_async_wait<0>();
  convert_kv_tile(smem, 0, 0);  // this thread's own copies: its wait covers them

  RowsState st;
  start_rows(st, tile, kv_head, kv_hi, num_heads);
  const unsigned q_rows = smem.q + (threadIdx.x >> 7) * 64 * kSwizzleRowBytes;
  const int num_tiles = (kv_hi - kv_lo + kHopperKeys - 1) / kHopperKeys;
  for (int it = 0; it < num_tiles; ++it) {
    const int buffer = it & 1;
    const int k0 = kv_lo + it * kHopperKeys;
    cp_async_wait<0>();  // tile it + 1 has landed raw (this thread's copies)
    fence_async_shared();  // ... and tile `it`'s conversion is for the tensor cores to read
    __syncthreads();  // ... for everyone, and everyone is done with tile it - 1's buffer
    attend_tile<__half>(st, q_rows, smem.k(buffer), smem.v(buffer), k0, scale_log2, [&] {
      // the next tile's conversion and the copies two tiles ahead, while S is computed
      if (it + 1 < num_tiles) convert_kv_tile(smem, (it + 1) & 1, (it + 1) & 1);
      if (it + 2 < num_tiles) {
        load_kv_raw(smem, it & 1, kv_head_base, block_row, k0 + 2 * kHopperKeys, kv_hi,
                    block_shift, kv_row, plane);
      }
      cp_async_commit();
    });
  }
  cp_async_wait<0>();  // a tile with no key in its partition still copied Q and zeros
  store_rows(dst, st.o, st.m, st.l, st.out_row);
}

// The producer warpgroup over a 16-bit cache: Q, then keys [kv_lo, kv_hi) tile by tile into
// the stages the consumers have freed (hopper_ws.cuh).
template <typename T>
__device__ __forceinline__ void produce_tiles(const HopperSmem& smem, const WsBarriers& bars,
                                              const HopperTile& tile, int kv_head, int kv_lo,
                                              int kv_hi, const T* __restrict__ q,
                                              const T* __restrict__ kv_cache,
                                              const int* __restrict__ block_row, int num_heads,
                                              int num_kv_heads, int block_size,
                                              long long num_slots) {
  load_q<T, 128>(smem, tile, kv_head, q, num_heads, kWsConsumers);
  cp_async_arrive(bars.q_full());
  const long long kv_row = static_cast<long long>(num_kv_heads) * kHopperD;
  const long long plane = num_slots * kv_row;
  const T* kv_head_base = kv_cache + kv_head * kHopperD;
  const BlockShift block_shift{__ffs(block_size) - 1, block_size - 1};
  const int num_tiles = (kv_hi - kv_lo + kHopperKeys - 1) / kHopperKeys;
  for (int it = 0; it < num_tiles; ++it) {
    const int stage = it % kStages;
    // the consumers' use of tile it - 3, the stage's last, is phase it / 3 - 1 of its
    // empty barrier
    if (it >= kStages) mbarrier_wait(bars.empty(stage), (it / kStages - 1) & 1);
    produce_kv_tile(smem, stage, kv_head_base, block_row, kv_lo + it * kHopperKeys, kv_hi,
                    block_shift, kv_row, plane);
    cp_async_arrive(bars.full(stage));
  }
  cp_async_wait<0>();  // no copy outlives the thread that issued it
}

// A consumer warpgroup over a 16-bit cache: each tile once the producer's copies have landed,
// its stage handed back when this warpgroup's last MMA on it is done.
template <typename T>
__device__ __forceinline__ void consume_tiles(const HopperOut<T>& dst, const HopperSmem& smem,
                                              const WsBarriers& bars, const HopperTile& tile,
                                              int kv_head, int kv_lo, int kv_hi, int num_heads,
                                              float scale_log2) {
  RowsState st;
  start_rows(st, tile, kv_head, kv_hi, num_heads);
  const unsigned q_rows = smem.q + (threadIdx.x >> 7) * 64 * kSwizzleRowBytes;
  mbarrier_wait(bars.q_full(), 0);
  const int num_tiles = (kv_hi - kv_lo + kHopperKeys - 1) / kHopperKeys;
  // Ping-pong: the warpgroups take turns at issuing a tile's S, so that one's softmax runs
  // while the other's S is on the tensor cores. Warpgroup w waits on named barrier 2 + w for
  // its turn and, its S issued, hands the turn on; warpgroup 0 starts.
  const int warpgroup = threadIdx.x >> 7;
  if (kPingPong && warpgroup == 1 && num_tiles > 0) turn_pass(2);
  for (int it = 0; it < num_tiles; ++it) {
    const int stage = it % kStages;
    mbarrier_wait(bars.full(stage), (it / kStages) & 1);
    fence_async_shared();  // the copies' writes, before the tensor cores read them
    if (kPingPong) turn_wait(2 + warpgroup);
    attend_tile<T>(st, q_rows, smem.k(stage), smem.v(stage), kv_lo + it * kHopperKeys,
                   scale_log2, [&] {
                     // every wait of the other's has its pass: warpgroup 1's last is not
                     if (kPingPong && (warpgroup == 0 || it + 1 < num_tiles)) {
                       turn_pass(2 + (warpgroup ^ 1));
                     }
                   });
    if ((threadIdx.x & 127) == 0) mbarrier_arrive(bars.empty(stage));
  }
  store_rows(dst, st.o, st.m, st.l, st.out_row);
}

template <typename T, typename KvT>
__device__ __forceinline__ void hopper_attention_impl(
    const HopperOut<T>& dst, const T* __restrict__ q, const KvT* __restrict__ kv_cache,
    const int* __restrict__ query_start_loc, const int* __restrict__ seq_lens,
    const int* __restrict__ block_tables, int num_seqs, int num_heads, int num_kv_heads,
    int block_size, int max_blocks_per_seq, long long num_slots, float scale_log2,
    int min_rows, int max_rows) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const HopperSmem smem = hopper_smem(smem_raw);
  const int kv_head = blockIdx.x % num_kv_heads;
  const int tile_index = blockIdx.x / num_kv_heads;
  HopperTile tile;
  const int group = num_heads / num_kv_heads;
  tile.group = group;
  const int seq = last_not_above(num_seqs, tile_index, [=](int i) {
    return tile_start(query_start_loc[i], i, group, kHopperRows);
  });
  tile.q_begin = query_start_loc[seq];
  const int q_len = query_start_loc[seq + 1] - tile.q_begin;
  tile.rows_in_seq = q_len * tile.group;
  if (tile.rows_in_seq < min_rows || tile.rows_in_seq > max_rows) return;  // another launch's
  // Tiles run last rows first: the rows that see the most keys start earliest.
  const int tiles_in_seq = (tile.rows_in_seq + kHopperRows - 1) / kHopperRows;
  const int tile_in_seq = tile_index - tile_start(tile.q_begin, seq, tile.group, kHopperRows);
  if (tile_in_seq >= tiles_in_seq) return;
  tile.row0 = (tiles_in_seq - 1 - tile_in_seq) * kHopperRows;
  const int seq_len = seq_lens[seq];
  tile.context = seq_len - q_len;
  const int valid_rows = min(kHopperRows, tile.rows_in_seq - tile.row0);
  const int part_len = partition_len(seq_len, dst.num_partitions);
  const int kv_lo = blockIdx.z * part_len;
  const int last_key = tile.context + (tile.row0 + valid_rows - 1) / tile.group;
  const int kv_hi = min(kv_lo + part_len, last_key + 1);
  const bool live = kv_lo < seq_len;  // else a partition past the sequence's end
  const int* block_row = block_tables + static_cast<long long>(seq) * max_blocks_per_seq;
  if constexpr (sizeof(KvT) == 1) {
    if (live) {
      attend_keys_e4m3<T>(dst, smem, tile, kv_head, kv_lo, kv_hi, q, kv_cache, block_row,
                          num_heads, num_kv_heads, block_size, num_slots, scale_log2);
    }
    if (dst.num_partitions == 1) return;
    // Empty partitions count in too, or the count would never reach num_partitions.
    if (!last_to_arrive(dst.counters + blockIdx.x, dst.num_partitions)) return;
  } else {
    const WsBarriers bars = ws_barriers(smem);
    init_ws_barriers(bars);
    if (threadIdx.x >= kWsConsumers) {
      registers_down<kProducerRegisters>();
      if (live) {
        produce_tiles<T>(smem, bars, tile, kv_head, kv_lo, kv_hi, q, kv_cache, block_row,
                         num_heads, num_kv_heads, block_size, num_slots);
      }
      return;
    }
    registers_up<kConsumerRegisters>();
    if (live) consume_tiles<T>(dst, smem, bars, tile, kv_head, kv_lo, kv_hi, num_heads, scale_log2);
    if (dst.num_partitions == 1) return;
    if (!consumers_last_to_arrive(dst.counters + blockIdx.x, dst.num_partitions, bars)) return;
  }
  // the tiles' bytes, not the mbarriers after them (still mbarriers to the hardware)
  constexpr int kSmemFloats = (1 + 2 * kStages) * kTileBytes / static_cast<int>(sizeof(float));
  merge_partitions<T, kHopperD, kWsConsumers / 32, kSmemFloats>(
      dst.out, dst.part_acc, dst.part_max, dst.part_sum, reinterpret_cast<float*>(smem_raw),
      tile.row0, valid_rows, tile.group, tile.q_begin, kv_head, num_heads, dst.rows_total,
      num_live_partitions(seq_len, part_len));
}

// Where accumulator element i of a 64-column half sits in a row-major [64][128] matrix
// (wgmma.cuh's layout), for this thread of a one-warpgroup probe.
__device__ __forceinline__ int probe_index(int half, int i) {
  const int lane = threadIdx.x & 31;
  const int row = ((threadIdx.x >> 5) & 3) * 16 + (lane >> 2) + 8 * ((i >> 1) & 1);
  return row * 128 + half * 64 + 8 * (i >> 2) + 2 * (lane & 3) + (i & 1);
}

__device__ __forceinline__ void store_probe(float* out, const float (&acc)[2][32]) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
#pragma unroll
    for (int i = 0; i < 32; ++i) out[probe_index(half, i)] = acc[half][i];
  }
}

// One warpgroup: s [64][128] = q [64][128] k[128][128]^T through issue_scores.
template <typename T>
__device__ __forceinline__ void probe_scores(float* s_out, const T* q, const T* k) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const HopperSmem smem = hopper_smem(smem_raw);
  for (int c = threadIdx.x; c < 128 * 16; c += 128) {
    const int row = c >> 4;
    if (row < 64) cp_async_16_or_zero(tile_chunk(smem.q, row, c & 15), q + c * 8, true);
    cp_async_16_or_zero(tile_chunk(smem.k(0), row, c & 15), k + c * 8, true);
  }
  cp_async_commit();
  cp_async_wait<0>();
  fence_async_shared();
  __syncthreads();
  float s[2][32];
#pragma unroll
  for (int i = 0; i < 32; ++i) s[0][i] = s[1][i] = 0.f;
  issue_scores<T>(s[0], smem.q, smem.k(0), 0);
  issue_scores<T>(s[1], smem.q, smem.k(0), 64);
  wgmma_wait<0>();
  store_probe(s_out, s);
}

// One warpgroup: o [64][128] = p [64][128] (float, rounded to T) v [128][128] through
// probabilities_to_a and issue_values, 64 keys at a time.
template <typename T>
__device__ __forceinline__ void probe_values(float* o_out, const float* p_in, const T* v) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const HopperSmem smem = hopper_smem(smem_raw);
  for (int c = threadIdx.x; c < 128 * 16; c += 128) {
    cp_async_16_or_zero(tile_chunk(smem.v(0), c >> 4, c & 15), v + c * 8, true);
  }
  cp_async_commit();
  cp_async_wait<0>();
  fence_async_shared();
  __syncthreads();
  float o[2][32];
#pragma unroll
  for (int i = 0; i < 32; ++i) o[0][i] = o[1][i] = 0.f;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float s[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = p_in[probe_index(half, i)];
    unsigned p[4][4];
    probabilities_to_a<T>(p, s);
    issue_values<T>(o, p, smem.v(0), half * 64);
    wgmma_wait<0>();
  }
  store_probe(o_out, o);
}

}  // namespace
}  // namespace inflightd

// The arguments of paged_attention.cuh's kernels, so one launch path serves both; the
// soft-capping, ALiBi and window arguments are unused here (the plan sends those launches to
// the _extras kernels).
#define INFLIGHTD_PAGED_ATTENTION_HOPPER(T, KvT, NAME, THREADS)                                 \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) NAME(                                \
          T* out, float* part_acc, float* part_max, float* part_sum, unsigned* counters,        \
          const T* q, const KvT* kv_cache, const int* query_start_loc, const int* seq_lens,     \
          const int* block_tables, int num_seqs, int num_tokens, int num_heads,                 \
          int num_kv_heads, int block_size, int max_blocks_per_seq, long long num_slots,        \
          float scale_log2, const float* alibi_slopes, float cap_in, float cap_out, int window, \
          int num_partitions, int min_rows, int max_rows) {                                     \
    inflightd::wait_for_previous_kernel();                                                      \
    const inflightd::HopperOut<T> dst{out, part_acc, part_max, part_sum, counters,             \
                                      num_partitions,                                           \
                                      static_cast<long long>(num_tokens) * num_heads};          \
    inflightd::hopper_attention_impl<T, KvT>(dst, q, kv_cache, query_start_loc, seq_lens,       \
                                        block_tables, num_seqs, num_heads, num_kv_heads,        \
                                        block_size, max_blocks_per_seq, num_slots, scale_log2,  \
                                        min_rows, max_rows);                                    \
  }

// The probes, of the 16-bit MMAs.
#define INFLIGHTD_WGMMA_PROBES(T, SUFFIX)                                                       \
  extern "C" __global__ void __launch_bounds__(128) wgmma_probe_scores_##SUFFIX(                \
      float* s, const T* q, const T* k) {                                                       \
    inflightd::probe_scores<T>(s, q, k);                                                        \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(128) wgmma_probe_values_##SUFFIX(                \
      float* o, const float* p, const T* v) {                                                   \
    inflightd::probe_values<T>(o, p, v);                                                        \
  }

using inflightd::kHopperThreads;
using inflightd::kWsThreads;
INFLIGHTD_PAGED_ATTENTION_HOPPER(__nv_bfloat16, __nv_bfloat16, paged_attention_hopper_bf16_d128,
                                 kWsThreads)
INFLIGHTD_PAGED_ATTENTION_HOPPER(__half, __half, paged_attention_hopper_fp16_d128, kWsThreads)
INFLIGHTD_PAGED_ATTENTION_HOPPER(__nv_bfloat16, inflightd::Fp8,
                                 paged_attention_hopper_bf16_kvfp8_d128, kHopperThreads)
INFLIGHTD_PAGED_ATTENTION_HOPPER(__half, inflightd::Fp8, paged_attention_hopper_fp16_kvfp8_d128,
                                 kHopperThreads)
INFLIGHTD_WGMMA_PROBES(__nv_bfloat16, bf16)
INFLIGHTD_WGMMA_PROBES(__half, fp16)
