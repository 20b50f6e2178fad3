// Grammar masks on the logits: logits[rows[r], t] = -inf wherever bit t of bitmask row r is
// clear (structured outputs; server/structured_output/bitmask.py is the torch reference).
//
// bitmask int32 [R, words]: bit j of word w allows token 32 * w + j (xgrammar's layout).
// Tokens past 32 * words (a model's embedding padded beyond its tokenizer) are never allowed.
// grid = (R, ceil(vocab / 256)); one thread per token, so a warp reads one bitmask word
// (a broadcast) and writes only the tokens it masks, coalesced.

#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    apply_token_bitmask_f32(float* logits, const int* bitmask, const long long* rows,
                            int vocab, int words, long long logits_stride) {
  inflightd::wait_for_previous_kernel();
  const int token = blockIdx.y * blockDim.x + threadIdx.x;
  if (token >= vocab) return;
  const int word_index = token >> 5;
  const unsigned int word =
      word_index < words
          ? static_cast<unsigned int>(bitmask[blockIdx.x * static_cast<long long>(words) + word_index])
          : 0u;
  if (!((word >> (token & 31)) & 1u)) {
    logits[rows[blockIdx.x] * logits_stride + token] = -__int_as_float(0x7f800000);
  }
}
