"""Packed checkpoint layers repacked into IntWeight: GPTQ (4 and 8 bits, v1 zeros, act-order),
AWQ and compressed-tensors W8A8, each against the format reference (format_reference.py,
one value at a time); the variants that cannot be held as integers, and why; and which
compressed-tensors configs are read, the others refused by name."""

from __future__ import annotations

import pytest
import torch

from server.engine.loading.compressed_tensors import ct_scheme
from server.engine.loading.int_repack import NotRepackable, group_order, repack
from server.engine.loading.quantized_checkpoints import (AWQ_ORDER, QuantizedFormat,
                                                         pack_columns, pack_rows)
from server.engine.models.errors import UnsupportedModelError
from tests.unit.format_reference import (awq_weight, compressed_tensors_weight, gptq_weight)
from tests.unit.test_quantized_checkpoints import random_ints


def gptq_parts(bits: int, *, zeros: torch.Tensor, g_idx: torch.Tensor, rows: int = 32,
               cols: int = 16) -> dict[str, torch.Tensor]:
    groups = zeros.shape[0]
    scales = torch.rand(groups, cols, generator=torch.Generator().manual_seed(3)).half() + 0.01
    mask = (1 << bits) - 1
    return {"qweight": pack_rows(random_ints((rows, cols), bits, seed=bits), bits),
            "qzeros": pack_columns((zeros - 1) & mask, bits), "scales": scales,
            "g_idx": g_idx.int()}


def gptq_format(bits: int, group: int, *, desc_act: bool = False) -> QuantizedFormat:
    return QuantizedFormat.from_hf({"quant_method": "gptq", "bits": bits, "group_size": group,
                                    "desc_act": desc_act, "sym": True})


def test_gptq_4bit_repacks_to_the_reference_values():
    parts = gptq_parts(4, zeros=random_ints((4, 16), 4, seed=1), g_idx=torch.arange(32) // 8)
    weight = repack(gptq_format(4, 8), parts, allow_order=False)
    assert (weight.bits, weight.group_size, tuple(weight.qweight.shape)) == (4, 8, (16, 16))
    torch.testing.assert_close(weight.dequantize(torch.float32), gptq_weight(parts, 4))


def test_gptq_8bit_symmetric_repacks_to_int8():
    parts = gptq_parts(8, zeros=torch.full((2, 16), 128), g_idx=torch.arange(32) // 16)
    weight = repack(gptq_format(8, 16), parts, allow_order=False)
    assert weight.qweight.dtype == torch.int8 and weight.zeros is None
    torch.testing.assert_close(weight.dequantize(torch.float32), gptq_weight(parts, 8))


def test_gptq_8bit_with_zero_points_cannot_be_held_in_int8():
    parts = gptq_parts(8, zeros=random_ints((2, 16), 8, seed=2).clamp(min=1),
                       g_idx=torch.arange(32) // 16)
    with pytest.raises(NotRepackable, match="not all 128"):
        repack(gptq_format(8, 16), parts, allow_order=False)
    fmt = QuantizedFormat.from_hf({"quant_method": "gptq", "bits": 8, "sym": False})
    assert fmt.int_scheme() is None  # such checkpoints load dequantized


def test_act_order_rows_are_sorted_into_groups_only_where_allowed():
    g_idx = torch.arange(32) // 8
    g_idx = g_idx[torch.randperm(32, generator=torch.Generator().manual_seed(0))]
    parts = gptq_parts(4, zeros=random_ints((4, 16), 4, seed=1), g_idx=g_idx)
    fmt = gptq_format(4, 8, desc_act=True)
    with pytest.raises(NotRepackable, match="act-order"):
        repack(fmt, parts, allow_order=False)
    order = group_order(g_idx.long(), 8)
    weight = repack(fmt, parts, allow_order=True)  # its input rows in `order`
    torch.testing.assert_close(weight.dequantize(torch.float32),
                               gptq_weight(parts, 4)[:, order])
    assert fmt.int_scheme().dense_kinds == {"qkv", "o", "gate_up"}


def test_groups_of_unequal_size_are_not_a_permutation():
    with pytest.raises(NotRepackable, match="every group 8 rows"):
        group_order(torch.tensor([0] * 9 + [1] * 7), 8)
    assert group_order(torch.arange(16) // 8, 8) is None


def test_awq_repacks_to_the_reference_values():
    q, zeros = random_ints((32, 16), 4, seed=5), random_ints((4, 16), 4, seed=6)
    parts = {"qweight": pack_columns(q, 4, order=AWQ_ORDER),
             "qzeros": pack_columns(zeros, 4, order=AWQ_ORDER),
             "scales": torch.rand(4, 16, generator=torch.Generator().manual_seed(7)).half()}
    fmt = QuantizedFormat.from_hf({"quant_method": "awq", "bits": 4, "group_size": 8,
                                   "version": "gemm", "zero_point": True})
    weight = repack(fmt, parts, allow_order=False)
    torch.testing.assert_close(weight.dequantize(torch.float32), awq_weight(parts, 8))


def ct_config(**changes) -> dict:
    def args(strategy, dynamic):
        return {"num_bits": 8, "type": "int", "symmetric": True, "strategy": strategy,
                "dynamic": dynamic}

    group = {"targets": ["Linear"], "weights": args("channel", False),
             "input_activations": args("token", True), "output_activations": None}
    for part, value in changes.items():
        group[part] = {**group[part], **value}
    return {"quant_method": "compressed-tensors", "format": "int-quantized",
            "ignore": ["lm_head"], "config_groups": {"group_0": group}}


def test_compressed_tensors_w8a8_repacks_with_per_channel_scales():
    parts = {"weight": torch.randint(-128, 128, (16, 32), dtype=torch.int8,
                                     generator=torch.Generator().manual_seed(8)),
             "weight_scale": torch.rand(16, 1, generator=torch.Generator().manual_seed(9)),
             "weight_zero_point": torch.zeros(16, 1, dtype=torch.int8)}
    fmt = QuantizedFormat.from_hf(ct_config())
    weight = repack(fmt, parts, allow_order=False)
    assert weight.act_int8 and weight.group_size == 32
    torch.testing.assert_close(weight.dequantize(torch.float32),
                               compressed_tensors_weight(parts))
    parts["weight_zero_point"][3] = 1
    with pytest.raises(NotRepackable, match="asymmetric"):
        repack(fmt, parts, allow_order=False)


@pytest.mark.parametrize("config,message", [
    (ct_config(input_activations={"dynamic": False}), "'dynamic': False"),
    (ct_config(weights={"strategy": "group"}), "'strategy': 'group'"),
    (ct_config(weights={"symmetric": False}), "'symmetric': False"),
    (ct_config(weights={"num_bits": 4}), "'num_bits': 4"),
    ({**ct_config(), "format": "pack-quantized"}, "'pack-quantized'"),
    ({**ct_config(), "ignore": ["lm_head", "model.layers.0.mlp.down_proj"]}, "down_proj"),
])
def test_compressed_tensors_variants_not_run_here_are_refused_by_name(config, message):
    with pytest.raises(UnsupportedModelError, match=message):
        ct_scheme(config)


def test_compressed_tensors_fp8_is_read_as_the_engines_fp8():
    config = ct_config(weights={"type": "float"}, input_activations={"type": "float"})
    config["format"] = "float-quantized"
    fmt = QuantizedFormat.from_hf(config)
    assert fmt.method == "fp8" and fmt.int_scheme() is None and fmt.parts == ()
