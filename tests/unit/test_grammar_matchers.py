"""The runner's matchers: a request recomputed after preemption replays its tokens into a
fresh matcher and gets the same masks as one that never stopped."""

from __future__ import annotations

import pytest
import torch

xgrammar = pytest.importorskip("xgrammar")

from server.structured_output.matchers import BATCH_FILL_MIN_ROWS, GrammarMatchers  # noqa: E402

VOCAB = ["{", "}", "\"", "a", "b", ":", ",", " ", "1", "2", "<eos>"]
EOS = VOCAB.index("<eos>")


def _compiled(schema: str):
    info = xgrammar.TokenizerInfo(VOCAB, stop_token_ids=[EOS])
    return xgrammar.GrammarCompiler(info).compile_json_schema(schema)


def _tokens(text: str) -> list[int]:
    return [VOCAB.index(ch) for ch in text]


def _matchers(max_rows: int = 4) -> GrammarMatchers:
    matchers = GrammarMatchers(max_rows=max_rows)
    compiled = _compiled('{"type": "object", "properties": {"a": {"type": "integer"}}, '
                         '"required": ["a"]}')
    for req_id in ("live", "replayed"):
        matchers.register(req_id, compiled)
    return matchers


def test_replayed_matcher_after_preemption_masks_like_the_uninterrupted_one():
    matchers = _matchers()
    matchers.start("live", [])
    sofar = _tokens('{"a":1')
    for token in sofar:
        matchers.accept("live", token)
    matchers.start("replayed", [])
    matchers.accept("replayed", sofar[0])
    matchers.stop("replayed")  # preempted: the compiled grammar stays
    assert "replayed" not in matchers
    matchers.start("replayed", sofar)  # resumed as new, with its history
    mask = matchers.fill(["live", "replayed"], [0, 1])
    assert torch.equal(mask.bitmask[0], mask.bitmask[1])
    assert mask.rows == (0, 1)


def test_terminated_matchers_are_not_masked_and_later_tokens_are_ignored():
    matchers = _matchers()
    matchers.start("live", _tokens('{"a":2}'))
    matchers.accept("live", EOS)
    assert matchers.rows_to_mask(["free", "live"]) == ()
    matchers.accept("live", VOCAB.index("a"))  # sampled by a step in flight: dropped
    assert "live" in matchers


def test_released_requests_leave_nothing_behind():
    matchers = _matchers()
    matchers.start("live", [])
    matchers.release("live")
    matchers.start("live", [])  # no compiled grammar any more: nothing starts
    assert "live" not in matchers and matchers.num_running == 0


def test_many_rows_fill_through_the_threaded_batch_path_identically():
    compiled = _compiled('{"type": "object"}')
    matchers = GrammarMatchers(max_rows=2)  # grows as needed
    req_ids = [f"r{i}" for i in range(BATCH_FILL_MIN_ROWS + 3)]
    for i, req_id in enumerate(req_ids):
        matchers.register(req_id, compiled)
        matchers.start(req_id, _tokens('{"a":1') if i % 2 else [])
    rows = matchers.rows_to_mask(req_ids)
    batch = matchers.fill(req_ids, rows).bitmask.clone()
    one = matchers.fill(req_ids[:2], [0, 1]).bitmask
    assert torch.equal(batch[:2], one)
    assert not torch.equal(batch[0], batch[1])
