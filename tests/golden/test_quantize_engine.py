"""`inflightd quantize` end to end on a tiny random Llama saved by transformers: the directory
every method writes loads with `LLM(dir)` and no options, its logits match a transformers
twin holding the weights that a straightforward reader of the format (tests/unit/
format_reference.py) dequantizes, and the integer schemes shrink the model's bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from server.cli import main
from server.engine.loading.build import BuildError, BuildOptions, build_engine, ensure_engine_dir
from server.engine.llm import LLM
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import Fp8Weight
from server.scheduler.request import SamplingParams
from tests.golden.helpers import make_hf_model, single_torch_thread
from tests.unit.format_reference import dequantized_state
from tests.unit.test_build import cpu_runner, first_step_logits

METHODS = ("int8_wo", "int4_wo", "gptq", "awq", "w8a8_sq", "fp8")
PROMPT = [5, 9, 14, 3]  # what first_step_logits computes
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.",
         "def add(a, b):\n    return a + b", "Quantization keeps weights in fewer bits.",
         "Rain fell on the old stone bridge all night.", "1, 2, 3, 5, 8, 13, 21, 34"]


def byte_tokenizer() -> Tokenizer:
    """One token per byte: ids 0..255, as the tiny model's vocabulary."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def save_tiny_llama(path: Path) -> Path:
    """A tiny random Llama (hidden 64, MLP 96, grouped kv heads) saved by transformers."""
    make_hf_model("llama-gqa-tied").save_pretrained(path)
    byte_tokenizer().save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS * 4))
    return path


def quantize(model: Path, method: str, output: Path, *extra: str) -> Path:
    with single_torch_thread():
        assert main(["quantize", str(model), "--method", method, "--output", str(output),
                     *extra]) == 0
    return output


@pytest.fixture(scope="module")
def quantized(tiny_llama, calibration, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quantized")
    return {method: quantize(tiny_llama, method, root / method,
                             *(("--calibration", str(calibration))
                               if method in ("gptq", "awq", "w8a8_sq") else ()))
            for method in METHODS}


def fake_quantized_inputs(model, method: str) -> None:
    """W8A8 and FP8 quantize each token's activations: the twin's linear layers round their
    inputs the same way, written from the definitions (absmax / 127 to int8, absmax / 448
    to e4m3)."""
    def int8(x):
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127
        return torch.round(x / scale).clamp(-127, 127) * scale

    def fp8(x):
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) * (1.0 / 448)
        return (x / scale).to(torch.float8_e4m3fn).float() * scale

    rounding = {"w8a8_sq": int8, "fp8": fp8}.get(method)
    if rounding is None:
        return
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            module.register_forward_pre_hook(lambda _m, args: (rounding(args[0]),))


def twin_logits(directory: Path, method: str) -> torch.Tensor:
    """transformers' logits of the checkpoint's weights as the format reference reads them."""
    import transformers

    config = json.loads((directory / "config.json").read_text())
    state = dequantized_state(load_file(str(directory / "model.safetensors")), config)
    del config["quantization_config"]
    twin = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    twin.load_state_dict(state, strict=False)  # lm_head is tied to the embedding
    twin.tie_weights()
    fake_quantized_inputs(twin, method)
    with torch.no_grad():
        return twin(torch.tensor([PROMPT])).logits[0, -1].float()


@pytest.mark.parametrize("method", METHODS)
def test_quantized_directory_loads_with_no_options_and_matches_its_dequantized_twin(
        quantized, method):
    with single_torch_thread():
        runner = cpu_runner(str(quantized[method]))
        ours = first_step_logits(runner)[0]
    expected = twin_logits(quantized[method], method)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    kinds = {type(w) for layer in runner.model.layers
             for w in (layer.qkv_weight, layer.o_weight, layer.gate_up_weight, layer.down_weight)}
    assert kinds == ({Fp8Weight} if method == "fp8" else {IntWeight})


