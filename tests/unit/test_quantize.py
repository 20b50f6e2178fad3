"""`inflightd quantize`'s parts on the CPU: the layouts it writes, read back by the format
reference (format_reference.py) and by the engine's own config parser; its options and
calibration files, refused with the option or line named; and the three calibrations'
defining properties (GPTQ is round-to-nearest when inputs are uncorrelated and beats it
when they are not; AWQ's scales cut the error on outlier channels; SmoothQuant's folding
keeps the function while flattening the activations)."""

from __future__ import annotations

import json

import pytest
import torch

from server.engine.loading.quantized_checkpoints import QuantizedFormat
from server.engine.models.int_grid import round_to_nearest
from server.quantize import layouts
from server.quantize.awq import InputStats, fake_quantize, search_scales
from server.quantize.calibration import calibration_texts, read_jsonl_texts, token_sequences
from server.quantize.gptq import gptq_quantize
from server.quantize.options import QuantizeError, QuantizeOptions
from server.quantize.smoothquant import smoothing_scales
from server.bench.datasets import SHAREGPT_PATH, read_sharegpt_prompts
from tests.unit.format_reference import (awq_weight, compressed_tensors_weight, gptq_weight)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_layout_reads_back_as_the_codes_values(bits):
    codes = round_to_nearest(randn(16, 32), bits=bits, group_size=8, symmetric=True)
    tensors = layouts.gptq_tensors("x", codes)
    parts = {name.removeprefix("x."): tensor for name, tensor in tensors.items()}
    torch.testing.assert_close(gptq_weight(parts, bits), codes.dequantize(),
                               rtol=1e-3, atol=1e-3)  # fp16 scales
    fmt = QuantizedFormat.from_hf(layouts.gptq_config(bits=bits, group_size=8,
                                                      per_channel=False, method="rtn"))
    assert (fmt.bits, fmt.group_size, fmt.zeros_minus_one, fmt.int_scheme().bits) == (
        bits, 8, True, bits)


def test_awq_layout_reads_back_as_the_codes_values():
    codes = round_to_nearest(randn(16, 32), bits=4, group_size=8, symmetric=False)
    parts = {name.removeprefix("x."): t for name, t in layouts.awq_tensors("x", codes).items()}
    torch.testing.assert_close(awq_weight(parts, 8), codes.dequantize(), rtol=1e-3, atol=1e-3)
    fmt = QuantizedFormat.from_hf(layouts.awq_config(group_size=8))
    assert (fmt.method, fmt.group_size) == ("awq", 8)


@pytest.mark.parametrize("kind", ["int", "float"])
def test_compressed_tensors_layouts_read_back_with_per_channel_scales(kind):
    weight = randn(16, 32)
    if kind == "int":
        codes = round_to_nearest(weight, bits=8, group_size=32, symmetric=True)
        tensors, expected = layouts.w8a8_tensors("x", codes), codes.dequantize()
    else:
        tensors, expected = layouts.fp8_tensors("x", weight), weight
    parts = {name.removeprefix("x."): tensor for name, tensor in tensors.items()}
    assert parts["weight_scale"].shape == (16, 1)
    torch.testing.assert_close(compressed_tensors_weight(parts), expected,
                               rtol=0.07 if kind == "float" else 1e-6, atol=1e-6)
    fmt = QuantizedFormat.from_hf(layouts.compressed_tensors_config(kind))
    assert fmt.method == ("w8a8" if kind == "int" else "fp8")


def test_a_weight_the_layout_cannot_pack_is_named():
    codes = round_to_nearest(randn(12, 32), bits=4, group_size=8, symmetric=True)
    with pytest.raises(QuantizeError, match="x is 12 x 32"):
        layouts.gptq_tensors("x", codes)
    positive = round_to_nearest(randn(8, 32).abs(), bits=4, group_size=8, symmetric=False)
    with pytest.raises(QuantizeError, match="zero point of 0"):  # "gptq" stores zero - 1
        layouts.gptq_tensors("x", positive)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="int3"), "--method must be one of"),
    (dict(method="awq", bits=8), "--bits 8 is not available with --method awq"),
    (dict(method="int8_wo", group_size=128), "--group-size does not apply"),
    (dict(method="awq", group_size=-1), "awq needs groups"),
    (dict(method="gptq", group_size=7), "even number"),
    (dict(method="fp8", calibration="x.jsonl"), "--calibration is read only by"),
    (dict(method="gptq", num_calibration_samples=401), "held out"),
    (dict(method="gptq", device="tpu"), "--device"),
    (dict(method="awq", awq_scales=True), "--awq-scales applies to --method gptq"),
    (dict(method="gptq", bits=8, awq_scales=True), "at 4 bits"),
])
def test_options_a_method_cannot_take_are_refused_naming_them(kwargs, message, tmp_path):
    with pytest.raises(QuantizeError, match=message):
        QuantizeOptions(**{"model": "m", "output": tmp_path / "out", **kwargs})


