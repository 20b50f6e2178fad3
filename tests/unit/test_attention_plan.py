"""The attention launch plan (pure host arithmetic): row classes, grid sizes that cover every
tile, the flash-decoding split count, and the decode kernel's key split."""

from __future__ import annotations

import pytest

from server.engine.ops.cuda_attention import (GOOD_WAVE_FILL, MAX_PARTITIONS, MIN_PARTITION_LEN,
                                              ROWS_PER_WARP, AttentionKeySplitError,
                                              plan_attention)
from server.engine.ops.cuda_attention_hopper import (HOPPER_ATTENTION_ENV, HOPPER_MIN_ROWS,
                                                     HOPPER_ROWS, HOPPER_WARPS,
                                                     hopper_attention_enabled,
                                                     hopper_attention_fits)

H100_SMS = 132
RESIDENT = {1: 6, 2: 6, 4: 3}  # CTAs per SM at head_dim 128, from the kernels' occupancy


def plan(query_lens, max_seq_len, *, num_heads=32, num_kv_heads=8):
    return plan_attention(query_lens=query_lens, max_seq_len=max_seq_len, num_heads=num_heads,
                          num_kv_heads=num_kv_heads, num_sms=H100_SMS, resident_ctas=RESIDENT)


def wave_fill(ctas: int, slots: int) -> float:
    return ctas / (-(-ctas // slots) * slots)


def test_decodes_run_on_one_warp_ctas_and_prefills_on_four():
    decode_only = plan([1] * 64, 2048)
    assert [launch.warps for launch in decode_only.launches] == [1]
    mixed = plan([1, 1, 512, 6], 4096)  # group 4: rows 4, 4, 2048, 24
    assert [launch.warps for launch in mixed.launches] == [1, 2, 4]


def test_single_long_decode_is_split_as_far_as_the_minimum_partition_allows():
    assert plan([1], 8192).num_partitions == min(MAX_PARTITIONS, 8192 // MIN_PARTITION_LEN)
    assert plan([1], 1000).num_partitions == -(-1000 // MIN_PARTITION_LEN)


def test_batch_that_fills_its_waves_is_not_split():
    ctas = 256 * 8
    assert wave_fill(ctas, H100_SMS * RESIDENT[1]) >= GOOD_WAVE_FILL
    assert plan([1] * 256, 8192).num_partitions == 1


def test_split_count_is_the_fewest_that_fills_the_last_wave():
    result = plan([1] * 64, 8192)  # 512 CTAs against 792 slots
    parts = result.num_partitions
    slots = H100_SMS * RESIDENT[1]
    assert wave_fill(512 * parts, slots) >= GOOD_WAVE_FILL
    assert all(wave_fill(512 * fewer, slots) < GOOD_WAVE_FILL for fewer in range(1, parts))


@pytest.mark.parametrize("batch", (1, 8, 64, 100, 256))
def test_decode_split_fills_the_last_wave_at_every_batch_size(batch):
    parts = plan([1] * batch, 8192).num_partitions
    fill = wave_fill(batch * 8 * parts, H100_SMS * RESIDENT[1])
    assert fill >= GOOD_WAVE_FILL or parts == MAX_PARTITIONS, (parts, fill)


def test_short_contexts_are_never_split():
    assert plan([1], MIN_PARTITION_LEN).num_partitions == 1
    assert plan([1] * 3, 40).num_partitions == 1


@pytest.mark.parametrize("query_lens", ([1, 7, 300, 1, 33, 16], [64] * 10, [5, 0, 9]))
@pytest.mark.parametrize("group", (1, 4, 32))
@pytest.mark.parametrize("hopper", (False, True), ids=("mma-sync", "hopper"))
def test_grid_covers_every_tile_of_every_sequence(query_lens, group, hopper):
    # Mirrors csrc/attention_common.cuh: sequence i's tiles start at
    # query_start * group // rows_per_tile + i and must end before the next one starts.
    result = plan_attention(query_lens=query_lens, max_seq_len=4096, num_heads=8 * group,
                            num_kv_heads=8, num_sms=H100_SMS,
                            resident_ctas={**RESIDENT, "hopper": 1}, hopper=hopper)
    for launch in result.launches:
        rows_per_tile = ROWS_PER_WARP * launch.warps
        starts, query_start = [], 0
        for seq, query_len in enumerate(query_lens):
            starts.append(query_start * group // rows_per_tile + seq)
            query_start += query_len
        for seq, query_len in enumerate(query_lens):
            end = starts[seq] + -(-query_len * group // rows_per_tile)
            assert end <= (starts[seq + 1] if seq + 1 < len(query_lens) else launch.grid_x)


def test_key_split_runs_only_the_one_warp_class_on_two_warp_ctas():
    query_lens = [1, 1, 512, 6]  # group 4: rows 4, 4, 2048, 24
    unsplit = plan(query_lens, 4096)
    split = plan_attention(query_lens=query_lens, max_seq_len=4096, num_heads=32,
                           num_kv_heads=8, num_sms=H100_SMS, resident_ctas=RESIDENT,
                           decode_key_split=2)
    assert [(launch.warps, launch.key_split, launch.threads) for launch in split.launches] == [
        (1, 2, 64), (2, 1, 64), (4, 1, 128)]
    # the same row tiles and grid: only the threads working on each tile change
    assert [(launch.min_rows, launch.max_rows, launch.grid_x) for launch in split.launches] == [
        (launch.min_rows, launch.max_rows, launch.grid_x) for launch in unsplit.launches]
    assert [launch.kernel(suffix="bf16", head_dim=128) for launch in split.launches] == [
        "paged_attention_bf16_d128_w1k2", "paged_attention_bf16_d128_w2",
        "paged_attention_bf16_d128_w4"]


@pytest.mark.parametrize("resident, partitions", ((6, 3), (4, 1)))
def test_key_split_plan_is_sized_by_the_resident_ctas_it_is_given(resident, partitions):
    # 64 decodes x 8 kv heads = 512 CTAs: 6 w1k2 CTAs per SM (792 slots) fill a wave well
    # only with 3 partitions, 4 per SM (528 slots) with none.
    result = plan_attention(query_lens=[1] * 64, max_seq_len=8192, num_heads=32, num_kv_heads=8,
                            num_sms=H100_SMS, resident_ctas={**RESIDENT, 1: resident},
                            decode_key_split=2)
    assert result.num_partitions == partitions


@pytest.mark.parametrize("decode_key_split", (0, 3, 4))
def test_unsupported_key_split_is_refused(decode_key_split):
    with pytest.raises(AttentionKeySplitError, match="decode_key_split must be one of"):
        plan_attention(query_lens=[1], max_seq_len=100, num_heads=32, num_kv_heads=8,
                       num_sms=H100_SMS, resident_ctas=RESIDENT,
                       decode_key_split=decode_key_split)


HOPPER_RESIDENT = {**RESIDENT, "hopper": 1}


def hopper_plan(query_lens, max_seq_len, *, num_heads=32, num_kv_heads=8):
    return plan_attention(query_lens=query_lens, max_seq_len=max_seq_len, num_heads=num_heads,
                          num_kv_heads=num_kv_heads, num_sms=H100_SMS,
                          resident_ctas=HOPPER_RESIDENT, hopper=True)


def test_hopper_plan_sends_sequences_of_a_whole_tile_of_rows_to_the_hopper_kernel():
    # group 4: rows 4, 2048, 24, 48, 128
    result = hopper_plan([1, 512, 6, 12, 32], 4096)
    by_kind = {(launch.hopper, launch.min_rows): launch for launch in result.launches}
    hopper = by_kind[True, HOPPER_MIN_ROWS]
    assert [launch.warps for launch in result.launches] == [1, 2, 4, HOPPER_WARPS]
    assert by_kind[False, 33].max_rows == HOPPER_MIN_ROWS - 1
    assert hopper.grid_x == (1 + 512 + 6 + 12 + 32) * 4 // HOPPER_ROWS + 5
    assert hopper.threads == 32 * HOPPER_WARPS


def test_hopper_plan_keeps_short_sequences_off_the_hopper_kernel():
    short = (HOPPER_MIN_ROWS - 1) // 4  # group 4
    assert not any(launch.hopper for launch in hopper_plan([1] * 64 + [short], 2048).launches)


def test_one_long_prefill_on_the_hopper_kernel_is_split_by_its_occupancy():
    # 1,024 tokens x group 4 over 8 kv heads, one CTA an SM of 132
    ctas = 1024 * 4 // HOPPER_ROWS * 8
    result = hopper_plan([1024], 1024)
    assert [launch.hopper for launch in result.launches] == [True]
    assert wave_fill(ctas * result.num_partitions, H100_SMS) >= GOOD_WAVE_FILL


@pytest.mark.parametrize("query_lens", [[129, 1, 300], [1024], [33, 500, 2, 128]])
def test_hopper_row_classes_cover_every_row_count_once(query_lens):
    result = hopper_plan(query_lens, 2048, num_heads=16, num_kv_heads=16)  # group 1
    for query_len in query_lens:
        owners = [launch for launch in result.launches
                  if launch.min_rows <= query_len <= launch.max_rows]
        assert len(owners) == 1, (query_len, result)


def test_hopper_kernel_fits_head_dim_128_in_blocks_of_a_power_of_two_without_extras():
    def fits(arch="sm_90", *, suffix="bf16", head_dim=128, block_size=16, extras=False):
        return hopper_attention_fits(arch, suffix=suffix, head_dim=head_dim,
                                     block_size=block_size, extras=extras)

    assert fits() and fits(suffix="fp16") and fits(block_size=32)
    assert fits(suffix="bf16_kvfp8") and fits(suffix="fp16_kvfp8")
    assert not fits(head_dim=64)
    assert not fits(extras=True)
    assert not fits("sm_80")
    assert not fits(block_size=24)  # the kernel shifts by log2(block_size)


def test_hopper_kernel_is_turned_off_by_its_environment_variable(monkeypatch):
    monkeypatch.setenv(HOPPER_ATTENTION_ENV, "0")
    assert not hopper_attention_enabled("sm_90")
    monkeypatch.setenv(HOPPER_ATTENTION_ENV, "maybe")
    with pytest.raises(ValueError, match="must be 0 or 1"):
        hopper_attention_enabled("sm_90")