def test_integer_schemes_shrink_the_parameter_bytes(tiny_llama, quantized):
    with single_torch_thread():
        dense = cpu_runner(str(tiny_llama)).model.num_parameter_bytes()
        held = {method: cpu_runner(str(path)).model.num_parameter_bytes()
                for method, path in quantized.items()}
    linear = 2 * 4 * (64 * 128 + 64 * 64 + 2 * 96 * 64 + 64 * 96)  # float32 bytes of 2 layers
    for method, held_bytes in held.items():
        bits = 4 if method in ("int4_wo", "gptq", "awq") else 8
        # the weights shrink to bits / 32 of their float32 bytes, plus their scales
        assert dense - held_bytes > linear * (1 - bits / 32) * 0.8, method


def test_llm_generates_from_a_quantized_directory(quantized):
    with single_torch_thread():
        llm = LLM(str(quantized["awq"]), device="cpu", kv_cache_tokens=256)
        out = llm.generate(["Paris is"], SamplingParams(temperature=0, max_tokens=4,
                                                        ignore_eos=True))
    assert len(out[0].token_ids) == 4 and llm.engine.info.quantization == "awq"


def test_quantized_directories_are_served_as_stored_not_built_into_engines(quantized, tmp_path):
    # an engine directory holds weights in the engine dtype: the integers would be lost
    assert ensure_engine_dir(str(quantized["gptq"]), progress=False) == quantized["gptq"]
    with pytest.raises(BuildError, match=r"quantized checkpoint \(gptq\)"):
        build_engine(BuildOptions(model=str(quantized["gptq"]), output=tmp_path / "engine"),
                     progress=False)


def test_checkpoints_quantize_cannot_take_are_refused_naming_why(quantized, tmp_path, capsys):
    gpt2 = tmp_path / "gpt2"
    make_hf_model("gpt2").save_pretrained(gpt2)
    for model, message in ((gpt2, "GPT2LMHeadModel is not one of them"),
                           (quantized["awq"], "quantized already (awq)")):
        assert main(["quantize", str(model), "--method", "int8_wo",
                     "--output", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err


def norm_weights(directory: Path) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in load_file(str(directory / "model.safetensors")
                                                        ).items() if "layernorm" in name}


def test_gptq_with_awq_scales_writes_scaled_norms_and_matches_its_twin(
        tiny_llama, calibration, quantized, tmp_path):
    directory = quantize(tiny_llama, "gptq", tmp_path / "gptq-awq", "--awq-scales",
                         "--calibration", str(calibration))
    # AWQ's scales, folded in before GPTQ, are in the norms (plain gptq leaves them)
    source, written = norm_weights(tiny_llama), norm_weights(directory)
    assert source.keys() == written.keys() and source
    assert all(not torch.equal(source[name], written[name]) for name in source)
    assert all(torch.equal(source[name], tensor)
               for name, tensor in norm_weights(quantized["gptq"]).items())
    # still a plain GPTQ layout: the engine reads it as its dequantized twin computes
    with single_torch_thread():
        runner = cpu_runner(str(directory))
        ours = first_step_logits(runner)[0]
    torch.testing.assert_close(ours, twin_logits(directory, "gptq"), atol=1e-4, rtol=1e-4)
    assert {type(layer.qkv_weight) for layer in runner.model.layers} == {IntWeight}


def test_8_bit_gptq_is_symmetric_so_it_loads_as_int8(tiny_llama, calibration, tmp_path):
    directory = quantize(tiny_llama, "gptq", tmp_path / "gptq8", "--bits", "8",
                         "--calibration", str(calibration))
    assert json.loads((directory / "config.json").read_text())["quantization_config"]["sym"]
    assert all(torch.equal(tensor, norm_weights(tiny_llama)[name])  # no AWQ scales at 8 bits
               for name, tensor in norm_weights(directory).items())
    with single_torch_thread():
        layer = cpu_runner(str(directory)).model.layers[0]
    assert layer.down_weight.bits == 8 and layer.down_weight.qweight.dtype == torch.int8
