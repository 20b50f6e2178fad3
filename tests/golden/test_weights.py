"""Loading weights: the converted default model, local Hugging Face directories, dummy shapes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from server.config import DEFAULT_MODEL
from server.engine.loading import default_model
from server.engine.loading.dummy import DUMMY_CONFIGS
from server.engine.models.checkpoint_names import engine_named
from server.engine.models.config import UnsupportedModelError
from server.engine.models.weight_layout import num_weight_bytes
from server.engine.loading.weights import (ModelNotFoundError, WeightsError, default_model_dir,
                                   iter_weights, resolve_model)
from tests.golden.helpers import TINY_CONFIGS, make_hf_model

TINY_DUMMY_SHAPES = ["tiny", "tiny-mha", "tiny-mqa", "tiny-llama3", "qwen2-tiny"]


@pytest.fixture(scope="module")
def hf_default_model(converted_default_model: Path):
    """(model, tokenizer) loaded by transformers itself from the converted directory."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(converted_default_model, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(converted_default_model, local_files_only=True)
    return model.eval(), tokenizer


# --- the converted default model -------------------------------------------------------


def test_converted_config_describes_smollm2_135m(converted_default_model: Path):
    config = json.loads((converted_default_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert {key: config[key] for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "rope_theta", "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    )} == {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
           "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "head_dim": 64, "max_position_embeddings": 8192, "rope_theta": 100000.0,
           "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "bos_token_id": 1,
           "eos_token_id": 2}
    generation = json.loads((converted_default_model / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    # Q4_1 values are not all representable in 16 bits, so they are kept exactly in fp32.
    tensors = load_file(converted_default_model / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert "lm_head.weight" not in tensors


def test_converted_weights_equal_transformers_own_gguf_loader(converted_default_model: Path):
    # transformers' GGUF reader undoes llama.cpp's q/k row order with its own code: an
    # independent reference for our names, dequantization and un-permutation.
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    source = resolve_model(str(converted_default_model))
    with torch.device("meta"):  # only names the tensors for the loader; holds no memory
        skeleton = LlamaForCausalLM(LlamaConfig.from_pretrained(converted_default_model))
    parsed = load_gguf_checkpoint(str(default_model.packaged_default_gguf()),
                                  return_tensors=True, model_to_load=skeleton)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "rope_theta",
                "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert parsed["config"][key] == source.hf_config[key], key
    assert parsed["config"]["rms_norm_eps"] == pytest.approx(source.hf_config["rms_norm_eps"])

    reference = parsed["tensors"]
    ours = dict(iter_weights(source, dtype=torch.float32, device="cpu"))
    assert set(ours) == set(reference)
    for name, tensor in ours.items():
        assert torch.equal(tensor, reference[name]), name


def _to_gguf_row_order(weight: torch.Tensor, *, num_heads: int) -> torch.Tensor:
    # llama.cpp's converter: per head, rows (half h, index j) move to row 2j + h.
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, 2, half, -1).transpose(1, 2).reshape(weight.shape)


def test_converted_model_predicts_text_better_than_in_gguf_row_order(hf_default_model):
    # Left in llama.cpp's row order, q and k still meet, but every rotary pair gets the wrong
    # frequency: the model keeps some fluency yet predicts real text clearly worse.
    model, tokenizer = hf_default_model
    text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
            "France. It is named after the engineer Gustave Eiffel, whose company designed "
            "and built the tower from 1887 to 1889.")
    token_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(token_ids, labels=token_ids).loss.item()
        projections = [(layer.self_attn.q_proj, 9) for layer in model.model.layers] + [
            (layer.self_attn.k_proj, 3) for layer in model.model.layers]
        originals = [proj.weight.data for proj, _ in projections]
        try:
            for proj, num_heads in projections:
                proj.weight.data = _to_gguf_row_order(proj.weight.data, num_heads=num_heads)
            scrambled_loss = model(token_ids, labels=token_ids).loss.item()
        finally:  # the model is shared with the other tests of this module
            for (proj, _), original in zip(projections, originals):
                proj.weight.data = original
    assert loss < 2.8 and loss < scrambled_loss - 1.0


def test_converted_model_continues_capital_of_france_with_paris(hf_default_model):
    model, tokenizer = hf_default_model
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    continuation = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:])
    assert "Paris" in continuation


@pytest.mark.parametrize("text", [
    "Hello, world!", "你好，世界。今天天气很好。", "emoji 🚀🎉👩‍👩‍👧 mixed 😀 text",
    "  leading spaces\n\ttabs and\r\nnewlines  ", "def f(x):\n    return x ** 2  # café",
])
def test_tokenizer_round_trips_text(hf_default_model, text: str):
    _, tokenizer = hf_default_model
    token_ids = tokenizer.encode(text)
    assert tokenizer.decode(token_ids) == text
    assert max(token_ids) < 49152


def test_tokenizer_keeps_special_tokens_whole_and_splits_digits(hf_default_model):
    _, tokenizer = hf_default_model
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>") == [1, 4093, 198, 6004, 2]
    assert tokenizer.decode([1, 4093, 2], skip_special_tokens=True) == "user"
    # SmolLM2's pre-tokenizer puts every digit in a piece of its own.
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("year 2024")) == [
        "year", "Ġ", "2", "0", "2", "4"]