def test_cli_reports_a_refused_option_with_status_2(tmp_path, capsys):
    from server.cli import main

    assert main(["quantize", "m", "--method", "awq", "--bits", "8",
                 "--output", str(tmp_path / "out")]) == 2
    assert "--bits 8 is not available" in capsys.readouterr().err


def test_default_calibration_is_the_sharegpt_sample_without_its_last_100_prompts():
    prompts = read_sharegpt_prompts(SHAREGPT_PATH)
    texts = calibration_texts(None, 400)
    assert texts == prompts[:400] and len(prompts) == 500


def test_jsonl_texts_are_read_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n\n" + json.dumps("b") + "\n" +
                    json.dumps({"prompt": "c"}) + "\n")
    assert read_jsonl_texts(path) == ["a", "b", "c"]
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"other": 1}) + "\n")
    with pytest.raises(QuantizeError, match="c.jsonl:2 has no text"):
        read_jsonl_texts(path)


def test_each_calibration_text_is_its_own_sequence_from_position_0(tmp_path):
    from tests.golden.test_quantize_engine import byte_tokenizer

    byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    sequences = token_sequences(["abc", "", "x" * 600], tmp_path, max_tokens=512)
    assert [tuple(s.shape) for s in sequences] == [(1, 3), (1, 512)]
    with pytest.raises(QuantizeError, match="tokenizer.json"):
        token_sequences(["abc"], tmp_path / "none")


def output_error(weight, approx, hessian) -> float:
    delta = (weight - approx).double()
    return float((delta @ hessian.double() * delta).sum())


def test_gptq_is_round_to_nearest_with_uncorrelated_inputs_and_better_with_correlated():
    weight = randn(8, 64, seed=1)
    rtn = round_to_nearest(weight, bits=4, group_size=32, symmetric=True)
    identity = gptq_quantize(weight, torch.eye(64), bits=4, group_size=32)
    # with H = I no column's error is carried to the others: exactly round to nearest
    assert torch.equal(identity.codes, rtn.codes)
    mixing = randn(64, 64, seed=2) + 3 * torch.eye(64)
    x = randn(512, 64, seed=3) @ mixing  # correlated inputs
    hessian = 2 * x.t() @ x / 512
    for act_order in (False, True):
        gptq = gptq_quantize(weight, hessian, bits=4, group_size=32, act_order=act_order)
        assert output_error(weight, gptq.dequantize(), hessian) < 0.8 * output_error(
            weight, rtn.dequantize(), hessian)


def test_act_order_keeps_each_groups_grid_from_its_own_columns_and_zeros_storable():
    weight = randn(8, 64, seed=8).abs()  # all positive: an asymmetric grid would want zero 0
    x = randn(256, 64, seed=9) * torch.linspace(0.1, 3, 64)
    codes = gptq_quantize(weight, 2 * x.t() @ x / 256, bits=4, group_size=16,
                          symmetric=False)
    static = round_to_nearest(weight, bits=4, group_size=16, symmetric=False)
    assert torch.equal(codes.scales, static.scales)  # fixed before any column moved
    assert int(codes.zeros.min()) >= 1  # GPTQ's layout stores zero - 1
    parts = {name.removeprefix("x."): t for name, t in layouts.gptq_tensors("x", codes).items()}
    torch.testing.assert_close(gptq_weight(parts, 4), codes.dequantize(), rtol=1e-3, atol=1e-3)


