// Paged attention over the KV pool for a packed batch of prefill chunks and decodes.
//
// One CTA = (tile of query rows, kv head, key partition); attention_common.cuh says how
// rows and partitions are laid out. Each of the CTA's WARPS warps owns 16 query rows and
// walks the partition's keys in tiles of kBlockN, double-buffered in shared memory with
// cp.async, computing S = Q K^T and O += P V on tensor cores (mma.m16n8k16, float
// accumulators) with an online softmax in the exp2 domain. Decodes launch WARPS = 1 (a tile
// is the group's query heads of one token); prefill chunks launch WARPS = 2 or 4. With
// several key partitions, the last CTA of a (row tile, kv head) to finish merges the tile's
// partitions itself (attention_merge.cuh), so a split launch needs no second kernel.
//
// Key split (the "w1k2" kernels: WARPS = 1, KEY_SPLIT = 2, 64 threads). One warp alone
// issues a whole tile's copies and MMAs, then waits; here two warps share the 16 rows:
//
//   # K/V tile (kBlockN = 32 keys): | keys 0-15: warp 0 | keys 16-31: warp 1 |
//
// Each warp copies, scores and accumulates only its own 16 keys of every tile, with its own
// online-softmax state, so it waits only on its own copies (__syncwarp, no CTA barrier per
// tile). After the last tile the two states are combined through shared memory with the
// flash-decoding merge arithmetic, and warp 0 runs the usual epilogue.
//
// Causality: query token j of a sequence with q_len new tokens sits at position
// context + j (context = seq_len - q_len) and sees keys 0 ..= context + j.
//
// kv_cache [2, num_blocks, block_size, Hkv, D] of KvT (T, or e4m3 bytes: Fp8); the key at
// position p of sequence s lives in slot block_tables[s][p / block_size] * block_size +
// p % block_size. The kernels are instantiated in paged_attention.cu (16-bit caches) and
// paged_attention_fp8.cu (e4m3 caches); attention_fragments.cuh holds what differs, and
// attention_tile_math.cuh the per-tile math of each tile layout.
#pragma once

#include "attention_common.cuh"
#include "attention_fragments.cuh"
#include "attention_key_split.cuh"
#include "attention_merge.cuh"
#include "attention_scores.cuh"
#include "attention_tile_math.cuh"
#include "common.cuh"
#include "mma.cuh"

