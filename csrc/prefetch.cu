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
//   # base:  | chunk 0 | chunk 1 | ... | chunk p-1 | chunk p | ...   (chunk bytes each)
//   #   CTA 0, threads 0 .. p-1          | CTA 1, thread 0 ...      (p = chunks_per_cta)
//
// The chunks are spread over many one-warp CTAs, one SM each, rather than issued by a few:
// each SM's bulk-copy unit sends its requests one after another.
// bytes and chunk are multiples of 16 and base is 16-byte aligned (the wrapper rounds).
// Before sm_90 it does nothing (the wrapper launches it only from sm_90 on).

extern "C" __global__ void __launch_bounds__(32) prefetch_l2(const char* base, long long bytes,
                                                            int chunk, int chunks_per_cta) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const long long first = static_cast<long long>(blockIdx.x) * chunks_per_cta;
  for (int i = threadIdx.x; i < chunks_per_cta; i += blockDim.x) {
    const long long offset = (first + i) * chunk;
    if (offset >= bytes) break;
    const long long left = bytes - offset;
    const unsigned size = static_cast<unsigned>(left < chunk ? left : chunk);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + offset), "r"(size)
                 : "memory");
  }
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  if (blockIdx.x == 0 && threadIdx.x == 0) asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
