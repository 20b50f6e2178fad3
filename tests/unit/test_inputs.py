"""prepare_inputs on hand-made SchedulerOutputs: packed rows, positions, slots, samples."""

from __future__ import annotations

import pytest
import torch

from server.engine.step.inputs import BlockTableTooShortError, prepare_inputs
from server.scheduler.output import ScheduledRequest, SchedulerOutput


def scheduled(*, req_id: str, token_ids: list[int], start_position: int, block_ids: list[int],
              sample: bool = True) -> ScheduledRequest:
    return ScheduledRequest(req_id=req_id, token_ids=tuple(token_ids),
                            start_position=start_position, block_ids=tuple(block_ids),
                            sample=sample)


def step(*requests: ScheduledRequest) -> SchedulerOutput:
    return SchedulerOutput(scheduled=tuple(requests), new_requests=(), preempted_req_ids=(),
                           finished_req_ids=(),
                           num_batched_tokens=sum(r.num_tokens for r in requests))


def expected_slots(*, block_ids: list[int], positions: range, block_size: int) -> list[int]:
    return [block_ids[p // block_size] * block_size + p % block_size for p in positions]


def test_mixed_prefill_chunk_decode_and_prefix_hit_pack_without_padding():
    chunk = scheduled(req_id="a", token_ids=[10, 11, 12, 13, 14], start_position=0,
                      block_ids=[7, 3], sample=False)
    decode = scheduled(req_id="b", token_ids=[20], start_position=9, block_ids=[0, 5, 9])
    prefix_hit = scheduled(req_id="c", token_ids=[30, 31, 32], start_position=8,
                           block_ids=[1, 2, 4])
    inputs = prepare_inputs(step(chunk, decode, prefix_hit), block_size=4, device="cpu")

    assert inputs.input_ids.tolist() == [10, 11, 12, 13, 14, 20, 30, 31, 32]
    assert inputs.positions.tolist() == [0, 1, 2, 3, 4, 9, 8, 9, 10]
    attn = inputs.attn
    assert attn.num_tokens == 9 and attn.num_seqs == 3
    assert attn.query_start_loc.tolist() == [0, 5, 6, 9]
    assert attn.context_lens.tolist() == [0, 9, 8]
    assert attn.seq_lens.tolist() == [5, 10, 11]
    assert attn.seq_lens_host == (5, 10, 11) and attn.query_lens_host == (5, 1, 3)
    assert attn.max_query_len == 5 and attn.max_seq_len == 11
    assert attn.block_tables.tolist() == [[7, 3, 0], [0, 5, 9], [1, 2, 4]]
    assert attn.slot_mapping.tolist() == [28, 29, 30, 31, 12, 37, 16, 17, 18]
    # a's chunk does not sample; b and c sample at their last rows.
    assert inputs.sample_indices.tolist() == [5, 8]
    assert inputs.sampled_req_ids == ("b", "c")


def test_dtypes_match_the_attention_metadata_contract():
    inputs = prepare_inputs(step(scheduled(req_id="a", token_ids=[1, 2], start_position=0,
                                           block_ids=[0])), block_size=4, device="cpu")
    attn = inputs.attn
    assert inputs.input_ids.dtype == torch.int64 and inputs.positions.dtype == torch.int64
    assert inputs.sample_indices.dtype == torch.int64
    assert attn.slot_mapping.dtype == torch.int64
    for tensor in (attn.query_start_loc, attn.seq_lens, attn.context_lens, attn.block_tables):
        assert tensor.dtype == torch.int32


@pytest.mark.parametrize("block_size", [1, 2, 4, 16])
def test_slots_follow_the_block_table_across_block_boundaries(block_size):
    block_ids = [5, 0, 8, 2, 6, 1, 3, 7, 9, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    start, count = 3, 14
    needed = -(-(start + count) // block_size)
    request = scheduled(req_id="a", token_ids=list(range(count)), start_position=start,
                        block_ids=block_ids[:needed])
    inputs = prepare_inputs(step(request), block_size=block_size, device="cpu")
    assert inputs.attn.slot_mapping.tolist() == expected_slots(
        block_ids=block_ids, positions=range(start, start + count), block_size=block_size)


def test_decode_batch_samples_every_row():
    requests = [scheduled(req_id=f"r{i}", token_ids=[i], start_position=i + 1,
                          block_ids=[i, 10 + i]) for i in range(4)]
    inputs = prepare_inputs(step(*requests), block_size=4, device="cpu")
    assert inputs.sample_indices.tolist() == [0, 1, 2, 3]
    assert inputs.sampled_req_ids == ("r0", "r1", "r2", "r3")
    assert inputs.attn.context_lens.tolist() == [1, 2, 3, 4]
    # r3 at position 4 crosses into its second block (13).
    assert inputs.attn.slot_mapping.tolist() == [1, 6, 11, 52]


def test_block_tables_of_different_lengths_are_padded_with_zero():
    short = scheduled(req_id="s", token_ids=[1], start_position=0, block_ids=[9])
    long = scheduled(req_id="l", token_ids=[1, 2, 3, 4, 5], start_position=6,
                     block_ids=[4, 5, 6])
    inputs = prepare_inputs(step(short, long), block_size=4, device="cpu")
    assert inputs.attn.block_tables.tolist() == [[9, 0, 0], [4, 5, 6]]


def test_block_table_not_covering_the_new_tokens_is_rejected():
    request = scheduled(req_id="a", token_ids=[1, 2, 3], start_position=6, block_ids=[0, 1])
    with pytest.raises(BlockTableTooShortError, match="'a'"):
        prepare_inputs(step(request), block_size=4, device="cpu")


def test_empty_output_gives_empty_inputs():
    inputs = prepare_inputs(step(), block_size=4, device="cpu")
    assert inputs.num_tokens == 0 and inputs.attn.num_seqs == 0
    assert inputs.sample_indices.numel() == 0 and inputs.sampled_req_ids == ()
    assert inputs.attn.query_start_loc.tolist() == [0]