def test_chat_template_renders_chatml_with_default_system_prompt(hf_default_model):
    _, tokenizer = hf_default_model
    messages = [{"role": "user", "content": "What is 2+2?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                      "trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?"
                      "<|im_end|>\n<|im_start|>assistant\n")
    token_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                              return_dict=True)["input_ids"]
    assert token_ids[0] == 1 and token_ids == tokenizer.encode(prompt)


def test_second_resolve_reuses_the_cached_conversion(converted_default_model: Path,
                                                     inflightd_cache: Path):
    weights_file = converted_default_model / "model.safetensors"
    before = weights_file.stat()
    started = time.monotonic()
    source = resolve_model(DEFAULT_MODEL, cache_dir=inflightd_cache)
    assert time.monotonic() - started < 1.0
    assert source.weights_dir == source.tokenizer_dir == converted_default_model
    after = weights_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_crashed_conversion_leaves_no_model_directory(tmp_path: Path):
    gguf_path = tmp_path / "model.gguf"
    gguf_path.write_bytes(b"not read: the converter is replaced")

    def crash_midway(source: Path, out_dir: Path, *, progress: bool) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        default_model.ensure_converted(gguf_path, cache_dir=tmp_path / "cache",
                                       convert=crash_midway)
    models_dir = tmp_path / "cache" / "models"
    assert [p.name for p in models_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_outdated_conversion_is_replaced_once(tmp_path: Path):
    gguf_path = tmp_path / "model.gguf"
    gguf_path.write_bytes(b"x" * 10)
    target = default_model.converted_dir_path(tmp_path)
    target.mkdir(parents=True)
    (target / "leftover.bin").write_text("from an older converter")
    (target / default_model.MARKER_FILE).write_text(json.dumps({"converter_version": 0}))
    calls = []

    def convert(source: Path, out_dir: Path, *, progress: bool) -> None:
        calls.append(source)
        (out_dir / "config.json").write_text("{}")

    for _ in range(2):
        assert default_model.ensure_converted(gguf_path, cache_dir=tmp_path,
                                              convert=convert) == target
    assert len(calls) == 1
    assert sorted(p.name for p in target.iterdir()) == ["config.json",
                                                         default_model.MARKER_FILE]
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")
            and not p.name.endswith(".lock")] == []


# --- errors -----------------------------------------------------------------------------


