// Tensor parallelism's all-reduce over the GPUs of one host, as one kernel for the small
// tensors of decode steps (the hidden states after o_proj and down_proj): every rank's
// buffer is mapped into every other rank (CUDA IPC, read over NVLink where the GPUs differ;
// server/engine/parallel/ipc_all_reduce.py), so a call is one launch a CUDA graph can hold.
//
// Each rank's buffer:
//
//   # | flags [kMaxRanks][kMaxCtas] u32 | epochs [kMaxCtas] u32 | slot 0 | slot 1 |
//   #   flags[p][b]  the last call CTA b of rank p has announced to this rank
//   #   epochs[b]    this rank's own count of CTA b's calls
//
// CTA b owns the same bytes of the slots in every call, whatever the tensor's size: chunks
// of kThreads 16-byte vectors, chunk c to CTA c % kMaxCtas. A call runs the CTAs that own
// any of its chunks (all kMaxCtas past 256 chunks); one that has none leaves its bytes and
// its count alone.
//
//   # vectors: | chunk 0 | chunk 1 | ... | chunk 255 | chunk 256 | ...
//   #   CTA:        0         1              255          0
//
// In its call e, CTA b copies its chunks of the input into slot e % 2 of its own buffer,
// announces e in flags[rank][b] of every rank's buffer (after a system-scope fence, so the
// copy is seen first), waits until every rank has announced e for b, and sums its chunks
// from every rank's slot e % 2, in rank order, so every rank ends with the same bits. Two
// slots suffice: a rank overwrites those bytes of slot e % 2 (CTA b again, call e + 2) only
// after every rank has announced e + 1 for b, which a rank does only once its call e is
// over. (Slices that depended on the tensor's size would break this: another CTA's bytes
// are not covered by b's flags.) A rank may announce e + 1 before a slower one has read e,
// so the wait is for "at least e".
//
// n is a multiple of a vector and every pointer 16-byte aligned (the wrapper checks). in may
// be out: each thread reads its own elements before it writes them.
#include "common.cuh"

using namespace inflightd;

namespace {

constexpr int kMaxRanks = 8;
constexpr int kMaxCtas = 256;  // the largest grid
constexpr int kThreads = 512;
constexpr long long kHeaderBytes = (kMaxRanks + 1) * kMaxCtas * 4;

__device__ __forceinline__ void store_release_sys(unsigned* p, unsigned v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ unsigned load_acquire_sys(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

template <typename T> struct Vector {
  static constexpr int kValues = 16 / sizeof(T);
  __device__ static void add(float (&acc)[kValues], const uint4& v) {
    const T* values = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int i = 0; i < kValues; ++i) acc[i] += to_float(values[i]);
  }
  __device__ static uint4 pack(const float (&acc)[kValues]) {
    uint4 v;
    T* values = reinterpret_cast<T*>(&v);
#pragma unroll
    for (int i = 0; i < kValues; ++i) values[i] = from_float<T>(acc[i]);
    return v;
  }
};

template <> struct Vector<float> {
  static constexpr int kValues = 4;
  __device__ static void add(float (&acc)[4], const uint4& v) {
    acc[0] += __uint_as_float(v.x);
    acc[1] += __uint_as_float(v.y);
    acc[2] += __uint_as_float(v.z);
    acc[3] += __uint_as_float(v.w);
  }
  __device__ static uint4 pack(const float (&acc)[4]) {
    return make_uint4(__float_as_uint(acc[0]), __float_as_uint(acc[1]), __float_as_uint(acc[2]),
                      __float_as_uint(acc[3]));
  }
};

__device__ __forceinline__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// every rank has the slice of CTA b of call `epoch` in its slot: announce ours, wait for
// theirs. A rank that never comes (its process died) would hold this one here for good:
// after timeout_ns the kernel traps, which fails this rank's CUDA context, so its host
// sees an error rather than a hang (as NCCL's watchdog ends a collective that times out).
__device__ __forceinline__ void meet_peers(const unsigned long long* bases, int rank, int world,
                                           unsigned epoch, long long timeout_ns) {
  __syncthreads();  // this CTA's slice is in our slot
  const int peer = threadIdx.x;
  if (peer < world) {
    unsigned* peer_flags = reinterpret_cast<unsigned*>(bases[peer]);
    __threadfence_system();
    store_release_sys(peer_flags + rank * kMaxCtas + blockIdx.x, epoch);
    const unsigned* ours = reinterpret_cast<const unsigned*>(bases[rank]);
    const unsigned* flag = ours + peer * kMaxCtas + blockIdx.x;
    const unsigned long long start = now_ns();
    while (static_cast<int>(load_acquire_sys(flag) - epoch) < 0) {
      if (now_ns() - start > static_cast<unsigned long long>(timeout_ns)) __trap();
    }
  }
  __syncthreads();
}

template <typename T>
__device__ __forceinline__ void all_reduce_impl(T* out, const T* in, long long n,
                                                const unsigned long long* bases, int rank,
                                                int world, long long slot_bytes,
                                                long long timeout_ns) {
  using V = Vector<T>;
  wait_for_previous_kernel();
  __shared__ unsigned epoch_shared;
  unsigned char* own = reinterpret_cast<unsigned char*>(bases[rank]);
  unsigned* epochs = reinterpret_cast<unsigned*>(own) + kMaxRanks * kMaxCtas;
  if (threadIdx.x == 0) {
    epoch_shared = epochs[blockIdx.x] + 1;
    epochs[blockIdx.x] = epoch_shared;
  }
  __syncthreads();
  const unsigned epoch = epoch_shared;
  const long long slot = kHeaderBytes + (epoch & 1) * slot_bytes;
  const long long num_vectors = n / V::kValues;
  constexpr long long kStride = static_cast<long long>(kMaxCtas) * kThreads;
  const long long first = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  uint4* own_slot = reinterpret_cast<uint4*>(own + slot);
  const uint4* in_vectors = reinterpret_cast<const uint4*>(in);
  for (long long i = first; i < num_vectors; i += kStride) own_slot[i] = in_vectors[i];
  meet_peers(bases, rank, world, epoch, timeout_ns);
  uint4* out_vectors = reinterpret_cast<uint4*>(out);
  for (long long i = first; i < num_vectors; i += kStride) {
    float acc[V::kValues] = {};
    for (int peer = 0; peer < world; ++peer) {
      const uint4* peer_slot =
          reinterpret_cast<const uint4*>(reinterpret_cast<const unsigned char*>(bases[peer]) + slot);
      V::add(acc, __ldcg(peer_slot + i));  // past L1: it may hold the slot of two calls ago
    }
    out_vectors[i] = V::pack(acc);
  }
}

}  // namespace

#define INFLIGHTD_ALL_REDUCE(T, SUFFIX)                                                         \
  extern "C" __global__ void __launch_bounds__(kThreads) all_reduce_##SUFFIX(                       \
      T* out, const T* in, long long n, const unsigned long long* bases, int rank, int world,  \
      long long slot_bytes, long long timeout_ns) {                                            \
    all_reduce_impl<T>(out, in, n, bases, rank, world, slot_bytes, timeout_ns);                 \
  }

INFLIGHTD_ALL_REDUCE(__nv_bfloat16, bf16)
INFLIGHTD_ALL_REDUCE(__half, fp16)
INFLIGHTD_ALL_REDUCE(float, f32)
