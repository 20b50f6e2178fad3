"""GPTQ and AWQ packing against a straightforward reference written from the formats'
descriptions (one value at a time), round trips of every packing, and the dequantized
weight against scale * (q - zero) computed element by element."""

from __future__ import annotations

import pytest
import torch

from server.engine.loading.quantized_checkpoints import (AWQ_ORDER, QuantizedFormat,
                                                         pack_columns, pack_rows,
                                                         unpack_columns, unpack_rows)
from server.engine.models.errors import UnsupportedModelError


def reference_word(values: list[int], bits: int) -> int:
    """One int32 as the formats store it: value j in bits [j * bits, (j + 1) * bits)."""
    word = 0
    for j, value in enumerate(values):
        word |= value << (j * bits)
    return word - (1 << 32) if word >= 1 << 31 else word


def random_ints(shape, bits: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1 << bits, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [4, 8])
def test_row_packing_matches_the_reference_and_round_trips(bits):
    per = 32 // bits
    values = random_ints((2 * per, 3), bits, seed=bits)
    packed = pack_rows(values, bits)
    assert packed.shape == (2, 3) and packed.dtype == torch.int32
    for r in range(2):
        for c in range(3):
            column = [int(values[r * per + j, c]) for j in range(per)]
            assert int(packed[r, c]) == reference_word(column, bits)
    assert torch.equal(unpack_rows(packed, bits), values)


@pytest.mark.parametrize("order", [None, AWQ_ORDER])
def test_column_packing_matches_the_reference_and_round_trips(order):
    values = random_ints((3, 16), 4, seed=7)
    packed = pack_columns(values, 4, order=order)
    slots = order or tuple(range(8))
    for r in range(3):
        for c in range(2):
            assert int(packed[r, c]) == reference_word(
                [int(values[r, 8 * c + slots[i]]) for i in range(8)], 4)
    assert torch.equal(unpack_columns(packed, 4, order=order), values)


def test_gptq_dequantizes_to_scale_times_q_minus_zero_per_row_group():
    fmt = QuantizedFormat.from_hf({"quant_method": "gptq", "bits": 4, "group_size": 4,
                                   "checkpoint_format": "gptq"})
    q = random_ints((16, 8), 4, seed=1)  # [in, out]
    zeros = random_ints((4, 8), 4, seed=2).clamp(min=1)
    scales = torch.rand(4, 8, generator=torch.Generator().manual_seed(3)).half()
    g_idx = torch.randperm(16, generator=torch.Generator().manual_seed(4)) // 4  # desc_act
    weight = fmt.dequantize({"qweight": pack_rows(q, 4), "qzeros": pack_columns(zeros - 1, 4),
                             "scales": scales, "g_idx": g_idx.int()})
    assert weight.shape == (8, 16) and weight.dtype == torch.float16
    for i in range(16):
        for o in range(8):
            g = int(g_idx[i])
            expected = float(scales[g, o]) * (int(q[i, o]) - int(zeros[g, o]))
            assert float(weight[o, i]) == pytest.approx(expected, rel=2e-3, abs=1e-3)


def test_awq_dequantizes_with_its_column_order_and_consecutive_groups():
    fmt = QuantizedFormat.from_hf({"quant_method": "awq", "bits": 4, "group_size": 4,
                                   "version": "gemm", "zero_point": True})
    q = random_ints((8, 16), 4, seed=5)  # [in, out]
    zeros = random_ints((2, 16), 4, seed=6)
    scales = torch.rand(2, 16, generator=torch.Generator().manual_seed(7)).half()
    weight = fmt.dequantize({"qweight": pack_columns(q, 4, order=AWQ_ORDER),
                             "qzeros": pack_columns(zeros, 4, order=AWQ_ORDER),
                             "scales": scales})
    for i in range(8):
        for o in range(16):
            expected = float(scales[i // 4, o]) * (int(q[i, o]) - int(zeros[i // 4, o]))
            assert float(weight[o, i]) == pytest.approx(expected, rel=2e-3, abs=1e-3)


@pytest.mark.parametrize("config,message", [
    ({"quant_method": "gptq", "bits": 3}, "bits 3"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "'gemv'"),
    ({"quant_method": "bitsandbytes"}, "bitsandbytes"),
])
def test_a_variant_not_read_here_is_refused_by_name(config, message):
    with pytest.raises(UnsupportedModelError, match=message):
        QuantizedFormat.from_hf(config)
