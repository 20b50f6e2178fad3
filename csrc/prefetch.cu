// Weights a coming kernel will stream, started into L2 ahead of it (sm_90's bulk prefetch).
//
// In a batch-1 decode step the GEMVs stream weights from HBM, and the small kernels between
// them (norms, the cache write, attention) leave HBM idle: on GPT-2 XL about a third of the
// step. Launched just before those kernels, prefetch_l2 asks L2 for the head of the next
// GEMV's weight, so HBM keeps streaming while they run and the GEMV then reads its first
// bytes from L2. It changes no memory, so it needs no ordering against the kernels around
// it, except this: a kernel after it waits (griddepcontrol.wait) for it to complete and
// takes that to mean the kernel before it has completed too. So CTA 0 waits for the
// previous kernel before exiting, after every CTA has let the next kernel start.
//
//   # base:  | chunk 0 | chunk 1 | ... | chunk 31 | chunk 32 | ...   (chunk bytes each)
//   # thread:   t0        t1             t31        t0 of CTA 1, or t0 again
//
// bytes and chunk are multiples of 16 and base is 16-byte aligned (the wrapper rounds).
// Before sm_90 it does nothing (the wrapper launches it only from sm_90 on).
extern "C" __global__ void __launch_bounds__(32) prefetch_l2(const char* base, long long bytes,
                                                            int chunk) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x * chunk;
  long long offset = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * chunk;
  for (; offset < bytes; offset += stride) {
    const long long left = bytes - offset;
    const unsigned size = static_cast<unsigned>(left < chunk ? left : chunk);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + offset), "r"(size)
                 : "memory");
  }
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  if (blockIdx.x == 0 && threadIdx.x == 0) asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
