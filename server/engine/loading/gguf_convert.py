"""Convert a llama.cpp GGUF file of a Llama model into a Hugging Face model directory.

The directory holds config.json, generation_config.json, model.safetensors (dequantized, Hugging
Face tensor names and layout) and the tokenizer files, so the engine, transformers and the api
process all read it as they would any downloaded checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from server.engine.loading.gguf_tokenizer import write_tokenizer_files
from server.engine.models.config import ModelArchConfig, UnsupportedModelError
from server.engine.models.weight_layout import weight_shapes

# GGUF tensor name (after "blk.{i}.") -> Hugging Face name (after "model.layers.{i}.").
_LAYER_TENSOR_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSOR_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# Checked in order: the first dtype that holds every dequantized value exactly is stored.
_LOSSLESS_STORAGE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every metadata key as a plain Python value (str, int, float, bool or list of them)."""
    return {key: _field_value(field) for key, field in reader.fields.items()}


def _field_value(field: Any) -> Any:
    string, array = gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY
    if field.types[0] == array:
        parts = [field.parts[index] for index in field.data]
        if field.types[1] == string:
            return [bytes(part).decode("utf-8") for part in parts]
        return [_scalar(part) for part in parts]
    part = field.parts[field.data[0]]
    return bytes(part).decode("utf-8") if field.types[0] == string else _scalar(part)


def _scalar(part: np.ndarray) -> Any:
    value = part[0]
    if isinstance(value, np.floating):
        # GGUF floats are float32: keep the shortest decimal that reads back the same (1e-05).
        return float(str(np.float32(value)))
    return value.item()


def hf_config_from_gguf(metadata: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """config.json for the GGUF's model; raises UnsupportedModelError naming what is missing."""
    arch = metadata["general.architecture"]
    if arch != "llama":
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported; inflightd converts 'llama' GGUF files")
    if f"{arch}.rope.scaling.type" in metadata or "rope_freqs.weight" in tensor_names:
        raise UnsupportedModelError("GGUF files with rope scaling are not supported")
    num_heads = metadata[f"{arch}.attention.head_count"]
    hidden_size = metadata[f"{arch}.embedding_length"]
    head_dim = metadata.get(f"{arch}.attention.key_length", hidden_size // num_heads)
    rotary_dim = metadata.get(f"{arch}.rope.dimension_count", head_dim)
    if rotary_dim != head_dim:
        raise UnsupportedModelError(
            f"partial rotary embeddings (rotary dim {rotary_dim} < head dim {head_dim})")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "vocab_size": metadata.get(f"{arch}.vocab_size",
                                   len(metadata["tokenizer.ggml.tokens"])),
        "hidden_size": hidden_size,
        "intermediate_size": metadata[f"{arch}.feed_forward_length"],
        "num_hidden_layers": metadata[f"{arch}.block_count"],
        "num_attention_heads": num_heads,
        "num_key_value_heads": metadata.get(f"{arch}.attention.head_count_kv", num_heads),
        "head_dim": head_dim,
        "max_position_embeddings": metadata[f"{arch}.context_length"],
        "rms_norm_eps": metadata[f"{arch}.attention.layer_norm_rms_epsilon"],
        "rope_theta": metadata.get(f"{arch}.rope.freq_base", 10000.0),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float32",
    }
    config.update(_special_token_ids(metadata))
    return config


def _special_token_ids(metadata: dict[str, Any]) -> dict[str, int]:
    keys = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
            "pad_token_id": "padding_token_id"}
    return {hf_key: metadata[f"tokenizer.ggml.{gguf_key}"] for hf_key, gguf_key in keys.items()
            if f"tokenizer.ggml.{gguf_key}" in metadata}