namespace inflightd {

// Offset (elements) of key `position`'s row inside the K (or V) plane. Lane j of every warp
// looks up key k0 + j of a tile (kBlockN == 32 keys, one per lane) and the loaders take
// their rows' offsets from it by shuffle, so each tile reads the block table once per lane.
// Keys at or past kv_hi are never read: they get 0.
__device__ __forceinline__ long long key_row_offset(const int* __restrict__ block_row,
                                                    int position, int kv_hi, int block_size,
                                                    long long kv_row) {
  if (position >= kv_hi) return 0;
  const int block = position / block_size;
  return (static_cast<long long>(block_row[block]) * block_size + (position - block * block_size)) *
         kv_row;
}

// Keys [key_base, key_base + KEYS) of the tile, K and V, copied by THREADS threads
// (`loader` is this thread's index among them), 16 bytes a copy.
template <typename KvT, int D, int KEYS, int THREADS>
__device__ __forceinline__ void load_kv_tile(KvTile<KvT, D>& dst, const KvT* __restrict__ kv_head,
                                             long long lane_key_offset, int loader, int key_base,
                                             int k0, int kv_hi, long long plane) {
  static_assert(kBlockN == 32, "one key per lane");
  constexpr int PER_COPY = 16 / static_cast<int>(sizeof(KvT));
  constexpr int CHUNKS = D / PER_COPY;
  constexpr int COPIES = 2 * KEYS * CHUNKS;
  // Rounded up where the copies do not divide evenly (e4m3 at D = 80 on 4 warps: 320 over
  // 128 threads); the lanes past the end still run the shuffle, which the whole warp must
  // (shfl takes the source lane modulo 32, so their out-of-range key is harmless).
  constexpr int PER_THREAD = (COPIES + THREADS - 1) / THREADS;
#pragma unroll 2  // fully unrolled, the 64-bit addresses of all copies crowd out the registers
  for (int i = 0; i < PER_THREAD; ++i) {
    const int c = loader + i * THREADS;
    const int which = c / (KEYS * CHUNKS);
    const int rem = c - which * (KEYS * CHUNKS);
    const int key = key_base + rem / CHUNKS;
    const int chunk = rem - (key - key_base) * CHUNKS;
    const long long offset = __shfl_sync(0xffffffffu, lane_key_offset, key);
    if (COPIES % THREADS != 0 && c >= COPIES) continue;
    KvT* d = &dst[which][key][chunk * PER_COPY];
    if (k0 + key < kv_hi) {
      cp_async_16(d, kv_head + which * plane + offset + chunk * PER_COPY);
    } else {
      // Zeros, not garbage: a masked key still multiplies its V row by p = 0.
      *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// CTA order: blockIdx.x = tile * num_kv_heads + kv_head, so neighbouring CTAs share a
// tile's cache rows ([slot][kv head][dim], contiguous) rather than each reading one head's
// slice of them. Read from blockIdx where needed rather than kept in registers (the 4-warp
// kernels have none to spare).
__device__ __forceinline__ int cta_kv_head(int num_kv_heads) { return blockIdx.x % num_kv_heads; }

__device__ __forceinline__ int cta_tile(int num_kv_heads) { return blockIdx.x / num_kv_heads; }

// Between copying a K/V stage and reading it, and between reading it and refilling it. With
// a key split each warp copies and reads only its own keys, so a warp barrier does.
template <int KEY_SPLIT>
__device__ __forceinline__ void stage_barrier() {
  if constexpr (KEY_SPLIT == 1) {
    __syncthreads();
  } else {
    __syncwarp();
  }
}

// Where a CTA's rows come from: one row tile of one sequence, for one kv head.
struct TileInfo {
  int seq;
  int q_begin;      // the sequence's first token in q and out
  int rows_in_seq;  // q_len * group
  int row0;         // the tile's first row
  int context;      // keys cached before the sequence's first new token
  int group;        // query heads per kv head
};

// A CTA's shared memory: two K/V stages, then room for the Q tile where it is larger than
// a stage (the 4-warp kernels over an fp8 cache); otherwise Q sits in stage 1 until the
// first prefetch overwrites it. Where the tile math reads Q from shared memory all along
// (Q_KEPT: 16-row tiles at head_dim 256), Q gets its own space after both stages.
//
//   # | K/V stage 0 | K/V stage 1 ... |              (Q tile from the start of stage 1)
//   # | K/V stage 0 | K/V stage 1 | Q tile |          (Q_KEPT)
//
// server/engine/ops/cuda_attention.py computes the same sizes for the launches that need
// dynamic shared memory.
constexpr int kStaticSmemLimit = 48 * 1024;  // bytes of __shared__ arrays a kernel may declare

template <typename T, typename KvT, int D, int ROWS, bool Q_KEPT>
struct SmemLayout {
  static constexpr int kStageBytes = static_cast<int>(sizeof(KvTile<KvT, D>));
  static constexpr int kQPad = QRow<D>::kPad;  // elements of a Q row
  static constexpr int kQBytes = ROWS * kQPad * static_cast<int>(sizeof(T));
  static constexpr int kQOffset = Q_KEPT ? 2 * kStageBytes : kStageBytes;
  static constexpr int kBytes =
      Q_KEPT ? 2 * kStageBytes + kQBytes
             : kStageBytes + (kQBytes > kStageBytes ? kQBytes : kStageBytes);
};

// Keys [kv_lo, kv_hi) of the tile, from its tile first_tile on (an even one: those before it
// are masked for every row), then its output (one partition) or partials (several).
// EXTRAS: soft-capping and ALiBi as `score_args` says (attention_scores.cuh).
template <typename T, typename KvT, int D, int WARPS, int KEY_SPLIT, bool TRANSPOSED,
          bool EXTRAS>
__device__ __forceinline__ void attend_partition(
    unsigned char* smem_raw, const TileInfo& tile, int kv_lo, int kv_hi, int first_tile,
    T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_max,
    float* __restrict__ part_sum, const T* __restrict__ q, const KvT* __restrict__ kv_cache,
    const int* __restrict__ block_tables, int num_heads, int num_kv_heads, int block_size,
    int max_blocks_per_seq, long long num_slots, const ScoreArgs& score_args,
    int num_partitions, long long rows_total) {
  constexpr int THREADS = 32 * WARPS * KEY_SPLIT;
  constexpr int KEYS = kBlockN / KEY_SPLIT;  // of each tile, per warp
  using Math = TileMath<T, KvT, D, KEYS, TRANSPOSED>;
  constexpr int ROWS = Math::kRowsPerWarp * WARPS;
  constexpr int LOADERS = KEY_SPLIT == 1 ? THREADS : 32;  // threads copying one key slice
  using Layout = SmemLayout<T, KvT, D, ROWS, Math::kQInSmem>;
  constexpr int PAD = Layout::kQPad;
  static_assert(KEY_SPLIT == 1 || (KEY_SPLIT == 2 && WARPS == 1), "key split: 1-warp rows only");
  static_assert(!TRANSPOSED || WARPS == 1, "transposed tiles: 1-warp rows only");
  static_assert((D / 8 + 1) * 32 * 16 <= Layout::kBytes, "combine fits in shared memory");
  KvTile<KvT, D>* smem = reinterpret_cast<KvTile<KvT, D>*>(smem_raw);
  const int group = tile.group;
  const int kv_head = cta_kv_head(num_kv_heads);
  const int warp = (threadIdx.x >> 5) / KEY_SPLIT;  // which rows
  const int key_base = KEY_SPLIT == 1 ? 0 : (threadIdx.x >> 5) * KEYS;  // which keys of a tile
  const int loader = KEY_SPLIT == 1 ? threadIdx.x : threadIdx.x & 31;
  const int lane = threadIdx.x & 31;
  RowInfo rows[2];
  int heads[2];  // query heads of the lane's rows
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = tile.row0 + warp * Math::kRowsPerWarp + Math::lane_row(h);
    const int token = r / group;
    rows[h].valid = r < tile.rows_in_seq;
    rows[h].key_limit = rows[h].valid ? tile.context + token + 1 : 0;
    // (out_row's sum kept as it was: regrouped, it cost the plain kernels registers)
    rows[h].out_row = static_cast<long long>(tile.q_begin + token) * num_heads +
                      kv_head * group + (r - token * group);
    heads[h] = kv_head * group + (r - token * group);
  }
  const ScoreMath<EXTRAS> score(score_args, rows, heads);

  // Q tile -> stage 1 (free until the first prefetch) or its own space, first K/V tile ->
  // stage 0.
  T(*q_tile)[PAD] = reinterpret_cast<T(*)[PAD]>(smem_raw + Layout::kQOffset);
  for (int c = threadIdx.x; c < ROWS * (D / 8); c += THREADS) {
    const int r = c / (D / 8);
    const int chunk = c - r * (D / 8);
    const int row = tile.row0 + r;
    if (row < tile.rows_in_seq) {
      const int token = row / group;
      const long long head = kv_head * group + (row - token * group);
      cp_async_16(&q_tile[r][chunk * 8],
                  q + (static_cast<long long>(tile.q_begin + token) * num_heads + head) * D +
                      chunk * 8);
    } else {
      *reinterpret_cast<uint4*>(&q_tile[r][chunk * 8]) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
  const long long kv_row = static_cast<long long>(num_kv_heads) * D;
  const long long plane = num_slots * kv_row;
  const KvT* kv_head_base = kv_cache + kv_head * D;
  const int* block_row = block_tables + static_cast<long long>(tile.seq) * max_blocks_per_seq;
  const int num_tiles = kv_hi > kv_lo ? (kv_hi - kv_lo + kBlockN - 1) / kBlockN : 0;
  const int first_k = kv_lo + first_tile * kBlockN;
  // Block-table lookups run one tile ahead of the copies that need them.
  long long next_offset = key_row_offset(block_row, first_k + lane, kv_hi, block_size, kv_row);
  if (first_tile < num_tiles) {
    load_kv_tile<KvT, D, KEYS, LOADERS>(smem[0], kv_head_base, next_offset, loader, key_base,
                                      first_k, kv_hi, plane);
    next_offset =
        key_row_offset(block_row, first_k + kBlockN + lane, kv_hi, block_size, kv_row);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  typename Math::QFragments qa;
  Math::template load_q<PAD>(qa, &q_tile[warp * Math::kRowsPerWarp][0]);
  __syncthreads();  // stage 1 is overwritten by the first prefetch below

  typename Math::Accumulator acc;
#pragma unroll
  for (auto& row : acc) row[0] = row[1] = row[2] = row[3] = 0.f;
  float m[2] = {neg_inf(), neg_inf()};
  float l[2] = {0.f, 0.f};
  for (int it = first_tile; it < num_tiles; ++it) {
    const int k0 = kv_lo + it * kBlockN;
    if (it + 1 < num_tiles) {
      load_kv_tile<KvT, D, KEYS, LOADERS>(smem[(it + 1) & 1], kv_head_base, next_offset, loader,
                                        key_base, k0 + kBlockN, kv_hi, plane);
      next_offset =
          key_row_offset(block_row, k0 + 2 * kBlockN + lane, kv_hi, block_size, kv_row);
    }
    cp_async_commit();
    cp_async_wait<1>();  // tile `it` has landed; tile `it + 1` may still be in flight
    stage_barrier<KEY_SPLIT>();
    Math::attend(smem[it & 1], qa, acc, m, l, rows, key_base, k0, kv_hi, score);
    stage_barrier<KEY_SPLIT>();  // everyone is done with this stage before it is refilled
  }
  if constexpr (KEY_SPLIT > 1) {
    if (!combine_key_slices<!TRANSPOSED>(reinterpret_cast<float*>(smem_raw), acc, m, l)) return;
  }
  Math::store(out, part_acc, part_max, part_sum, acc, m, l, rows, num_partitions, rows_total);
}

// The first key any row of the tile sees through a sliding window of `window` keys (0: no
// window), down to a whole tile of keys. Rows run token-major, so row0's token is the
// tile's earliest query, at position context + row0 / group:
//
//   # | keys no row of the tile sees | window of the first row ... | the tile's queries |
//   ^ 0                            ^ first query - window + 1      ^ context + row0 / group
__device__ __forceinline__ int first_windowed_key(const TileInfo& tile, int window) {
  if (window <= 0) return 0;
  const int first_query = tile.context + tile.row0 / tile.group;
  return max(0, first_query - window + 1) / kBlockN * kBlockN;
}

template <typename T, typename KvT, int D, int WARPS, int KEY_SPLIT, bool TRANSPOSED,
          bool EXTRAS>
__device__ __forceinline__ void paged_attention_impl(
    T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_max,
    float* __restrict__ part_sum, unsigned* __restrict__ counters, const T* __restrict__ q,
    const KvT* __restrict__ kv_cache, const int* __restrict__ query_start_loc,
    const int* __restrict__ seq_lens, const int* __restrict__ block_tables, int num_seqs,
    int num_tokens, int num_heads, int num_kv_heads, int block_size, int max_blocks_per_seq,
    long long num_slots, const ScoreArgs& score_args, int num_partitions, int min_rows,
    int max_rows) {
  using Math = TileMath<T, KvT, D, kBlockN / KEY_SPLIT, TRANSPOSED>;
  constexpr int ROWS = Math::kRowsPerWarp * WARPS;
  constexpr int SMEM_BYTES = SmemLayout<T, KvT, D, ROWS, Math::kQInSmem>::kBytes;
  // Past 48 KB (head_dim 256 over a 16-bit cache) only dynamic shared memory will do: the
  // launch passes SMEM_BYTES (server/engine/ops/cuda_attention_smem.py computes the same).
  unsigned char* smem;
  if constexpr (SMEM_BYTES > kStaticSmemLimit) {
    extern __shared__ __align__(16) unsigned char dynamic_smem[];
    smem = dynamic_smem;
  } else {
    __shared__ __align__(16) unsigned char static_smem[SMEM_BYTES];
    smem = static_smem;
  }

  const int tile_index = cta_tile(num_kv_heads);
  TileInfo tile;
  tile.group = num_heads / num_kv_heads;
  tile.seq = last_not_above(num_seqs, tile_index, [&](int i) {
    return tile_start(query_start_loc[i], i, tile.group, ROWS);
  });
  tile.q_begin = query_start_loc[tile.seq];
  const int q_len = query_start_loc[tile.seq + 1] - tile.q_begin;
  tile.rows_in_seq = q_len * tile.group;
  // These exits hold for every partition of the tile alike, so no counter sees them.
  if (tile.rows_in_seq < min_rows || tile.rows_in_seq > max_rows) return;  // the other launch's
  // Tiles run last rows first: the rows that see the most keys start earliest.
  const int tiles_in_seq = (tile.rows_in_seq + ROWS - 1) / ROWS;
  const int tile_in_seq = tile_index - tile_start(tile.q_begin, tile.seq, tile.group, ROWS);
  if (tile_in_seq >= tiles_in_seq) return;
  tile.row0 = (tiles_in_seq - 1 - tile_in_seq) * ROWS;
  const int seq_len = seq_lens[tile.seq];
  tile.context = seq_len - q_len;
  const int part_len = partition_len(seq_len, num_partitions);
  const int part_lo = blockIdx.z * part_len;
  const int valid_rows = min(ROWS, tile.rows_in_seq - tile.row0);
  const long long rows_total = static_cast<long long>(num_tokens) * num_heads;
  if (part_lo < seq_len) {  // else a partition past the sequence's end: nothing to attend
    const int kv_hi = min(part_lo + part_len, tile.context + (tile.row0 + valid_rows - 1) /
                                                                 tile.group + 1);
    // Under a sliding window the key tiles before it hold keys every row of the tile masks:
    // the partition skips them (all of them when it ends before the window: its partials
    // then say m = -inf, l = 0). An even count, so the first tile still lands in stage 0.
    int first_tile = 0;
    if constexpr (EXTRAS) {
      first_tile = (max(0, first_windowed_key(tile, score_args.window) - part_lo) / kBlockN) & ~1;
    }
    attend_partition<T, KvT, D, WARPS, KEY_SPLIT, TRANSPOSED, EXTRAS>(
        smem, tile, part_lo, kv_hi, first_tile, out, part_acc, part_max, part_sum, q, kv_cache,
        block_tables, num_heads, num_kv_heads, block_size, max_blocks_per_seq, num_slots,
        score_args, num_partitions, rows_total);
  }
  if (num_partitions == 1) return;
  // Empty partitions count in too, or the count would never reach num_partitions.
  // blockIdx.x is one (tile, kv head): its counter.
  if (!last_to_arrive(counters + blockIdx.x, num_partitions)) return;
  constexpr int SMEM_FLOATS = SMEM_BYTES / static_cast<int>(sizeof(float));
  // Every warp of the CTA merges rows, key-split ones included.
  merge_partitions<T, D, WARPS * KEY_SPLIT, SMEM_FLOATS>(
      out, part_acc, part_max, part_sum, reinterpret_cast<float*>(smem),
      tile.row0, valid_rows, tile.group, tile.q_begin, cta_kv_head(num_kv_heads), num_heads,
      rows_total, num_live_partitions(seq_len, part_len));
}

}  // namespace inflightd

// NAME is the kernel's name up to its head_dim; VARIANT ends it: w<WARPS>, then t for the
// transposed decode tiles (at most 8 rows), then k<KEY_SPLIT> where keys are split; EXTRA is
// empty, or _extras for the kernels that soft-cap and add ALiBi biases (EXTRAS). Every kernel
// takes the same arguments; the plain ones ignore alibi_slopes, cap_in, cap_out and window
// (ScoreArgs, attention_scores.cuh). BOUNDS is its __launch_bounds__.
#define INFLIGHTD_PAGED_ATTENTION(T, KvT, NAME, D, WARPS, KEY_SPLIT, TRANSPOSED, VARIANT,         \
                                  BOUNDS, EXTRAS, EXTRA)                                        \
  extern "C" __global__ void __launch_bounds__ BOUNDS NAME##_d##D##_##VARIANT##EXTRA(             \
      T* out, float* part_acc, float* part_max, float* part_sum, unsigned* counters, const T* q, \
      const KvT* kv_cache, const int* query_start_loc, const int* seq_lens,                     \
      const int* block_tables, int num_seqs, int num_tokens, int num_heads, int num_kv_heads,   \
      int block_size, int max_blocks_per_seq, long long num_slots, float scale_log2,            \
      const float* alibi_slopes, float cap_in, float cap_out, int window, int num_partitions,   \
      int min_rows, int max_rows) {                                                             \
    inflightd::wait_for_previous_kernel();                                                      \
    const inflightd::ScoreArgs score_args{scale_log2, alibi_slopes, cap_in, cap_out, window};   \
    inflightd::paged_attention_impl<T, KvT, D, WARPS, KEY_SPLIT, TRANSPOSED, EXTRAS>(            \
        out, part_acc, part_max, part_sum, counters, q, kv_cache, query_start_loc, seq_lens,     \
        block_tables, num_seqs, num_tokens, num_heads, num_kv_heads, block_size,                 \
        max_blocks_per_seq, num_slots, score_args, num_partitions, min_rows, max_rows);          \
  }

// The variants of one (dtype, cache, head_dim), plain and _extras. A key-split CTA asks for
// KEY_SPLIT_CTAS resident CTAs per SM (w1k2) or TRANSPOSED_CTAS (w1tk2): twice the warps of
// w1 at the same count. The unsplit kernels' bounds are W1, W2, W4: threads only, except at
// head_dim 96, where ptxas, left to itself, held them to 128 registers and spilled; saying 1
// CTA lets them take what they need (at 64 and 128 it would cost those kernels resident CTAs).
#define INFLIGHTD_PAGED_ATTENTION_VARIANTS(T, KvT, NAME, D, KEY_SPLIT_CTAS, TRANSPOSED_CTAS)    \
  INFLIGHTD_PAGED_ATTENTION_BOUNDED(T, KvT, NAME, D, KEY_SPLIT_CTAS, TRANSPOSED_CTAS, (32),     \
                                    (64), (128))
#define INFLIGHTD_PAGED_ATTENTION_BOUNDED(T, KvT, NAME, D, KEY_SPLIT_CTAS, TRANSPOSED_CTAS, W1,  \
                                          W2, W4)                                               \
  INFLIGHTD_PAGED_ATTENTION_SET(T, KvT, NAME, D, KEY_SPLIT_CTAS, TRANSPOSED_CTAS, W1, W2, W4,   \
                                false, )                                                        \
  INFLIGHTD_PAGED_ATTENTION_SET(T, KvT, NAME, D, KEY_SPLIT_CTAS, TRANSPOSED_CTAS, W1, W2, W4,   \
                                true, _extras)
#define INFLIGHTD_PAGED_ATTENTION_SET(T, KvT, NAME, D, KEY_SPLIT_CTAS, TRANSPOSED_CTAS, W1, W2,  \
                                      W4, EXTRAS, EXTRA)                                        \
  INFLIGHTD_PAGED_ATTENTION(T, KvT, NAME, D, 1, 1, false, w1, W1, EXTRAS, EXTRA)                \
  INFLIGHTD_PAGED_ATTENTION(T, KvT, NAME, D, 1, 2, false, w1k2, (64, KEY_SPLIT_CTAS), EXTRAS,   \
                            EXTRA)                                                              \
  INFLIGHTD_PAGED_ATTENTION(T, KvT, NAME, D, 1, 1, true, w1t, W1, EXTRAS, EXTRA)                \
  INFLIGHTD_PAGED_ATTENTION(T, KvT, NAME, D, 1, 2, true, w1tk2, (64, TRANSPOSED_CTAS), EXTRAS,  \
                            EXTRA)                                                              \
  INFLIGHTD_PAGED_ATTENTION(T, KvT, NAME, D, 2, 1, false, w2, W2, EXTRAS, EXTRA)                \
  INFLIGHTD_PAGED_ATTENTION(T, KvT, NAME, D, 4, 1, false, w4, W4, EXTRAS, EXTRA)
