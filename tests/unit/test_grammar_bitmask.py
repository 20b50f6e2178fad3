"""The grammar bitmask applied to a step's logits: only the constrained rows change, in
whatever order they come, and tokens past the tokenizer's vocabulary are never allowed."""

from __future__ import annotations

import pytest
import torch

from server.structured_output.bitmask import allowed_tokens, apply_token_bitmask


def _bitmask(allowed: list[set[int]], vocab_size: int) -> torch.Tensor:
    words = (vocab_size + 31) // 32
    mask = torch.zeros(len(allowed), words, dtype=torch.int32)
    for row, tokens in enumerate(allowed):
        for token in tokens:
            word, bit = divmod(token, 32)
            value = mask[row, word].item() | (1 << bit)
            mask[row, word] = value - (1 << 32) if value >= 1 << 31 else value
    return mask


def test_bitmask_unpacks_every_bit_including_the_sign_bit():
    mask = _bitmask([{0, 31, 32, 63, 70}], vocab_size=80)
    allowed = allowed_tokens(mask, 80)
    assert allowed.shape == (1, 80)
    assert set(torch.nonzero(allowed[0]).flatten().tolist()) == {0, 31, 32, 63, 70}


def test_mixed_batch_masks_only_the_constrained_rows_in_permuted_order():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    before = logits.clone()
    # rows 3 and 1 follow grammars (given in that order); rows 0 and 2 are free
    apply_token_bitmask(logits, _bitmask([{5, 7}, {49}], 50), rows=torch.tensor([3, 1]))
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    assert torch.isfinite(logits[3]).nonzero().flatten().tolist() == [5, 7]
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [49]
    assert logits[3, 5] == before[3, 5] and logits[1, 49] == before[1, 49]
    assert logits.argmax(-1)[3].item() in (5, 7)


def test_all_rows_masked_in_order():
    logits = torch.zeros(2, 40)
    apply_token_bitmask(logits, _bitmask([{1}, {39}], 40), rows=torch.tensor([0, 1]))
    assert logits.argmax(-1).tolist() == [1, 39]
    assert torch.isinf(logits).sum().item() == 2 * 39


def test_no_rows_leaves_the_logits_alone():
    logits = torch.randn(3, 10)
    before = logits.clone()
    apply_token_bitmask(logits, torch.zeros(0, 1, dtype=torch.int32), rows=torch.tensor([], dtype=torch.int64))
    assert torch.equal(logits, before)


def test_padded_vocabulary_past_the_tokenizer_is_never_allowed():
    xgrammar = pytest.importorskip("xgrammar")
    vocab = ["{", "}", "\"", "a", ":", " ", "1"]
    info = xgrammar.TokenizerInfo(vocab, stop_token_ids=[6])
    compiled = xgrammar.GrammarCompiler(info).compile_json_schema('{"type": "object"}')
    matcher = xgrammar.GrammarMatcher(compiled)
    bitmask = torch.full((1, 1), -1, dtype=torch.int32)  # one word: every bit set
    logits = torch.zeros(1, 64)  # the model's embedding is padded to 64 ids
    apply_token_bitmask(logits, bitmask, rows=torch.tensor([0]))
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == list(range(32))
    bitmask = xgrammar.allocate_token_bitmask(1, len(vocab))
    matcher.fill_next_token_bitmask(bitmask, 0)
    logits = torch.zeros(1, 64)
    apply_token_bitmask(logits, bitmask, rows=torch.tensor([0]))
    allowed = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert allowed and max(allowed) < len(vocab)
    assert 0 in allowed  # "{" opens the object


def test_torch_ops_apply_the_reference():
    from server.engine.ops.torch_ref import TorchOps

    logits = torch.zeros(3, 33)
    TorchOps().apply_token_bitmask(logits, _bitmask([{32}], 33), torch.tensor([2]))
    assert logits[2].argmax().item() == 32 and torch.isinf(logits[2]).sum().item() == 32
    assert not torch.isinf(logits[:2]).any()