def test_dynamic_groups_record_in_g_idx_the_act_order_runs_the_quantizer_used():
    weight = randn(8, 64, seed=10)
    x = randn(256, 64, seed=11) * torch.linspace(0.1, 3, 64)[
        torch.randperm(64, generator=torch.Generator().manual_seed(12))]
    hessian = 2 * x.t() @ x / 256
    codes = gptq_quantize(weight, hessian, bits=4, group_size=16, symmetric=False,
                          static_groups=False)
    # group g is act-order's columns 16 g .. 16 g + 15: the inputs by decreasing H diagonal
    order = torch.argsort(hessian.diagonal(), descending=True)
    assert torch.equal(codes.g_idx[order].long(), torch.arange(64) // 16)
    assert not torch.equal(codes.g_idx.long(), torch.arange(64) // 16)  # scattered
    # the layout stores g_idx as it is, and a reader of it gets the quantizer's values
    values = codes.dequantize()
    parts = {name.removeprefix("x."): t for name, t in layouts.gptq_tensors("x", codes).items()}
    assert torch.equal(parts["g_idx"], codes.g_idx)
    torch.testing.assert_close(gptq_weight(parts, 4), values, rtol=1e-3, atol=1e-3)
    rtn = round_to_nearest(weight, bits=4, group_size=16, symmetric=False)
    assert output_error(weight, values, hessian) < output_error(weight, rtn.dequantize(),
                                                                hessian)


def test_awq_scales_cut_the_output_error_on_outlier_channels():
    x = randn(1024, 64, seed=4)
    x[:, :4] *= 30  # a few channels carry large activations, as in LLMs
    weight = randn(32, 64, seed=5)
    stats = InputStats(stride=1)
    stats.add(x)
    s = search_scales([weight], stats, group_size=32)
    scaled = fake_quantize(weight * s, 32) / s
    plain = fake_quantize(weight, 32)
    reference = x @ weight.t()
    assert float((x @ scaled.t() - reference).pow(2).mean()) < 0.7 * float(
        (x @ plain.t() - reference).pow(2).mean())
    assert float(s[:4].mean()) > float(s[4:].mean())  # the outlier channels scaled up


def test_smoothing_keeps_the_function_and_flattens_the_activations():
    x = randn(256, 64, seed=6)
    x[:, 3] *= 50
    weight = randn(16, 64, seed=7)
    s = smoothing_scales(x.abs().amax(dim=0), [weight])
    expected = (x.abs().amax(dim=0).sqrt() / weight.abs().amax(dim=0).sqrt())
    torch.testing.assert_close(s, expected)
    torch.testing.assert_close((x / s) @ (weight * s).t(), x @ weight.t(), rtol=1e-4,
                               atol=1e-3)
    ratio = lambda a: float(a.abs().amax(dim=0).max() / a.abs().amax(dim=0).median())  # noqa
    assert ratio(x / s) < ratio(x) / 3


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config).float().eval()


@pytest.mark.parametrize("true_sequential", [True, False])
def test_gptq_true_sequential_takes_each_hessian_from_the_layer_quantized_so_far(
        monkeypatch, true_sequential):
    from server.quantize import gptq

    model = tiny_llama()
    blocks = [torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(i))
              for i in range(4)]
    original = {name: observed_inputs_of(model, name, blocks)
                for name in ("self_attn.o_proj", "mlp.down_proj")}
    seen = []
    quantize = gptq.gptq_quantize
    monkeypatch.setattr(gptq, "gptq_quantize",
                        lambda weight, hessian, **kw: seen.append(hessian) or quantize(
                            weight, hessian, **kw))
    # no AWQ scales: they would change o_proj's inputs (v_proj's rows) before any rounding
    gptq.calibrate_gptq(model, blocks, bits=4, group_size=32, true_sequential=true_sequential,
                        awq_scales=False)
    assert len(seen) == len(gptq.FUSED_GROUPS)
    # o_proj's and down_proj's inputs do not depend on their own weights: the layer as it
    # ends (all quantized) hands them what GPTQ should have seen in true-sequential order
    for hessian, name in zip((seen[1], seen[3]), ("self_attn.o_proj", "mlp.down_proj")):
        x = observed_inputs_of(model, name, blocks)
        quantized, plain = 2 * x.t() @ x / len(x), 2 * original[name].t() @ original[name] / len(x)
        expected, other = (quantized, plain) if true_sequential else (plain, quantized)
        assert float((hessian - expected).norm()) < 1e-4 * float(expected.norm())
        assert float((hessian - other).norm()) > 1e-2 * float(other.norm())


