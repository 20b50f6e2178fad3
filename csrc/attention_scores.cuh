// How the paged attention kernel turns a raw score q.k into the exp2-domain logit its online
// softmax takes (paged_attention.cuh). The plain kernels only scale; the "_extras" kernels
// (EXTRAS = true) also soft-cap (Gemma 2) and add ALiBi biases (MPT, BLOOM, Falcon-RW,
// Baichuan 13B), in the order of the torch reference (server/engine/ops/torch_ref.py):
//
//   x = q.k * scale
//   x = softcap * tanh(x / softcap)                (softcap given)
//   x = x + slope[head] * (key pos - query pos)    (slopes given: 0 on the diagonal, < 0 back)
//   logit = x * log2(e), or -inf where key pos <= query pos - window (a sliding window given)
//
// Both happen in natural units, then the product with log2(e): the constants below carry it.
#pragma once

#include "attention_common.cuh"

namespace inflightd {

// What a launch says about its scores (kernel arguments, the same for every kernel; the
// plain kernels read only scale_log2).
struct ScoreArgs {
  float scale_log2;           // scale * log2(e)
  const float* alibi_slopes;  // [num_heads] float32 in natural units, or null: no ALiBi
  float cap_in;               // 2 * scale * log2(e) / softcap, or 0: no soft-capping
  float cap_out;              // softcap * log2(e)
  int window;                 // keys a query sees, itself included, or 0: every earlier key
};

template <bool EXTRAS> struct ScoreMath;

template <> struct ScoreMath<false> {
  float scale_log2;
  struct Tile {};  // nothing depends on the key positions

  __device__ __forceinline__ ScoreMath(const ScoreArgs& args, const RowInfo (&)[2],
                                       const int (&)[2])
      : scale_log2(args.scale_log2) {}
  __device__ __forceinline__ Tile tile(int, const RowInfo (&)[2]) const { return {}; }
  __device__ __forceinline__ float operator()(float s, const Tile&, int, int) const {
    return s * scale_log2;
  }
};

// One lane's two rows (h = 0, 1): their slopes, times log2(e) (0 without ALiBi).
template <> struct ScoreMath<true> {
  float scale_log2;
  float cap_in;
  float cap_out;
  float window_floor;  // -window: a key this far back or further is outside it (-inf: none)
  float slope[2];
  // Per K/V tile: each row's distance to the lane's first key of the tile; a score's key is
  // that key plus a compile-time offset, so the bias costs an add and an FMA per score.
  struct Tile {
    float distance[2];
  };

  __device__ __forceinline__ ScoreMath(const ScoreArgs& args, const RowInfo (&rows)[2],
                                       const int (&heads)[2])
      : scale_log2(args.scale_log2), cap_in(args.cap_in), cap_out(args.cap_out),
        window_floor(args.window > 0 ? -static_cast<float>(args.window) : neg_inf()) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      slope[h] = args.alibi_slopes != nullptr && rows[h].valid
                     ? args.alibi_slopes[heads[h]] * 1.4426950408889634f
                     : 0.f;
    }
  }

  // A row sees keys [0, key_limit): its query sits at key_limit - 1 (rows that see nothing
  // have slope 0).
  __device__ __forceinline__ Tile tile(int lane_key0, const RowInfo (&rows)[2]) const {
    Tile t;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      t.distance[h] = static_cast<float>(lane_key0 + 1 - rows[h].key_limit);
    }
    return t;
  }

  // Score s of row h against key lane_key0 + offset. tanh(z) = 1 - 2 / (e^(2z) + 1): exp2
  // and a reciprocal, both to ~1 ulp, where tanh.approx would be off by ~2^-11 relative
  // (softcap 50: 0.02 in a logit). e^(2z) overflowing to inf gives 1, underflowing -1.
  __device__ __forceinline__ float operator()(float s, const Tile& t, int h, int offset) const {
    const float distance = t.distance[h] + static_cast<float>(offset);  // key - query, <= 0
    if (distance <= window_floor) return neg_inf();
    float x;
    if (cap_in != 0.f) {
      const float e = exp2f(s * cap_in);
      x = fmaf(-2.f * cap_out, 1.f / (e + 1.f), cap_out);
    } else {
      x = s * scale_log2;
    }
    return fmaf(slope[h], distance, x);
  }
};

}  // namespace inflightd