def hf_tensor_name(gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")  # suffix: weight or bias
    if stem in _GLOBAL_TENSOR_NAMES:
        return f"{_GLOBAL_TENSOR_NAMES[stem]}.{suffix}"
    parts = stem.split(".")  # blk.{layer}.{kind}
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_TENSOR_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_TENSOR_NAMES[parts[2]]}.{suffix}"
    raise UnsupportedModelError(f"GGUF tensor {gguf_name!r} has no Llama counterpart")


def unpermute_rotary_rows(weight: torch.Tensor, *, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k projection rows.

    Within one head of head_dim d, Hugging Face rotates the pairs (x_i, y_i) of its two halves
    (rotate_half); llama.cpp rotates adjacent rows, so its converter interleaves them:
        HF:   | x_0 x_1 ... x_{d/2-1} | y_0 y_1 ... y_{d/2-1} |
        GGUF: | x_0 y_0 x_1 y_1 ... x_{d/2-1} y_{d/2-1} |
    GGUF row 2j + h holds HF row h * d/2 + j.
    """
    rows = weight.shape[0]
    half = rows // num_heads // 2
    interleaved = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return interleaved.transpose(1, 2).reshape(weight.shape)


def dequantized_tensors(reader: gguf.GGUFReader, arch: ModelArchConfig, *,
                        progress: bool) -> dict[str, torch.Tensor]:
    """Every tensor as float32 under its Hugging Face name, q/k in Hugging Face row order."""
    expected = weight_shapes(arch)
    tensors: dict[str, torch.Tensor] = {}
    for tensor in tqdm(reader.tensors, desc="converting GGUF", unit="tensor",
                       file=sys.stderr, disable=not progress):
        name = hf_tensor_name(tensor.name)
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if not array.flags.writeable:  # unquantized tensors come back as views of the mmap
            array = array.copy()
        values = torch.from_numpy(array).to(torch.float32)
        if name not in expected or tuple(values.shape) != expected[name]:
            raise UnsupportedModelError(
                f"GGUF tensor {tensor.name!r} ({tuple(values.shape)}) does not fit the "
                f"config's {name} ({expected.get(name, 'not expected')})")
        if name.endswith("q_proj.weight"):
            values = unpermute_rotary_rows(values, num_heads=arch.num_heads)
        elif name.endswith("k_proj.weight"):
            values = unpermute_rotary_rows(values, num_heads=arch.num_kv_heads)
        tensors[name] = values.contiguous()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise UnsupportedModelError(f"GGUF file lacks tensors: {', '.join(missing[:5])}")
    return tensors


def lossless_storage_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype:
    """The narrowest dtype that stores every tensor bit-exactly (fp32 for Q4_1 values)."""
    candidates = list(_LOSSLESS_STORAGE_DTYPES[:-1])
    for tensor in tensors.values():
        candidates = [dtype for dtype in candidates
                      if torch.equal(tensor.to(dtype).to(tensor.dtype), tensor)]
        if not candidates:
            break
    return candidates[0] if candidates else _LOSSLESS_STORAGE_DTYPES[-1]


def convert_gguf(gguf_path: Path, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Write a Hugging Face model directory for `gguf_path` into the existing `out_dir`.

    Returns the config.json dict.
    """
    reader = gguf.GGUFReader(gguf_path)
    metadata = read_metadata(reader)
    hf_config = hf_config_from_gguf(metadata, {tensor.name for tensor in reader.tensors})
    arch = ModelArchConfig.from_hf(hf_config)
    tensors = dequantized_tensors(reader, arch, progress=progress)
    storage_dtype = lossless_storage_dtype(tensors)
    hf_config["torch_dtype"] = str(storage_dtype).removeprefix("torch.")
    save_file({name: t.to(storage_dtype) for name, t in tensors.items()},
              str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)  # save_file leaves it private
    _write_json(out_dir / "config.json", hf_config)
    _write_json(out_dir / "generation_config.json", _special_token_ids(metadata))
    write_tokenizer_files(metadata, out_dir,
                          model_max_length=hf_config["max_position_embeddings"])
    return hf_config


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
