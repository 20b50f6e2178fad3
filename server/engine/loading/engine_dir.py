"""Engine directories: what `inflightd build` writes and `inflightd serve DIR` / `LLM(DIR)` load.

    DIR/config.json                the model's Hugging Face config, plus an "inflightd_engine"
                                   section (EngineDirConfig: name, dtype, limits, weights kind)
    DIR/model*.safetensors         weights in the engine dtype, or with --quantization fp8 the
                                   linear weights in FP8 beside "<name>_scale" float32 scales
                                   (absent for dummy models, which are regenerated from their
                                   shape and seed)
    DIR/tokenizer.json, ...        tokenizer files, copied when the model has them
    DIR/kernels/manifest.json      cubins per GPU arch (server.engine.gpu.kernel_store)
    DIR/kernels/<arch>/*.cubin
    DIR/tuning.json                kernel choices timed on the build GPU (server.engine.gpu.tuning)

Transformers reads config.json as usual and ignores the extra section, so the directory also
opens as a Hugging Face checkpoint when it holds weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from server.config import QUANTIZATIONS
from server.engine.models.config import ModelArchConfig
from server.engine.loading.weights import TOKENIZER_FILES, ModelSource

ENGINE_FORMAT = 1
ENGINE_SECTION = "inflightd_engine"
WEIGHTS_SAFETENSORS = "safetensors"
WEIGHTS_DUMMY = "dummy"


class EngineDirError(ValueError):
    """An engine directory is incomplete, of another format, or inconsistent."""


@dataclass(frozen=True)
class EngineDirConfig:
    model_name: str  # what the engine was built from (served under this name)
    dtype: str  # "bfloat16", "float16" or "float32"
    max_batch_size: int  # CUDA graphs are captured up to this many sequences
    max_num_tokens: int  # the largest step the engine was sized for
    max_model_len: int  # context window; graphs and kernel tuning cover it
    weights: str  # WEIGHTS_SAFETENSORS or WEIGHTS_DUMMY
    dummy_seed: int | None  # the seed dummy weights are drawn from; None for real weights
    kernel_arches: tuple[str, ...]  # e.g. ("sm_90",); empty when no cubins were built
    inflightd_version: str
    built_at: str  # ISO 8601, UTC
    format: int = ENGINE_FORMAT
    # "fp8": serve with FP8 linear layers, stored in FP8 with their scales (dummy weights:
    # quantized as they are drawn); None: none. Engines built before it existed have none.
    quantization: str | None = None

    def __post_init__(self) -> None:
        if self.weights not in (WEIGHTS_SAFETENSORS, WEIGHTS_DUMMY):
            raise EngineDirError(f"unknown weights kind {self.weights!r}")
        if (self.weights == WEIGHTS_DUMMY) != (self.dummy_seed is not None):
            raise EngineDirError("dummy_seed is set exactly when the weights are dummy")
        for name in ("max_batch_size", "max_num_tokens", "max_model_len"):
            if getattr(self, name) < 1:
                raise EngineDirError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.quantization not in (None, *QUANTIZATIONS):
            raise EngineDirError(f"unknown quantization {self.quantization!r}; rebuild the "
                                 "engine")

    def to_json(self) -> dict:
        data = asdict(self)
        data["kernel_arches"] = list(self.kernel_arches)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "EngineDirConfig":
        if data.get("format") != ENGINE_FORMAT:
            raise EngineDirError(f"engine format {data.get('format')!r} is not the format this "
                                 f"inflightd reads ({ENGINE_FORMAT}); rebuild the engine")
        try:
            return cls(**{**data, "kernel_arches": tuple(data.get("kernel_arches", ()))})
        except TypeError as exc:
            raise EngineDirError(f"engine config does not match format {ENGINE_FORMAT}: "
                                 f"{exc}") from exc


def is_engine_dir(path: Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return ENGINE_SECTION in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def write_engine_config(engine_dir: Path, hf_config: dict, config: EngineDirConfig) -> Path:
    path = Path(engine_dir) / "config.json"
    merged = {key: value for key, value in hf_config.items() if key != ENGINE_SECTION}
    merged[ENGINE_SECTION] = config.to_json()
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return path


def read_engine_config(engine_dir: Path) -> tuple[dict, EngineDirConfig]:
    """(the model's HF config without the engine section, the engine config)."""
    path = Path(engine_dir) / "config.json"
    if not path.is_file():
        raise EngineDirError(f"{engine_dir} has no config.json; is it an engine directory?")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise EngineDirError(f"{path} is not valid JSON: {exc}") from exc
    section = data.pop(ENGINE_SECTION, None)
    if section is None:
        raise EngineDirError(f"{path} has no {ENGINE_SECTION!r} section: a Hugging Face "
                             "directory, not an engine; build one with `inflightd build`")
    return data, EngineDirConfig.from_json(section)


def resolve_engine_dir(path: Path) -> tuple[ModelSource, EngineDirConfig]:
    """The ModelSource of an engine directory (its context window capped at the engine's
    max_model_len) and the engine config."""
    path = Path(path).expanduser().resolve()
    hf_config, config = read_engine_config(path)
    arch = ModelArchConfig.from_hf(hf_config)
    if config.max_model_len < arch.max_position_embeddings:
        arch = replace(arch, max_position_embeddings=config.max_model_len)
    if config.weights == WEIGHTS_SAFETENSORS and not any(path.glob("*.safetensors")):
        raise EngineDirError(f"{path} records safetensors weights but holds none; rebuild it")
    has_tokenizer = any((path / name).is_file() for name in TOKENIZER_FILES)
    source = ModelSource(
        name=config.model_name, arch=arch, hf_config=hf_config,
        weights_dir=path if config.weights == WEIGHTS_SAFETENSORS else None,
        tokenizer_dir=path if has_tokenizer else None,
        dummy_seed=config.dummy_seed or 0, engine_dir=path, quantization=config.quantization)
    return source, config
