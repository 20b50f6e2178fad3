"""csrc/token_bitmask.cu against the torch reference: the same -inf on the masked rows, in
any row order, untouched rows left alone, a vocabulary that does not fill the last word, and
logits wider than the bitmask (an embedding padded beyond the tokenizer: never allowed)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("vocab", [32, 1000, 128256])
@pytest.mark.parametrize("rows", [[0], [3, 1], [5, 0, 2, 7]])
def test_bitmask_kernel_matches_the_reference(cuda_ops, torch_ops, vocab, rows):
    generator = torch.Generator(device="cuda").manual_seed(vocab + len(rows))
    logits = torch.randn(8, vocab, device="cuda", generator=generator)
    words = (vocab + 31) // 32 if vocab != 1000 else 20  # 1000: a padded embedding
    bitmask = torch.randint(-2**31, 2**31 - 1, (len(rows), words), dtype=torch.int32,
                            device="cuda", generator=generator)
    index = torch.tensor(rows, dtype=torch.int64, device="cuda")
    expected, got = logits.clone(), logits.clone()
    torch_ops.apply_token_bitmask(expected, bitmask, index)
    cuda_ops.apply_token_bitmask(got, bitmask, index)
    assert torch.equal(expected, got)
    untouched = [r for r in range(8) if r not in rows]
    assert torch.equal(got[untouched], logits[untouched])
