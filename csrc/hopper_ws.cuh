// The Hopper prefill attention kernel's warp-specialised loop (paged_attention_hopper.cu, 16-bit
// caches): a producer warpgroup copies K/V tiles, two consumer warpgroups multiply, and
// stages pass between them through mbarriers, so no barrier of the whole CTA stands in
// the loop and a consumer's MMAs can overlap the other's softmax.
//
//   # threads 0-255: consumers, 64 query rows each (hopper_math.cuh's per-tile math)
//   # threads 256-383: the producer: Q, then each K/V tile into stage t % 3
//   #   full[s]:  128 producer arrivals (cp.async.mbarrier.arrive.noinc: each when its
//   #             copies have landed) -> the stage's tile is in shared memory
//   #   empty[s]: 2 consumer arrivals (one thread each, after its last MMA on the stage)
//   #             -> the producer may refill it
//
// Registers: the producer gives most of its own away (setmaxnreg.dec), the consumers take
// them (setmaxnreg.inc): 128 x 40 + 256 x 232 = 64,512 of the SM's 65,536.
#pragma once

#include "common.cuh"
#include "hopper_tiles.cuh"
#include "mbarrier.cuh"

namespace inflightd {

constexpr int kWsConsumers = 256;
constexpr int kWsThreads = kWsConsumers + 128;
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
// mbarriers (full[3], empty[3], q_full) and the merge's flag, after the tiles
constexpr int kWsBarrierBytes = 64;

template <int REGISTERS> __device__ __forceinline__ void registers_down() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGISTERS));
}
template <int REGISTERS> __device__ __forceinline__ void registers_up() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGISTERS));
}

// The consumers' turns at the tensor cores (paged_attention_hopper.cu's consume_tiles).
constexpr bool kPingPong = true;

// Named barrier `id` over the two consumer warpgroups: one waits (bar.sync) for the other's
// pass (bar.arrive).
__device__ __forceinline__ void turn_wait(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kWsConsumers) : "memory");
}
__device__ __forceinline__ void turn_pass(int id) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(kWsConsumers) : "memory");
}

// A barrier of the consumers alone (the producer may have left): named barrier 1.
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(kWsConsumers) : "memory");
}

// The mbarriers' addresses, after the tiles (hopper_tiles.cuh's layout).
struct WsBarriers {
  unsigned base;
  __device__ __forceinline__ unsigned full(int stage) const { return base + 8 * stage; }
  __device__ __forceinline__ unsigned empty(int stage) const { return base + 24 + 8 * stage; }
  __device__ __forceinline__ unsigned q_full() const { return base + 48; }
  __device__ __forceinline__ unsigned flag() const { return base + 56; }  // an int
};

__device__ __forceinline__ WsBarriers ws_barriers(const HopperSmem& smem) {
  return WsBarriers{smem.q + (1 + 2 * kStages) * kTileBytes};
}

// Thread 0 sets the barriers up; every thread of the CTA must call this.
__device__ __forceinline__ void init_ws_barriers(const WsBarriers& bars) {
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(bars.full(s), 128);
      mbarrier_init(bars.empty(s), 2);
    }
    mbarrier_init(bars.q_full(), 128);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
}

// Keys [k0, k0 + 128) into a stage by the producer's 128 threads: 16 keys of a 16-byte chunk
// each, K and V.
template <typename T>
__device__ __forceinline__ void produce_kv_tile(const HopperSmem& smem, int stage,
                                                const T* __restrict__ kv_head,
                                                const int* __restrict__ block_row, int k0,
                                                int kv_hi, BlockShift block, long long kv_row,
                                                long long plane) {
  const int thread = threadIdx.x - kWsConsumers;
  const int chunk = thread & 15;
#pragma unroll 4
  for (int i = 0; i < kHopperKeys / 8; ++i) {
    const int key = (thread >> 4) + 8 * i;
    const int position = k0 + key;
    const bool valid = position < kv_hi;
    const T* src = kv_head + key_offset(block_row, position, valid, block, kv_row) + chunk * 8;
    cp_async_16_or_zero(tile_chunk(smem.k(stage), key, chunk), src, valid);
    cp_async_16_or_zero(tile_chunk(smem.v(stage), key, chunk), src + plane, valid);
  }
}

// The consumers' version of attention_merge.cuh's last_to_arrive (the producer takes no
// part): whether this CTA is the last of its (row tile, kv head) to finish.
__device__ __forceinline__ bool consumers_last_to_arrive(unsigned* counter, int num_partitions,
                                                         const WsBarriers& bars) {
  __threadfence();
  consumers_sync();
  int* flag = nullptr;
  asm("cvta.shared.u64 %0, %1;" : "=l"(flag) : "l"(static_cast<unsigned long long>(bars.flag())));
  if (threadIdx.x == 0) {
    const unsigned last = static_cast<unsigned>(num_partitions - 1);
    *flag = atomicInc(counter, last) == last;
  }
  consumers_sync();
  const bool arrived_last = *flag != 0;
  if (arrived_last) __threadfence();
  return arrived_last;
}

}  // namespace inflightd
