"""The build's choice of decode steps for the bulk-copy kernel (gpu/tuning.py's decode_bulk):
its lookup by cache dtype, context bucket and sequence count, and its tuning.json form."""

from __future__ import annotations

import json

from server.engine.gpu.tuning import BulkChoice, KernelTuning, PartitionChoice, _read

TIMINGS = ((1, 20.0, 25.0), (16, 40.0, 38.0), (64, 90.0, 70.0), (256, 300.0, 310.0))


def tuning(*choices: BulkChoice) -> KernelTuning:
    return KernelTuning(arch="sm_90", device_name="gpu", dtype="bfloat16",
                        decode_partition_len=(PartitionChoice(512, 64, ((64, 10.0),)),),
                        decode_bulk=choices)


def test_the_largest_timed_count_not_above_the_step_decides():
    choice = BulkChoice("float8_e4m3fn", 2048, bulk_seqs=(16, 64), timings_us=TIMINGS)
    assert [choice.takes(n) for n in (1, 15, 16, 63, 64, 255, 256, 1024)] == [
        False, False, True, True, True, True, False, False]
    assert not BulkChoice("bfloat16", 512, bulk_seqs=(1,), timings_us=((4, 1.0, 0.5),)).takes(1)


def test_a_step_takes_its_context_buckets_choice_and_the_last_past_them():
    tuned = tuning(BulkChoice("float8_e4m3fn", 512, (1,), TIMINGS),
                   BulkChoice("float8_e4m3fn", 8192, (64,), TIMINGS))
    assert tuned.bulk_for(num_seqs=1, max_seq_len=300, kv_dtype="float8_e4m3fn") is True
    assert tuned.bulk_for(num_seqs=1, max_seq_len=4096, kv_dtype="float8_e4m3fn") is False
    assert tuned.bulk_for(num_seqs=64, max_seq_len=100_000, kv_dtype="float8_e4m3fn") is True
    # nothing tuned for this cache dtype: the caller plans as before
    assert tuned.bulk_for(num_seqs=64, max_seq_len=512, kv_dtype="bfloat16") is None


def test_the_choices_round_trip_through_tuning_json(tmp_path):
    tuned = tuning(BulkChoice("bfloat16", 512, (), TIMINGS),
                   BulkChoice("float8_e4m3fn", 512, (16, 64), TIMINGS))
    assert KernelTuning.from_json("sm_90", json.loads(json.dumps(tuned.to_json()))) == tuned


def test_a_tuning_json_from_before_the_bulk_kernel_reads_as_untuned(tmp_path):
    data = tuning().to_json()
    del data["decode_bulk"]
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({"format": 1, "arches": {"sm_90": data}}))
    old = KernelTuning.from_json("sm_90", _read(path)["arches"]["sm_90"])
    assert old.decode_bulk == ()
    assert old.bulk_for(num_seqs=64, max_seq_len=512, kv_dtype="bfloat16") is None
