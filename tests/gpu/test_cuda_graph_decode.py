"""A decode step (rope_and_cache + attention through CudaOps) captured in a torch CUDA graph
and replayed with new tokens, new lengths and new block tables, against TorchOps."""

from __future__ import annotations

import torch

from server.engine.attention.metadata import AttentionMetadata
from tests.gpu.helpers import assert_close, cuda_generator, random_tensor

NUM_SEQS, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 4, 32, 8, 128
BLOCK_SIZE, BLOCKS_PER_SEQ, MAX_POSITIONS = 16, 192, 4096
DTYPE = torch.bfloat16


class DecodeBuffers:
    """Static tensors the graph reads; each step copies new values into them."""

    def __init__(self) -> None:
        def zeros(*shape, dtype=torch.int32):
            return torch.zeros(shape, dtype=dtype, device="cuda")
        self.qkv = zeros(NUM_SEQS, (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM, dtype=DTYPE)
        self.positions = zeros(NUM_SEQS, dtype=torch.int64)
        self.slot_mapping = zeros(NUM_SEQS, dtype=torch.int64)
        self.query_start_loc = torch.arange(NUM_SEQS + 1, dtype=torch.int32, device="cuda")
        self.seq_lens = zeros(NUM_SEQS)
        self.block_tables = zeros(NUM_SEQS, BLOCKS_PER_SEQ)

    def split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv.split((NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM,
                                  NUM_KV_HEADS * HEAD_DIM), dim=-1)
        return (q.view(NUM_SEQS, NUM_HEADS, HEAD_DIM), k.view(NUM_SEQS, NUM_KV_HEADS, HEAD_DIM),
                v.view(NUM_SEQS, NUM_KV_HEADS, HEAD_DIM))

    def metadata(self, seq_lens: list[int]) -> AttentionMetadata:
        return AttentionMetadata(
            num_tokens=NUM_SEQS, num_seqs=NUM_SEQS, query_start_loc=self.query_start_loc,
            seq_lens=self.seq_lens, context_lens=self.seq_lens - 1,
            block_tables=self.block_tables, slot_mapping=self.slot_mapping, max_query_len=1,
            max_seq_len=max(seq_lens), query_lens_host=(1,) * NUM_SEQS,
            seq_lens_host=tuple(seq_lens))

    def load_step(self, *, seq_lens: list[int], seed: int) -> None:
        """New decode tokens at positions seq_len - 1, each sequence on its own shuffled blocks."""
        gen = torch.Generator().manual_seed(seed)
        blocks = torch.randperm(NUM_SEQS * BLOCKS_PER_SEQ, generator=gen).view(NUM_SEQS, -1)
        self.block_tables.copy_(blocks.to(torch.int32))
        positions = torch.tensor([n - 1 for n in seq_lens])
        slots = blocks[torch.arange(NUM_SEQS), positions // BLOCK_SIZE] * BLOCK_SIZE \
            + positions % BLOCK_SIZE
        self.positions.copy_(positions)
        self.slot_mapping.copy_(slots)
        self.seq_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
        self.qkv.copy_(random_tensor(tuple(self.qkv.shape), dtype=DTYPE,
                                     generator=cuda_generator(seed)))


def decode_step(ops, buffers: DecodeBuffers, cos_sin, kv_cache, metadata) -> torch.Tensor:
    q, k, v = buffers.split()
    q_rot, _ = ops.rope_and_cache(q, k, v, buffers.positions, cos_sin, kv_cache,
                                  buffers.slot_mapping)
    return ops.attention(q_rot, kv_cache, metadata, HEAD_DIM ** -0.5)


def test_captured_decode_step_replays_with_new_lengths_and_tables(cuda_ops, torch_ops):
    angles = torch.arange(MAX_POSITIONS, dtype=torch.float32)[:, None] * (
        1.0 / 10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
    cos_sin = torch.cat((angles.cos(), angles.sin()), dim=-1).to(DTYPE).cuda()
    kv_cache = random_tensor((2, NUM_SEQS * BLOCKS_PER_SEQ, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM),
                             dtype=DTYPE, generator=cuda_generator(0))
    buffers = DecodeBuffers()
    # Captured with the longest context it will serve, so the split count suits long replays.
    capture_lens = [BLOCKS_PER_SEQ * BLOCK_SIZE] * NUM_SEQS
    buffers.load_step(seq_lens=capture_lens, seed=1)
    metadata = buffers.metadata(capture_lens)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        decode_step(cuda_ops, buffers, cos_sin, kv_cache, metadata)  # warm-up: loads kernels
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_step(cuda_ops, buffers, cos_sin, kv_cache, metadata)

    for step, seq_lens in enumerate(([5, 3000, 17, 1024], [2048, 1, 3071, 640], capture_lens)):
        buffers.load_step(seq_lens=seq_lens, seed=10 + step)
        ref_cache = kv_cache.clone()
        out.fill_(float("nan"))
        graph.replay()
        expected = decode_step(torch_ops, buffers, cos_sin, ref_cache, buffers.metadata(seq_lens))
        torch.cuda.synchronize()
        assert_close(out, expected, what=f"replay {step} with seq_lens {seq_lens}")
        assert_close(kv_cache, ref_cache, what=f"cache after replay {step}")
