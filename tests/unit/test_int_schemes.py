"""Integer weights in the engine: the round-to-nearest grids, the schemes `--quantization
int8_wo | int4_wo` make, TorchOps on the kernels' reference (ops/cuda_int.py, tested
there), tensor-parallel cuts of IntWeights, and a model holding them: fewer bytes, and the
logits of its dequantized twin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from server.config import ModelConfig
from server.engine.loading.weights import iter_weights, resolve_model
from server.engine.models.int_grid import choose_group_size, round_to_nearest
from server.engine.models.int_schemes import IntScheme, linear_kind, quantize_on_load
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import QuantizationError
from server.engine.ops.cuda_int import int_linear_reference
from server.engine.ops.torch_ref import TorchOps
from server.engine.parallel.shard_weights import ShardRule, shard_int_weight
from server.engine.step.runner import ModelRunner
from tests.unit.test_build import cpu_runner, first_step_logits


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [4, 8])
def test_symmetric_grid_codes_stay_in_range_and_round_within_half_a_step(bits):
    weight = randn(16, 64)
    codes = round_to_nearest(weight, bits=bits, group_size=32, symmetric=True)
    assert codes.is_symmetric and int(codes.codes.min()) >= 0
    assert int(codes.codes.max()) <= (1 << bits) - 1
    step = codes.scales.repeat_interleave(32, dim=1)
    assert ((codes.dequantize() - weight).abs() <= step / 2 + 1e-6).all()


def test_asymmetric_grid_keeps_zero_exact_and_rounds_within_half_a_step():
    weight = randn(8, 32).abs() + 0.5  # all positive: the range still stretches to hold 0
    weight[0, :4] = 0
    codes = round_to_nearest(weight, bits=4, group_size=16, symmetric=False)
    assert torch.equal(codes.dequantize()[0, :4], torch.zeros(4))
    step = codes.scales.repeat_interleave(16, dim=1)
    assert ((codes.dequantize() - weight).abs() <= step / 2 + 1e-6).all()


def test_group_size_is_128_or_the_largest_of_64_32_that_fits_every_layer():
    assert choose_group_size({"a": 4096, "b": 11008}) == 128
    assert choose_group_size({"q": 576, "down": 1536}) == 64  # SmolLM2-135M
    with pytest.raises(ValueError, match="down's 1000 input columns"):
        choose_group_size({"q": 512, "down": 1000}, 128)
    with pytest.raises(ValueError, match="no group size"):
        choose_group_size({"odd": 100})


def test_on_load_schemes_hold_int8_per_channel_and_int4_in_groups():
    int8 = IntScheme.on_load("int8_wo", {"qkv": 576, "down": 1536})
    int4 = IntScheme.on_load("int4_wo", {"qkv": 576, "down": 1536})
    w8a8 = IntScheme.on_load("w8a8", {"qkv": 576, "down": 1536})
    assert (int8.bits, int8.group_for(576), int8.act_int8) == (8, 576, False)
    assert (w8a8.bits, w8a8.group_for(576), w8a8.act_int8) == (8, 576, True)
    assert (int4.bits, int4.group_for(576), int4.group_for(1536)) == (4, 64, 64)
    assert not IntScheme("gptq", 4, 128).holds("down", 576)  # 128 does not tile 576
    assert not IntScheme("gptq", 4, 128, dense_kinds=frozenset({"qkv"})).holds("qkv", 1024)
    with pytest.raises(QuantizationError, match="int4_wo"):
        IntScheme.on_load("int4_wo", {"odd": 100})


def test_linear_kinds_by_engine_name():
    assert linear_kind("model.layers.3.self_attn.k_proj.weight") == "qkv"
    assert linear_kind("model.layers.0.mlp.down_proj.weight") == "down"
    assert linear_kind("model.layers.0.self_attn.o_proj.bias") is None
    assert linear_kind("lm_head.weight") is None


@pytest.mark.parametrize("bits,act_int8", [(4, False), (8, False), (8, True)])
def test_torch_ops_run_int_weights_on_the_kernels_reference(bits, act_int8):
    x, weight = randn(3, 64, seed=4), randn(16, 64, seed=5)
    scheme = IntScheme("w", bits, None if act_int8 else 32, act_int8=act_int8)
    int_weight = scheme.quantize(weight)
    ours = TorchOps().linear(x, int_weight)
    assert torch.equal(ours, int_linear_reference(x, int_weight))
    assert float((ours - F.linear(x, weight)).norm() / F.linear(x, weight).norm()) < 0.15


@pytest.mark.parametrize("bits,group", [(4, 16), (8, None)])
def test_tensor_parallel_cuts_of_an_int_weight_are_cuts_of_its_values(bits, group):
    weight = IntScheme("w", bits, group).quantize(randn(12, 64, seed=8))
    whole = weight.dequantize(torch.float32)
    rows = shard_int_weight(ShardRule("rows", ((0, 4), (8, 12))), weight)
    assert isinstance(rows, IntWeight)
    assert torch.equal(rows.dequantize(torch.float32), torch.cat([whole[0:4], whole[8:12]]))
    columns = shard_int_weight(ShardRule("columns", ((32, 64),)), weight)
    assert isinstance(columns, IntWeight)
    assert torch.equal(columns.dequantize(torch.float32), whole[:, 32:64])
    split_group = shard_int_weight(ShardRule("columns", ((8, 40),)), weight)
    expected_type = torch.Tensor if group else IntWeight  # per channel: any cut
    assert isinstance(split_group, expected_type)


@pytest.mark.parametrize("quantization", ["int8_wo", "int4_wo", "w8a8"])
def test_quantized_on_load_model_shrinks_and_matches_its_dequantized_twin(quantization):
    source = resolve_model("dummy:tiny")
    runner = ModelRunner(source, dtype=torch.float32, device="cpu", block_size=16,
                         num_blocks=4, quantization=quantization)
    layer = runner.model.layers[0]
    assert all(isinstance(w, IntWeight) for w in (layer.qkv_weight, layer.o_weight,
                                                  layer.gate_up_weight, layer.down_weight))
    twin = cpu_runner("dummy:tiny")  # the same weights rounded, then held as floats
    twin.model.load_weights((name, w.dequantize(torch.float32) if isinstance(w, IntWeight)
                             else w) for name, w in quantize_on_load(
        runner.model.int_scheme, iter_weights(source, dtype=torch.float32, device="cpu")))
    if quantization == "w8a8":  # the twin's activations stay in floats: close, not equal
        assert all(layer.qkv_weight.act_int8 for layer in runner.model.layers)
        logits, twin_logits = first_step_logits(runner), first_step_logits(twin)
        assert not torch.equal(logits, twin_logits)  # activations really were rounded
        torch.testing.assert_close(logits, twin_logits, rtol=0.05, atol=0.05)
    else:
        torch.testing.assert_close(first_step_logits(runner), first_step_logits(twin),
                                   rtol=1e-5, atol=1e-5)
    bits = 4 if quantization == "int4_wo" else 8
    linear_floats = sum(w.shape[0] * w.shape[1] for layer in twin.model.layers for w in (
        layer.qkv_weight, layer.o_weight, layer.gate_up_weight, layer.down_weight))
    saved = twin.model.num_parameter_bytes() - runner.model.num_parameter_bytes()
    assert saved > linear_floats * (4 - bits / 8) * 0.9


def test_quantization_values_are_validated_with_the_choices_named():
    with pytest.raises(ValueError, match="fp8, int8_wo, int4_wo, w8a8"):
        ModelConfig(quantization="int3")
    ModelConfig(quantization="int4_wo")
