"""bench/quantized.py: one row per scheme, each engine holding its own weight bytes."""

from __future__ import annotations

import pytest

from bench.quantized import main, parse_args


def test_every_scheme_runs_and_integer_weights_hold_fewer_bytes(tmp_path):
    result = main(["--model", "dummy:tiny", "--device", "cpu", "--num-prompts", "3",
                   "--input-len", "8:12", "--output-len", "4", "--max-num-seqs", "4",
                   "--schemes", "bf16,int8_wo,int4_wo,w8a8", "--skip-transformers",
                   "--json", str(tmp_path / "q.json")])
    rows = {row["scheme"]: row for row in result["rows"]}
    assert list(rows) == ["bf16", "int8_wo", "int4_wo", "w8a8"]
    assert rows["int4_wo"]["weight_bytes"] < rows["int8_wo"]["weight_bytes"] \
        < rows["bf16"]["weight_bytes"]
    assert rows["w8a8"]["weight_bytes"] == rows["int8_wo"]["weight_bytes"]
    assert all(row["batch1_tokens_per_s"] > 0 and row["throughput_tokens_per_s"] > 0
               for row in rows.values())
    assert (tmp_path / "q.json").exists()


def test_unknown_schemes_are_refused_with_the_choices():
    with pytest.raises(SystemExit):
        parse_args(["--schemes", "bf16,int3"])
