"""The in-memory integer weight type: packing order and dequantization."""

import pytest
import torch

from server.engine.models.int_weights import IntWeight, pack_int4, unpack_int4


def test_int4_packing_puts_even_columns_in_the_low_nibble_and_round_trips():
    values = torch.randint(0, 16, (3, 10), generator=torch.Generator().manual_seed(0))
    packed = pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5)
    assert int(packed[0, 0]) == int(values[0, 0]) | (int(values[0, 1]) << 4)
    assert torch.equal(unpack_int4(packed), values.to(torch.uint8))


def test_int4_weight_dequantizes_group_by_group_with_zero_points():
    q = torch.tensor([[0, 15, 8, 9]])
    weight = IntWeight(qweight=pack_int4(q), scales=torch.tensor([[0.5, 2.0]]),
                       zeros=torch.tensor([[8.0, 8.0]]), bits=4, group_size=2)
    assert weight.shape == (1, 4)
    assert weight.dequantize(torch.float32).tolist() == [[-4.0, 3.5, 0.0, 2.0]]


def test_int8_weight_is_symmetric_per_channel():
    weight = IntWeight(qweight=torch.tensor([[-128, 127]], dtype=torch.int8),
                       scales=torch.tensor([[0.25]]), zeros=None, bits=8, group_size=2)
    assert weight.dequantize(torch.float32).tolist() == [[-32.0, 31.75]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=4, qweight=torch.zeros(1, 2, dtype=torch.uint8)), "zero points"),
    (dict(bits=8, qweight=torch.zeros(1, 2, dtype=torch.uint8)), "needs qweight"),
    (dict(bits=3), "8 or 4 bits"),
])
def test_inconsistent_int_weights_are_refused(kwargs, message):
    base = dict(qweight=torch.zeros(1, 4, dtype=torch.int8), scales=torch.ones(1, 1),
                zeros=None, bits=8, group_size=4)
    with pytest.raises(ValueError, match=message):
        IntWeight(**{**base, **kwargs})