def test_unsupported_architecture_error_names_it(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["GPTNeoXForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "num_attention_heads": 2, "num_hidden_layers": 1, "intermediate_size": 16}))
    save_file({"wte.weight": torch.zeros(10, 8)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedModelError, match="GPTNeoXForCausalLM"):
        resolve_model(str(tmp_path))


def test_a_quantized_checkpoint_of_another_method_is_rejected_naming_it(tmp_path: Path):
    config = {**DUMMY_CONFIGS["tiny"], "quantization_config": {"quant_method": "bitsandbytes"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="bitsandbytes"):
        resolve_model(str(tmp_path))


def test_unknown_model_name_error_lists_choices_and_never_downloads():
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("meta-llama/Meta-Llama-3-8B-Instruct")
    message = str(error.value)
    assert DEFAULT_MODEL in message and "never downloads" in message
    assert all(shape in message for shape in DUMMY_CONFIGS)
    with pytest.raises(ModelNotFoundError, match="tiny-mqa"):
        resolve_model("dummy:no-such-shape")


def test_directory_without_safetensors_is_reported(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(DUMMY_CONFIGS["tiny"]))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(WeightsError, match="safetensors"):
        resolve_model(str(tmp_path))


# --- local Hugging Face directories -----------------------------------------------------


@pytest.mark.parametrize("config_name", list(TINY_CONFIGS))
def test_hf_directory_yields_the_saved_state_dict(config_name: str, tmp_path: Path):
    hf_model = make_hf_model(config_name)
    hf_model.save_pretrained(tmp_path)
    source = resolve_model(str(tmp_path))
    assert source.arch.architecture == type(hf_model).__name__
    assert source.tokenizer_dir is None and source.weights_dir == tmp_path

    loaded = list(iter_weights(source, dtype=torch.float32, device="cpu"))
    # under the engine's names (GPT-2's renamed, its Conv1D weights transposed)
    expected = dict(engine_named(source.arch, hf_model.state_dict().items()))
    if hf_model.config.tie_word_embeddings:
        del expected["lm_head.weight"]
    assert [name for name, _ in loaded][0] == "model.embed_tokens.weight"
    assert {name for name, _ in loaded} == set(expected)
    for name, tensor in loaded:
        assert torch.equal(tensor, expected[name]), name

    halves = dict(iter_weights(source, dtype=torch.bfloat16, device="cpu"))
    assert all(t.dtype == torch.bfloat16 for t in halves.values())


def test_sharded_checkpoint_is_read_through_its_index(tmp_path: Path):
    hf_model = make_hf_model("llama-mha")
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = dict(iter_weights(resolve_model(str(tmp_path)), dtype=torch.float32, device="cpu"))
    assert set(loaded) == set(hf_model.state_dict())


def test_checkpoint_missing_a_tensor_is_named(tmp_path: Path):
    make_hf_model("qwen2-bias").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias"):
        list(iter_weights(resolve_model(str(tmp_path)), dtype=torch.float32, device="cpu"))


# --- dummy weights ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", TINY_DUMMY_SHAPES)
def test_dummy_weights_load_strictly_into_transformers_and_give_finite_logits(
        shape: str, inflightd_cache: Path):
    import transformers

    source = resolve_model(f"dummy:{shape}", cache_dir=inflightd_cache)
    config = transformers.AutoConfig.for_model(**source.hf_config)
    hf_model = transformers.AutoModelForCausalLM.from_config(config)
    weights = dict(iter_weights(source, dtype=torch.float32, device="cpu"))
    # Every name and shape must be the one transformers itself uses (a wrong shape raises).
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    assert unexpected == []
    assert missing == (["lm_head.weight"] if source.arch.tie_word_embeddings else [])
    norms = [t for name, t in weights.items() if name.endswith("norm.weight")]
    assert len(norms) == 2 * source.arch.num_layers + 1
    assert all(torch.equal(t, torch.ones_like(t)) for t in norms)

    logits = hf_model(torch.tensor([[1, 500, 9000, 42]])).logits
    assert torch.isfinite(logits).all() and logits.std() > 1e-3


def test_dummy_weights_are_seeded_and_made_in_the_requested_dtype(inflightd_cache: Path):
    from dataclasses import replace

    source = resolve_model("dummy:qwen2-tiny", cache_dir=inflightd_cache)
    first = dict(iter_weights(source, dtype=torch.bfloat16, device="cpu"))
    again = dict(iter_weights(source, dtype=torch.bfloat16, device="cpu"))
    other = dict(iter_weights(replace(source, dummy_seed=1), dtype=torch.bfloat16, device="cpu"))
    assert {t.dtype for t in first.values()} == {torch.bfloat16}
    assert all(torch.equal(first[name], again[name]) for name in first)
    name = "model.layers.0.self_attn.q_proj.bias"
    assert not torch.equal(first[name], other[name])
    assert 0.015 < first["model.layers.1.mlp.down_proj.weight"].float().std() < 0.025


def test_dummy_models_share_the_default_tokenizer_only_when_its_vocab_fits(
        inflightd_cache: Path, converted_default_model: Path):
    assert resolve_model("dummy:tiny", cache_dir=inflightd_cache).tokenizer_dir == \
        converted_default_model
    assert resolve_model("dummy:llama-2-7b", cache_dir=inflightd_cache).tokenizer_dir is None


def test_large_dummy_shapes_resolve_without_making_weights(inflightd_cache: Path):
    started = time.monotonic()
    source = resolve_model("dummy:llama-3-70b", cache_dir=inflightd_cache)
    assert time.monotonic() - started < 1.0
    arch = source.arch
    assert (arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.head_dim) == (80, 64, 8, 128)
    assert source.weights_dir is None
    assert 69e9 < num_weight_bytes(arch, bytes_per_element=1) < 72e9
    llama31 = resolve_model("dummy:llama-3.1-8b", cache_dir=inflightd_cache).arch
    assert llama31.rope_scaling_dict["rope_type"] == "llama3"


def test_default_model_dir_is_the_resolved_default(converted_default_model: Path,
                                                   inflightd_cache: Path):
    assert default_model_dir(cache_dir=inflightd_cache) == converted_default_model
    assert converted_default_model.parent == inflightd_cache / "models"
