"""The host side of the decode CUDA graphs: batch-size buckets and the static input rows
(real decodes, then padding that writes outside the KV pool). No GPU needed."""

from __future__ import annotations

import numpy as np
import pytest

from server.engine.step.cuda_graphs import DecodeStaging, graph_batch_sizes
from server.engine.step.inputs import BlockTableTooShortError, prepare_inputs
from server.scheduler.output import ScheduledRequest, SchedulerOutput

BLOCK_SIZE = 4
NUM_SLOTS = 64 * BLOCK_SIZE


def decode(req_id: str, token: int, position: int, blocks: tuple[int, ...]) -> ScheduledRequest:
    return ScheduledRequest(req_id, (token,), position, blocks, True)


def test_buckets_grow_geometrically_then_linearly_and_end_at_the_limit():
    assert graph_batch_sizes(1) == (1,)
    assert graph_batch_sizes(20) == (1, 2, 4, 8, 16, 20)
    sizes = graph_batch_sizes(256)
    assert sizes[:8] == (1, 2, 4, 8, 16, 24, 32, 48) and sizes[-3:] == (192, 224, 256)
    assert all(a < b for a, b in zip(sizes, sizes[1:]))


def test_buckets_above_256_step_by_64_up_to_4096():
    sizes = graph_batch_sizes(1024)
    assert sizes[sizes.index(256):] == tuple(range(256, 1025, 64))
    assert graph_batch_sizes(1000)[-2:] == (960, 1000)
    assert graph_batch_sizes(10_000)[-1] == 4096


def test_rows_match_prepare_inputs_and_padding_writes_outside_the_pool():
    staging = DecodeStaging(max_batch_size=8, table_width=6, pin_memory=False)
    staging.block_tables[:] = 99  # stale rows from an earlier step
    scheduled = (decode("a", 11, 9, (7, 3, 5)), decode("b", 12, 0, (2,)),
                 decode("c", 13, 16, (1, 4, 6, 8, 9)))
    staging.fill(scheduled, batch_size=4, block_size=BLOCK_SIZE, num_slots=NUM_SLOTS)
    ref = prepare_inputs(SchedulerOutput(scheduled, (), (), (), 3), block_size=BLOCK_SIZE,
                         device="cpu")
    assert staging.input_ids[:3].tolist() == ref.input_ids.tolist()
    assert staging.positions[:3].tolist() == ref.positions.tolist()
    assert staging.slot_mapping[:3].tolist() == ref.attn.slot_mapping.tolist()
    assert staging.seq_lens[:3].tolist() == ref.attn.seq_lens.tolist()
    assert staging.context_lens[:3].tolist() == ref.attn.context_lens.tolist()
    for row, s in enumerate(scheduled):
        assert staging.block_tables[row, :len(s.block_ids)].tolist() == list(s.block_ids)
    # padding row 3: token 0 at position 0, one key in block 0, its K/V slot past the pool
    assert (staging.input_ids[3], staging.positions[3], staging.slot_mapping[3]) == \
        (0, 0, NUM_SLOTS)
    assert (staging.seq_lens[3], staging.context_lens[3], staging.block_tables[3, 0]) == \
        (1, 0, 0)
    assert staging.query_start_loc[:5].tolist() == [0, 1, 2, 3, 4]


def test_a_long_rope_request_reads_its_rotary_rows_further_on_and_its_slots_do_not_move():
    staging = DecodeStaging(max_batch_size=8, table_width=6, pin_memory=False)
    long = ScheduledRequest("a", (11,), 9, (7, 3, 5), True, rope_table=1)
    scheduled = (long, decode("b", 12, 2, (2,)))
    staging.fill(scheduled, batch_size=2, block_size=BLOCK_SIZE, num_slots=NUM_SLOTS,
                 rope_table_rows=100)
    ref = prepare_inputs(SchedulerOutput(scheduled, (), (), (), 2), block_size=BLOCK_SIZE,
                         device="cpu", rope_table_rows=100)
    assert staging.positions[:2].tolist() == ref.positions.tolist() == [109, 2]
    assert staging.slot_mapping[:2].tolist() == ref.attn.slot_mapping.tolist() == [21, 10]
    assert staging.seq_lens[:2].tolist() == ref.attn.seq_lens.tolist() == [10, 3]


