"""`inflightd build MODEL --output DIR`: an engine directory (layout: server/engine/loading/engine_dir.py).

Steps, each a tick of the progress bar:
    weights     HF checkpoints: safetensors in the engine dtype, in shards of up to 4 GiB.
                Dummy models: nothing; their shape and seed are recorded and the weights
                are drawn again at load time (an 8B model would be 16 GB of random bytes).
    tokenizer   tokenizer and generation-config files, copied when the model has them
    kernels     cubins of the csrc/ modules the model needs (attention's of its head_dim only)
                for each arch: --arch (NVRTC needs no GPU), else the GPU's, else none
    tuning      kernel choices timed on the GPU (server/engine/gpu/tuning.py); without a GPU, or
                for a model the kernels do not cover, an empty tuning.json
    config      config.json with the engine section, written last
The directory is built beside DIR under a temporary name and renamed into place when
complete, so an interrupted build never leaves a directory that looks like an engine.

`ensure_engine_dir` builds into the cache ($INFLIGHTD_CACHE/engines/<key>) once per model,
dtype, limits, GPU arch and kernel sources: what `inflightd serve MODEL` does on a GPU.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from server.engine.loading.default_model import cache_root
from server.engine.loading.staging import staged_directory
from server.engine.loading.engine_dir import (WEIGHTS_DUMMY, WEIGHTS_SAFETENSORS, EngineDirConfig,
                                      is_engine_dir, write_engine_config)
from server.engine.gpu.kernel_store import save_cubins
from server.engine.gpu.kernels import ATTENTION_HEAD_DIMS, MODULES, compile_all
from server.engine.gpu.nvrtc import source_hash
from server.config import QUANTIZATIONS
from server.engine.models.quantization import quantize_checkpoint, stored_layout
from server.engine.gpu.ops_choice import cuda_ops_unsupported_reason
from server.engine.gpu.tuning import save_tuning
from server.engine.loading.weights import TOKENIZER_FILES, ModelSource, iter_weights, resolve_model

SHARD_BYTES = 4 << 30
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
COPIED_FILES = (*TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json", "vocab.json",
                "merges.txt", "chat_template.jinja", "chat_template.json",
                "generation_config.json")
DEFAULT_MAX_BATCH_SIZE = 256
DEFAULT_MAX_NUM_TOKENS = 8192
_ARCH_PATTERN = re.compile(r"sm_\d{2,3}a?")


class BuildError(ValueError):
    """The build cannot start or finish with these options."""


@dataclass(frozen=True)
class BuildOptions:
    model: str
    output: Path
    dtype: str = "auto"  # auto: bfloat16, the dtype the kernels and GPUs run best
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS
    max_model_len: int | None = None  # None: the model's context window
    arches: tuple[str, ...] = ()  # empty: this GPU's arch, none without a GPU
    tune: bool = True
    force: bool = False  # replace an existing output directory
    block_size: int = 16  # the KV block size the kernels are timed with
    # "fp8": linear weights stored and served in FP8; "int8_wo" / "int4_wo": stored in the
    # engine dtype, rounded to integers as the engine loads them
    quantization: str | None = None

    def __post_init__(self) -> None:
        if self.quantization not in (None, *QUANTIZATIONS):
            raise BuildError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, "
                             f"got {self.quantization!r}")
        if self.dtype not in ("auto", *DTYPES):
            raise BuildError(f"--dtype must be auto, {', '.join(DTYPES)}; got {self.dtype!r}")
        for name in ("max_batch_size", "max_num_tokens"):
            if getattr(self, name) < 1:
                raise BuildError(f"--{name.replace('_', '-')} must be >= 1")
        for arch in self.arches:
            if not _ARCH_PATTERN.fullmatch(arch):
                raise BuildError(f"--arch takes names like sm_90 or sm_90a, got {arch!r}")

    @property
    def dtype_name(self) -> str:
        return "bfloat16" if self.dtype == "auto" else self.dtype


def build_engine(options: BuildOptions, *, progress: bool = True,
                 cache_dir: Path | None = None) -> Path:
    """Builds the engine directory options.output; returns its path."""
    output = Path(options.output).expanduser().resolve()
    if is_engine_dir(Path(options.model).expanduser()):
        raise BuildError(f"{options.model} is already an engine directory")
    if output.exists() and not options.force:
        raise BuildError(f"{output} already exists; pass --force to replace it")
    source = resolve_model(options.model, cache_dir=cache_dir)
    if source.packed_format is not None:
        raise BuildError(f"{options.model} is a quantized checkpoint "
                         f"({source.packed_format.method}), which an engine directory would "
                         f"hold dequantized: serve it as it is (`inflightd serve "
                         f"{options.model}`)")
    max_model_len = _max_model_len(options, source)
    arches = options.arches or _gpu_arches()
    with staged_directory(output) as staging:
        steps = [("weights", lambda: _write_weights(source, staging, DTYPES[options.dtype_name],
                                                    options.quantization)),
                 ("tokenizer", lambda: copy_tokenizer_files(source, staging))]
        head_dims = model_head_dims(source)
        steps += [(f"kernels {arch}", lambda arch=arch: save_cubins(
                       staging, arch, compile_all(arch, head_dims=head_dims)))
                  for arch in arches]
        steps += [("tuning", lambda: _tune(source, staging, options, arches, max_model_len)),
                  ("config", lambda: _write_config(source, staging, options, arches,
                                                   max_model_len))]
        with tqdm(total=len(steps), desc=f"building {source.name}", unit="step",
                  file=sys.stderr, disable=not progress) as bar:
            for label, step in steps:
                bar.set_postfix_str(label)
                step()
                bar.update(1)
    return output


def model_head_dims(source: ModelSource) -> tuple[int, ...]:
    """The head dims whose attention kernels the model runs on: its own, or none where the
    kernels do not cover it (it runs on the torch reference ops)."""
    head_dim = source.arch.head_dim
    return (head_dim,) if head_dim in ATTENTION_HEAD_DIMS else ()


def _max_model_len(options: BuildOptions, source: ModelSource) -> int:
    model_len = source.arch.max_position_embeddings
    if options.max_model_len is None:
        return model_len
    if not 1 <= options.max_model_len <= model_len:
        raise BuildError(f"--max-model-len must be between 1 and the model's context window "
                         f"({model_len}), got {options.max_model_len}")
    return options.max_model_len


def _gpu_arches() -> tuple[str, ...]:
    if not torch.cuda.is_available():
        return ()
    from server.engine.gpu.kernels import device_arch

    return (device_arch(torch.device("cuda", torch.cuda.current_device())),)


def _write_weights(source: ModelSource, out_dir: Path, dtype: torch.dtype,
                   quantization: str | None) -> None:
    """Shards planned from the tensor sizes first, so file names can say "of N"."""
    if source.weights_dir is None:
        return  # dummy weights: the engine config records the shape and the seed
    layout = stored_layout(source.arch, dtype=dtype, quantization=quantization)
    sizes = {name: stored.itemsize * _numel(shape) for name, (shape, stored) in layout.items()}
    shard_of: dict[str, int] = {}
    shard, filled = 0, 0
    for name, size in sizes.items():
        if filled and filled + size > SHARD_BYTES:
            shard, filled = shard + 1, 0
        shard_of[name], filled = shard, filled + size
    num_shards = shard + 1
    names = (["model.safetensors"] if num_shards == 1 else
             [f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)])
    tensors_in_shard = Counter(shard_of.values())
    pending: dict[str, torch.Tensor] = {}
    weights = iter_weights(source, dtype=dtype, device="cpu")
    for name, tensor in quantize_checkpoint(weights) if quantization == "fp8" else weights:
        pending[name] = tensor.contiguous()
        if len(pending) == tensors_in_shard[shard_of[name]]:
            save_file(pending, str(out_dir / names[shard_of[name]]), metadata={"format": "pt"})
            pending = {}
    if num_shards > 1:
        index = {"metadata": {"total_size": sum(sizes.values())},
                 "weight_map": {name: names[i] for name, i in shard_of.items()}}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def copy_tokenizer_files(source: ModelSource, out_dir: Path) -> None:
    """The tokenizer, chat template and generation config files the model has, into
    out_dir (also what `inflightd quantize` writes beside its weights)."""
    for directory in {d for d in (source.tokenizer_dir, source.weights_dir) if d is not None}:
        for name in COPIED_FILES:
            if (directory / name).is_file() and not (out_dir / name).exists():
                shutil.copy2(directory / name, out_dir / name)


def _tune(source: ModelSource, out_dir: Path, options: BuildOptions,
          arches: tuple[str, ...], max_model_len: int) -> None:
    """Times kernel choices when this machine's GPU is one of the built arches."""
    dtype = DTYPES[options.dtype_name]
    tuning = None
    gpu_arch = _gpu_arches()
    if (options.tune and gpu_arch and gpu_arch[0] in arches
            and cuda_ops_unsupported_reason(source.arch, dtype) is None):
        from server.engine.gpu.kernel_store import load_cubins
        from server.engine.gpu.kernels import KernelLibrary
        from server.engine.gpu.tune_decode_bulk import tune_decode_bulk
        from server.engine.gpu.tuning import tune_decode_partitions

        library = KernelLibrary(cubins=load_cubins(out_dir, gpu_arch[0]))
        shape = dict(num_heads=source.arch.num_heads, num_kv_heads=source.arch.num_kv_heads,
                     head_dim=source.arch.head_dim, dtype=dtype, block_size=options.block_size,
                     max_model_len=max_model_len)
        tuning = tune_decode_partitions(library, **shape)
        tuning = replace(tuning, decode_bulk=tune_decode_bulk(library, tuning, **shape))
        torch.cuda.empty_cache()
    save_tuning(out_dir, tuning)


