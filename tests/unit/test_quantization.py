"""--quantization fp8 on the CPU: the row-wise format, fused weights quantized part by part
as they load, the torch reference linear, the option from the CLI, `LLM` and
`inflightd build` through to the engine, and engine directories that store the FP8 weights
(the GPU path: tests/gpu/test_fp8.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from server.cli import serve_config
from server.config import ModelConfig
from server.engine.loading.build import BuildError, BuildOptions, build_engine
from server.engine.loading.dummy import dummy_hf_config
from server.engine.loading.engine_dir import EngineDirConfig, read_engine_config
from server.engine.llm import LLM
from server.engine.models.config import ModelArchConfig
from server.engine.models.llama import LlamaModel
from server.engine.models.weight_map import WeightLoadError
from server.engine.ops.torch_ref import TorchOps
from server.engine.models.quantization import (FP8_MAX, Fp8Rows, Fp8Weight, QuantizationError,
                                        fp8_linear_reference, quantize_rows)
from server.engine.step.runner import ModelRunner
from server.engine.loading.weights import resolve_model
from server.scheduler.request import SamplingParams
from tests.api.test_cli import parse
from tests.unit.test_build import cpu_runner, first_step_logits, make_hf_dir

E4M3_RELATIVE_STEP = 2.0 ** -4  # half a step of a 3-bit mantissa, relative


def test_rows_quantize_to_within_half_an_e4m3_step_with_the_row_max_at_448():
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(0)) * 5
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (8, 1)
    restored = q.float() * scale
    big = x.abs() > scale * 2.0 ** -6 * 4  # clear of e4m3's subnormals
    relative = ((restored - x).abs() / x.abs())[big]
    assert relative.max() <= E4M3_RELATIVE_STEP
    assert torch.equal(q.float().abs().amax(dim=-1), torch.full((8,), FP8_MAX))


def test_a_row_of_zeros_gets_a_finite_scale_and_stays_zero():
    q, scale = quantize_rows(torch.zeros(2, 32))
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert torch.equal(q.float(), torch.zeros(2, 32))


def test_fused_weight_loads_part_by_part_with_one_scale_per_output_row():
    gen = torch.Generator().manual_seed(1)
    first, second = torch.randn(4, 32, generator=gen), 100 * torch.randn(12, 32, generator=gen)
    fused = Fp8Weight.empty(16, 32, device="cpu")
    fused[:4].copy_(first)
    fused[4:].copy_(second)
    assert fused.scale[:4].max() < 0.1 < fused.scale[4:].min()  # each part kept its own range
    dense = torch.cat([first, second])
    assert ((fused.dequantize() - dense).norm() / dense.norm()) < E4M3_RELATIVE_STEP


def test_reference_fp8_linear_is_the_dense_product_to_within_fp8_error():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 64, generator=gen)
    dense = torch.randn(48, 64, generator=gen)
    bias = torch.randn(48, generator=gen)
    weight = Fp8Weight.empty(48, 64, device="cpu").copy_(dense)
    out = TorchOps().linear(x, weight, bias)
    assert torch.equal(out, fp8_linear_reference(x, weight, bias))
    error = ((out - F.linear(x, dense, bias)).norm() / F.linear(x, dense, bias).norm()).item()
    assert 1e-3 < error < 0.1  # quantized, and still the same product


def test_prequantized_rows_give_the_linear_layer_the_same_product():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 64, generator=gen)
    weight = Fp8Weight.empty(32, 64, device="cpu").copy_(torch.randn(32, 64, generator=gen))
    ops = TorchOps()
    assert torch.equal(ops.linear(Fp8Rows.of(x), weight), ops.linear(x, weight))
    fused, summed = ops.add_rms_norm_fp8(x, x, torch.ones(64), 1e-5)
    normed, _ = ops.add_rms_norm(x, x, torch.ones(64), 1e-5)
    assert torch.equal(fused.q.float(), Fp8Rows.of(normed).q.float())
    assert torch.equal(summed, 2 * x)


def test_one_token_step_multiplies_its_16_bit_row_by_the_fp8_weight():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 64, generator=gen, dtype=torch.float64).to(torch.bfloat16)
    weight = Fp8Weight.empty(32, 64, device="cpu").copy_(torch.randn(32, 64, generator=gen))
    ops = TorchOps()
    one = ops.linear(x[:1], weight)
    assert torch.equal(one, (x[:1].float() @ weight.dequantize().t()).to(torch.bfloat16))
    assert not torch.equal(one, ops.linear(Fp8Rows.of(x[:1]), weight))
    assert torch.equal(ops.linear(x, weight), ops.linear(Fp8Rows.of(x), weight))


@pytest.mark.parametrize(("num_tokens", "quantized"), ((1, False), (2, True), (7, True)))
def test_fp8_layer_quantizes_its_inputs_only_past_one_token(num_tokens, quantized):
    model = LlamaModel(ModelArchConfig.from_hf(dummy_hf_config("tiny-llama3")),
                       dtype=torch.float32, device="cpu", quantization="fp8")
    seen = []

    class Recording(TorchOps):
        def linear(self, x, weight, bias=None):
            seen.append(isinstance(x, Fp8Rows))
            return super().linear(x, weight, bias)

    layer = model.layers[0]
    hidden = torch.randn(num_tokens, layer.gate_up_weight.shape[1])
    layer._mlp(layer._norm(hidden, torch.ones(hidden.shape[1]), None, Recording()), Recording())
    assert seen == [quantized, quantized]


def test_quantized_rows_never_reach_a_16_bit_weight():
    x = Fp8Rows.of(torch.randn(2, 16))
    with pytest.raises(QuantizationError, match="not FP8"):
        TorchOps().linear(x, torch.randn(8, 16))


def test_llm_with_fp8_runs_on_the_cpu_reference_path_and_says_so():
    llm = LLM("dummy:tiny-llama3", device="cpu", quantization="fp8", kv_cache_tokens=1024)
    assert llm.engine.info.quantization == "fp8"
    layer = llm.engine.runner.model.layers[0]
    assert all(isinstance(w, Fp8Weight) for w in (layer.qkv_weight, layer.o_weight,
                                                   layer.gate_up_weight, layer.down_weight))
    out = llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=6,
                                                      ignore_eos=True))
    assert len(out[0].token_ids) == 6


def test_unknown_quantization_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="--quantization"):
        ModelConfig(quantization="int4")
    with pytest.raises(BuildError, match="--quantization"):
        BuildOptions(model="dummy:tiny", output="x", quantization="int4")
    with pytest.raises(SystemExit):
        parse("serve", "--quantization", "int4")


def test_fp8_refuses_a_model_whose_linear_dims_are_not_multiples_of_16():
    arch = ModelArchConfig.from_hf({**dummy_hf_config("tiny"), "intermediate_size": 120})
    with pytest.raises(QuantizationError, match="multiples of 16.*down_proj is 64 x 120"):
        LlamaModel(arch, dtype=torch.float32, device="cpu", quantization="fp8")


def test_serve_quantization_option_reaches_the_model_config():
    assert serve_config(parse("serve", "--quantization", "fp8")).model.quantization == "fp8"
    assert serve_config(parse("serve")).model.quantization is None


def test_engine_built_with_fp8_is_served_with_fp8(tmp_path):
    engine = build_engine(BuildOptions(model="dummy:tiny", output=tmp_path / "engine",
                                       quantization="fp8", tune=False), progress=False)
    config = read_engine_config(engine)[1]
    assert config.quantization == "fp8"
    llm = LLM(str(engine), device="cpu", kv_cache_tokens=1024)
    assert llm.engine.info.quantization == "fp8"
    assert isinstance(llm.engine.runner.model.layers[1].down_weight, Fp8Weight)


def test_engine_configs_written_before_quantization_existed_read_as_none():
    config = EngineDirConfig(model_name="m", dtype="bfloat16", max_batch_size=8,
                             max_num_tokens=64, max_model_len=128, weights="dummy",
                             dummy_seed=0, kernel_arches=(), inflightd_version="x",
                             built_at="2026-11-21T00:00:00+00:00")
    data = config.to_json()
    del data["quantization"]
    assert EngineDirConfig.from_json(data) == replace(config, quantization=None)


def test_fp8_engine_of_a_checkpoint_stores_fp8_weights_that_serve_as_quantizing_at_load(
        tmp_path):
    hf_dir = make_hf_dir(tmp_path / "hf")
    dense = build_engine(BuildOptions(model=str(hf_dir), output=tmp_path / "dense",
                                      dtype="float32"), progress=False)
    fp8 = build_engine(BuildOptions(model=str(hf_dir), output=tmp_path / "fp8", dtype="float32",
                                    quantization="fp8"), progress=False)
    with safe_open(str(fp8 / "model.safetensors"), "pt") as f:
        qkv = "model.layers.0.self_attn.q_proj.weight"
        assert f.get_tensor(qkv).dtype == torch.float8_e4m3fn
        assert f.get_tensor(qkv + "_scale").dtype == torch.float32
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert (fp8 / "model.safetensors").stat().st_size < (dense / "model.safetensors").stat().st_size
    served = cpu_runner(str(fp8))  # no quantization asked: the stored weights say fp8
    assert served.quantization == "fp8"
    quantized_at_load = ModelRunner(resolve_model(str(hf_dir)), dtype=torch.float32,
                                    device="cpu", block_size=16, num_blocks=4,
                                    quantization="fp8")
    assert torch.equal(first_step_logits(served), first_step_logits(quantized_at_load))


def test_fp8_stored_weights_refuse_a_model_without_quantization(tmp_path):
    fp8 = build_engine(BuildOptions(model=str(make_hf_dir(tmp_path / "hf")),
                                    output=tmp_path / "fp8", dtype="float32",
                                    quantization="fp8"), progress=False)
    model = LlamaModel(resolve_model(str(fp8)).arch, dtype=torch.float32, device="cpu")
    with pytest.raises(WeightLoadError, match="stored in FP8"):
        model.load_weights([], stored_fp8=True)