def test_one_copy_prefix_covers_every_field_of_the_bucket_rows():
    staging = DecodeStaging(max_batch_size=8, table_width=6, pin_memory=False)
    words = staging.buffer.numpy()
    for batch_size in (1, 4, 8):
        copied = staging.num_words_for(batch_size)
        last_row = staging.block_tables[batch_size - 1]
        offset = (last_row.ctypes.data - words.ctypes.data) // 4
        assert offset + staging.table_width == copied
    # the int64 fields are 8-byte aligned views of the same buffer
    assert staging.slot_mapping.ctypes.data % 8 == 0 and staging.block_tables.ctypes.data % 8 == 0
    staging.slot_mapping[0] = NUM_SLOTS
    assert np.shares_memory(staging.slot_mapping, words)


def test_fit_and_short_tables_are_checked():
    staging = DecodeStaging(max_batch_size=2, table_width=2, pin_memory=False)
    assert staging.fits((decode("a", 1, 7, (0, 1)),))
    assert not staging.fits((decode("a", 1, 8, (0, 1, 2)),))  # longer than the graphs cover
    assert not staging.fits(tuple(decode(str(i), 1, 0, (0,)) for i in range(3)))
    with pytest.raises(BlockTableTooShortError, match="'a'"):
        staging.fill((decode("a", 1, 8, (0, 1)),), batch_size=2, block_size=BLOCK_SIZE,
                     num_slots=NUM_SLOTS)


def test_cached_tables_follow_growth_and_are_rebuilt_after_forget():
    staging = DecodeStaging(max_batch_size=2, table_width=4, pin_memory=False)
    fill = dict(batch_size=1, block_size=BLOCK_SIZE, num_slots=NUM_SLOTS)
    staging.fill((decode("a", 1, 7, (5, 7)),), **fill)
    staging.fill((decode("a", 1, 8, (5, 7, 8)),), **fill)  # grew by a block
    assert staging.block_tables[0, :3].tolist() == [5, 7, 8]
    staging.forget(["a"])  # preempted: back with as many blocks, the middle one another
    staging.fill((decode("a", 1, 8, (5, 9, 8)),), **fill)
    assert staging.block_tables[0, :3].tolist() == [5, 9, 8]


def test_rows_keep_unchanged_tables_and_rewrite_moved_or_grown_ones():
    staging = DecodeStaging(max_batch_size=4, table_width=4, pin_memory=False)
    a, b, c = (7, 3), (2,), (1, 4, 6)
    staging.fill((decode("a", 1, 5, a), decode("b", 2, 0, b), decode("c", 3, 9, c)),
                 batch_size=4, block_size=BLOCK_SIZE, num_slots=NUM_SLOTS)
    # "a" finished: "b" and "c" move up a row; "c" grew a block; the freed row is padding
    grown = (*c, 8)
    staging.fill((decode("b", 2, 1, b), decode("c", 3, 12, grown)), batch_size=4,
                 block_size=BLOCK_SIZE, num_slots=NUM_SLOTS)
    assert staging.block_tables[0, :1].tolist() == list(b)
    assert staging.block_tables[1, :4].tolist() == list(grown)
    assert staging.block_tables[2, 0] == 0
    # a padded row is rewritten when a request lands on it again
    staging.fill((decode("b", 2, 2, b), decode("c", 3, 13, grown), decode("d", 4, 0, (5,))),
                 batch_size=4, block_size=BLOCK_SIZE, num_slots=NUM_SLOTS)
    assert staging.block_tables[2, 0] == 5