@pytest.mark.parametrize("bits, awq_scales", [(4, True), (8, True), (4, None)])
def test_gptq_with_awq_scales_folds_them_into_the_norms_first(bits, awq_scales):
    from server.quantize import gptq
    from server.quantize.layerwise import decoder_layers

    model, source = tiny_llama(seed=2), tiny_llama(seed=2)
    blocks = [torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(i))
              for i in range(4)]
    gptq.calibrate_gptq(model, blocks, bits=bits, group_size=32, awq_scales=awq_scales)
    layer, original = decoder_layers(model)[0], decoder_layers(source)[0]
    for name in ("input_layernorm", "post_attention_layernorm"):
        changed = not torch.equal(getattr(layer, name).weight, getattr(original, name).weight)
        # 8 bits, or the default (no scales): GPTQ alone, the norms as they came
        assert changed == (bits == 4 and awq_scales is True), name
    with torch.no_grad():  # the scales keep the function: only the rounding moves it
        ids = torch.cat(blocks, dim=1)
        ours, reference = model(ids).logits, source(ids).logits
    assert float((ours - reference).norm()) < 0.1 * float(reference.norm())


def observed_inputs_of(model, name: str, blocks) -> torch.Tensor:
    from server.quantize.layerwise import decoder_layers, first_layer_inputs, observe_inputs
    from server.quantize.layerwise import run_layer

    rows = []
    layer = decoder_layers(model)[0]
    with torch.no_grad(), observe_inputs(layer, (name,), lambda _n, x: rows.append(x)):
        run_layer(layer, first_layer_inputs(model, blocks))
    return torch.cat(rows)


@torch.no_grad()
def test_awq_block_loss_measures_the_attention_output_and_restores_the_weights():
    from server.quantize.awq import block_loss, fake_quantize
    from server.quantize.layerwise import decoder_layers

    model = tiny_llama(seed=1)
    attention = decoder_layers(model)[0].self_attn
    x = randn(1, 16, 64, seed=10)
    position_ids = torch.arange(16)[None]
    cos_sin = model.model.rotary_emb(x, position_ids)
    mask = torch.full((16, 16), float("-inf")).triu(1)[None, None]

    def run():
        return [attention(hidden_states=x, position_embeddings=cos_sin, attention_mask=mask)[0]]

    linears = [attention.q_proj, attention.k_proj, attention.v_proj]
    before = [linear.weight.detach().clone() for linear in linears]
    loss = block_loss(linears, run)
    assert loss([w.clone() for w in before]) == 0
    rounded = [fake_quantize(w, 32) for w in before]
    reference = run()[0]
    for linear, w in zip(linears, rounded):
        linear.weight.data = w.clone()
    direct = float((run()[0] - reference).pow(2).mean())
    for linear, w in zip(linears, before):
        linear.weight.data = w.clone()
    assert direct > 0
    assert loss(rounded) == pytest.approx(direct, rel=1e-5)
    assert all(torch.equal(linear.weight, w) for linear, w in zip(linears, before))


def test_awq_scale_search_with_a_loss_given_ranks_the_rounded_weights_by_it():
    x = randn(1024, 64, seed=4)
    x[:, :4] *= 30
    weight = randn(32, 64, seed=5)
    stats = InputStats(stride=1, keep_rows=True)
    stats.add(x)
    assert torch.equal(torch.cat(stats.rows), x)
    reference = x @ weight.t()
    own = search_scales([weight], stats, group_size=32)
    given = search_scales([weight], stats, group_size=32,
                          loss=lambda ws: float((x @ ws[0].t() - reference).pow(2).mean()))
    torch.testing.assert_close(given, own)  # the same loss, computed directly
    # a loss that ignores the outlier channels' error picks other scales
    other = search_scales([weight], stats, group_size=32,
                          loss=lambda ws: float((ws[0] - weight)[:, 4:].pow(2).sum()))
    assert not torch.allclose(other, own)
