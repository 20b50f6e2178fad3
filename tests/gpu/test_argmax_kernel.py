"""csrc/argmax.cu against torch.argmax: random rows of real vocabulary widths (16-byte chunks
with and without single floats around them), equal maxima, NaNs, rows of -inf (a grammar that masked everything), a
strided view, and CudaOps.argmax's fallback to torch for what the kernel does not take."""

from __future__ import annotations

import pytest
import torch

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.ops.cuda_launch import argmax_into

pytestmark = pytest.mark.gpu

# 49,152 and 128,256 are 16-byte chunks only; 50,257 (GPT-2) and 7 end in a tail of single
# floats, and every row after the first of them starts off a 16-byte boundary
WIDTHS = (1, 7, 49152, 50257, 128256)


def torch_argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.cpu().argmax(dim=-1).to(logits.device)


@pytest.mark.parametrize("num_rows", (1, 3, 64))
@pytest.mark.parametrize("vocab", WIDTHS)
def test_argmax_kernel_picks_torchs_token_on_random_rows(cuda_ops, vocab, num_rows):
    generator = torch.Generator(device="cuda").manual_seed(vocab + num_rows)
    logits = torch.randn(num_rows, vocab, device="cuda", generator=generator) * 8
    assert torch.equal(cuda_ops.argmax(logits), torch_argmax(logits))


@pytest.mark.parametrize("vocab", (49152, 50257))
def test_argmax_kernel_takes_the_first_of_equal_maxima(library, vocab):
    logits = torch.zeros(4, vocab, device="cuda")
    for row, places in enumerate(([vocab - 1, 5], [4097, 4096, 40000], [0, vocab - 1],
                                  [31, 30, 1029])):
        logits[row, places] = 3.5
    out = torch.full((4,), -1, dtype=torch.int64, device="cuda")
    argmax_into(library, out, logits)
    assert out.tolist() == [5, 4096, 0, 30] == torch_argmax(logits).tolist()


def test_argmax_kernel_puts_a_nan_above_every_number_as_torch_does(library):
    logits = torch.randn(3, 49152, device="cuda")
    logits[0, [700, 90]] = float("nan")
    logits[1, 12345] = float("nan")
    logits[1, 12] = float("inf")
    logits[2, :] = float("-inf")  # every token masked: the first
    out = torch.full((3,), -1, dtype=torch.int64, device="cuda")
    argmax_into(library, out, logits)
    assert out.tolist() == [90, 12345, 0] == torch_argmax(logits).tolist()


def test_argmax_kernel_reads_rows_of_a_strided_view(library):
    wide = torch.randn(5, 32000 + 3, device="cuda", generator=torch.Generator(
        device="cuda").manual_seed(9))
    logits = wide[:, 3:]  # rows 32,003 floats apart, none starting on a 16-byte boundary
    out = torch.full((5,), -1, dtype=torch.int64, device="cuda")
    argmax_into(library, out, logits)
    assert torch.equal(out, torch_argmax(logits))


def test_cuda_ops_argmax_leaves_other_dtypes_to_torch(cuda_ops):
    logits = torch.randn(2, 1000, device="cuda").to(torch.bfloat16)
    assert torch.equal(cuda_ops.argmax(logits), logits.argmax(dim=-1))


def test_argmax_kernel_refuses_what_it_cannot_read(library):
    out = torch.empty(2, dtype=torch.int64, device="cuda")
    with pytest.raises(KernelArgumentError, match="float32 logits"):
        argmax_into(library, out, torch.zeros(2, 8, dtype=torch.float16, device="cuda"))
    with pytest.raises(KernelArgumentError, match="contiguous"):
        argmax_into(library, out, torch.zeros(8, 2, device="cuda").t())