def _write_config(source: ModelSource, out_dir: Path, options: BuildOptions,
                  arches: tuple[str, ...], max_model_len: int) -> None:
    dummy = source.weights_dir is None
    config = EngineDirConfig(
        model_name=source.name, dtype=options.dtype_name,
        max_batch_size=options.max_batch_size, max_num_tokens=options.max_num_tokens,
        max_model_len=max_model_len, weights=WEIGHTS_DUMMY if dummy else WEIGHTS_SAFETENSORS,
        dummy_seed=source.dummy_seed if dummy else None, kernel_arches=tuple(arches),
        inflightd_version=_version(), built_at=datetime.now(timezone.utc).isoformat(),
        quantization=options.quantization)
    write_engine_config(out_dir, source.hf_config, config)


def _version() -> str:
    try:
        return importlib_metadata.version("inflightd")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def engine_cache_key(source: ModelSource, options: BuildOptions) -> str:
    """Changes whenever anything the engine directory is made from changes."""
    weights: object = {"dummy_seed": source.dummy_seed}
    if source.weights_dir is not None:
        files = sorted(p for p in source.weights_dir.iterdir()
                       if p.suffix in (".safetensors", ".json"))
        weights = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    identity = {
        "model": source.name, "weights_dir": str(source.weights_dir), "weights": weights,
        "dtype": options.dtype_name, "max_batch_size": options.max_batch_size,
        "max_num_tokens": options.max_num_tokens, "max_model_len": options.max_model_len,
        "arches": list(options.arches), "version": _version(),
        "kernels": {m.name: source_hash(m.name) for m in MODULES}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def ensure_engine_dir(model: str, *, dtype: str = "auto",
                      max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                      max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS,
                      max_model_len: int | None = None, cache_dir: Path | None = None,
                      progress: bool = True) -> Path:
    """`model` itself when it is an engine directory or a quantized checkpoint; else its
    engine in the cache, built on first use for this machine's GPU (concurrent callers
    build it once)."""
    if is_engine_dir(Path(model).expanduser()):
        return Path(model).expanduser()
    source = resolve_model(model, cache_dir=cache_dir)
    if source.packed_format is not None:  # its integers, as stored (build_engine says why)
        return Path(model).expanduser()
    engines = cache_root(cache_dir) / "engines"
    options = BuildOptions(model=model, output=engines, dtype=dtype,
                           max_batch_size=max_batch_size, max_num_tokens=max_num_tokens,
                           max_model_len=max_model_len, arches=_gpu_arches(), force=True)
    target = engines / engine_cache_key(source, options)[:24]
    if is_engine_dir(target):
        return target
    engines.mkdir(parents=True, exist_ok=True)
    with open(engines / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        if not is_engine_dir(target):
            build_engine(replace(options, output=target), progress=progress,
                         cache_dir=cache_dir)
    return target


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `inflightd build` to the CLI."""
    build = subparsers.add_parser(
        "build", help="compile a model into an engine directory",
        description="Write an engine directory (weights in the engine dtype, compiled "
                    "kernels, kernel choices timed on this GPU) that `inflightd serve DIR` "
                    "loads without compiling.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    build.add_argument("model", metavar="MODEL",
                       help="HF directory, dummy:<shape>, or the default model's name")
    build.add_argument("--output", "-o", type=Path, required=True, help="engine directory")
    build.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                       help="weights and kernels dtype (auto: bfloat16)")
    build.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                       help="most sequences per step; decode graphs cover up to here")
    build.add_argument("--max-num-tokens", type=int, default=DEFAULT_MAX_NUM_TOKENS,
                       help="most tokens per step")
    build.add_argument("--max-model-len", type=int, default=None,
                       help="context window (default: the model's)")
    build.add_argument("--arch", action="append", dest="arches", default=None, metavar="SM",
                       help="compile kernels for this arch, e.g. sm_90 (repeatable; "
                            "default: this GPU's, none without a GPU)")
    build.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                       help="fp8: linear weights stored in FP8 with per-channel scales, "
                            "activations quantized per token; int8_wo, int4_wo: weights "
                            "rounded to 8- or 4-bit integers as the engine loads; w8a8: int8 "
                            "weights and per-token int8 activations; default: none")
    build.add_argument("--no-tune", action="store_true", help="skip timing kernel choices")
    build.add_argument("--force", action="store_true", help="replace an existing DIR")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from server.engine.gpu.nvrtc import KernelCompileError, NvrtcUnavailableError

    try:
        options = BuildOptions(
            model=args.model, output=args.output, dtype=args.dtype,
            max_batch_size=args.max_batch_size, max_num_tokens=args.max_num_tokens,
            max_model_len=args.max_model_len, arches=tuple(args.arches or ()),
            tune=not args.no_tune, force=args.force, quantization=args.quantization)
        path = build_engine(options)
    except (ValueError, NvrtcUnavailableError) as exc:
        print(f"inflightd build: error: {exc}", file=sys.stderr)
        return 2
    except KernelCompileError as exc:
        print(f"inflightd build: kernel compile failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m server.engine.loading.build MODEL --output DIR ...`, the same as `inflightd build`."""
    parser = argparse.ArgumentParser(prog="inflightd")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["build", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
