"""bench/accuracy.py: its held-out texts are never calibration texts, and greedy agreement
counts each output's matching prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.accuracy import agreement, heldout_texts, prose_texts, split_scheme
from server.quantize.calibration import calibration_texts
from server.quantize.options import QuantizeError, QuantizeOptions


def test_heldout_prompts_are_none_of_the_calibration_prompts():
    # the most `inflightd quantize` takes from the packaged sample (checked below)
    calibration = set(calibration_texts(None, QuantizeOptions.num_calibration_samples))
    held_out = heldout_texts()
    assert len(held_out) == 100 and len(calibration) >= 300
    assert not calibration & set(held_out)
    assert not calibration & set(prose_texts())


def test_quantize_refuses_calibration_samples_reaching_into_the_held_out_prompts():
    with pytest.raises(QuantizeError, match="held out"):
        QuantizeOptions(model="dummy:tiny", method="gptq", output=Path("out"),
                        num_calibration_samples=450)


def test_greedy_agreement_is_the_matching_prefix_share():
    reference = [(1, 2, 3, 4), (5, 6, 7, 8)]
    outputs = [(1, 2, 9, 4), (5, 6, 7, 8)]
    assert agreement(outputs, reference) == {"greedy_same_prefix": (0.5 + 1.0) / 2,
                                             "greedy_exact": 0.5}


def test_awq_and_gptq_take_a_group_size_suffix_and_nothing_else_does():
    assert split_scheme("awq-g32") == ("awq", 32)
    assert split_scheme("gptq-g128") == ("gptq", 128)
    assert split_scheme("gptq") == ("gptq", None)
    for unknown in ("int4_wo-g32", "awq-gx", "awq-32", "bogus"):
        with pytest.raises(ValueError):
            split_scheme(unknown)
