"""Compiles csrc/ kernels to cubins with NVRTC (through cuda.core), with an on-disk cache.

Nothing here needs a GPU: NVRTC only needs its library and the CUDA toolkit's headers
(cuda_bf16.h, cuda_fp16.h), so CI compiles every kernel for sm_90 on a CPU-only machine.
Cubins are cached under $INFLIGHTD_CACHE/kernels (default ~/.cache/inflightd/kernels), keyed
by a hash of everything that decides their bytes: the source and every csrc/ header, the
options, the target arch, the NVRTC version and the header directory.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

CSRC_DIR = Path(__file__).resolve().parents[3] / "csrc"
_HEADERS_NEEDED = ("cuda_bf16.h", "cuda_fp16.h")


class NvrtcUnavailableError(RuntimeError):
    """The NVRTC library or the CUDA headers cannot be found on this machine."""


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel source; the message carries the compiler log."""


@dataclass(frozen=True)
class CompiledKernel:
    cubin: bytes
    log: str  # ptxas -v report: registers, shared memory, stack and spills per kernel


def find_cuda_include_dir() -> Path:
    """The toolkit header directory: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, then the
    include directories of NVIDIA's pip wheels (nvidia-cuda-runtime and friends)."""
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    candidates.extend(_wheel_include_dirs())
    for candidate in candidates:
        if all((candidate / header).is_file() for header in _HEADERS_NEEDED):
            return candidate
    searched = ", ".join(str(c) for c in candidates) or "nothing"
    raise NvrtcUnavailableError(
        f"no CUDA include directory with {' and '.join(_HEADERS_NEEDED)} found (searched "
        f"{searched}); set CUDA_HOME to the toolkit, or pip install nvidia-cuda-runtime")


def _wheel_include_dirs() -> list[Path]:
    dirs: list[Path] = []
    for entry in sys.path:
        nvidia = Path(entry or ".") / "nvidia"
        if nvidia.is_dir():
            dirs.extend(sorted(nvidia.glob("*/include")))
    return dirs


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library, loading it if needed."""
    try:
        from cuda.bindings import nvrtc
        result, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # ImportError, or cuda.pathfinder's "library not found"
        raise NvrtcUnavailableError(
            f"the NVRTC library cannot be loaded ({exc}); install the CUDA toolkit or "
            "pip install nvidia-cuda-nvrtc") from exc
    if int(result) != 0:
        raise NvrtcUnavailableError(f"nvrtcVersion failed with {result}")
    return int(major), int(minor)


def default_cache_dir() -> Path:
    root = os.environ.get("INFLIGHTD_CACHE") or Path.home() / ".cache" / "inflightd"
    return Path(root) / "kernels"


def source_hash(module: str, csrc_dir: Path = CSRC_DIR) -> str:
    """Hash of a module's source and every csrc header (any of them may be included)."""
    digest = hashlib.sha256()
    paths = [csrc_dir / f"{module}.cu", *sorted(csrc_dir.glob("*.cuh"))]
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def compile_module(module: str, *, arch: str, fast_math: bool, csrc_dir: Path = CSRC_DIR,
                   cache_dir: Path | None = None) -> CompiledKernel:
    """Compiles csrc/<module>.cu for `arch` (e.g. "sm_90"), from the cache when it can."""
    include_dir = find_cuda_include_dir()
    major, minor = nvrtc_version()
    options = _options_key(arch=arch, fast_math=fast_math)
    key = hashlib.sha256("\n".join((
        source_hash(module, csrc_dir), options, f"nvrtc {major}.{minor}", str(include_dir),
    )).encode()).hexdigest()
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    cubin_path = cache / f"{module}-{arch}-{key[:24]}.cubin"
    log_path = cubin_path.with_suffix(".log")
    if cubin_path.is_file():
        log = log_path.read_text() if log_path.is_file() else ""
        return CompiledKernel(cubin=cubin_path.read_bytes(), log=log)
    compiled = _nvrtc_compile(csrc_dir / f"{module}.cu", arch=arch, fast_math=fast_math,
                              include_dirs=(str(csrc_dir), str(include_dir)))
    _write_atomic(cubin_path, compiled.cubin)
    _write_atomic(log_path, compiled.log.encode())
    return compiled


def _options_key(*, arch: str, fast_math: bool) -> str:
    return f"arch={arch} std=c++17 fast_math={fast_math} ptxas=-v"


def _nvrtc_compile(path: Path, *, arch: str, fast_math: bool,
                   include_dirs: tuple[str, ...]) -> CompiledKernel:
    from cuda.core import Program, ProgramOptions

    options = ProgramOptions(name=path.name, arch=arch, std="c++17",
                             include_path=list(include_dirs), use_fast_math=fast_math,
                             ptxas_options=["-v"])
    log = io.StringIO()
    try:
        obj = Program(path.read_text(), "c++", options).compile("cubin", logs=log)
    except Exception as exc:
        if "NVRTC_ERROR" in str(exc):
            raise KernelCompileError(f"{path.name} failed to compile for {arch}:\n{exc}") from exc
        raise NvrtcUnavailableError(f"NVRTC could not run: {exc}") from exc
    return CompiledKernel(cubin=bytes(obj.code), log=log.getvalue().replace("\x00", ""))


@dataclass(frozen=True)
class KernelResources:
    """One kernel's lines of a ptxas -v report."""

    registers: int = 0
    smem_bytes: int = 0
    stack_bytes: int = 0
    spill_store_bytes: int = 0


def kernel_resources(log: str) -> dict[str, KernelResources]:
    """{kernel: its registers, static shared memory, stack and spills} from ptxas -v."""
    found: dict[str, KernelResources] = {}
    current = None
    for line in log.splitlines():
        entry = re.search(r"Compiling entry function '([^']+)'", line)
        if entry:
            current = entry.group(1)
            found[current] = KernelResources()
        elif current is None:
            continue
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line)
        if frame:
            found[current] = replace(found[current], stack_bytes=int(frame.group(1)),
                                     spill_store_bytes=int(frame.group(2)))
        used = re.search(r"Used (\d+) registers", line)
        if used:
            # no "bytes smem" where the kernel declares no static shared memory
            smem = re.search(r"(\d+) bytes smem", line)
            found[current] = replace(found[current], registers=int(used.group(1)),
                                     smem_bytes=int(smem.group(1)) if smem else 0)
    return found


def spilled_kernels(log: str) -> list[str]:
    """Kernels whose ptxas report shows a stack frame or spills (slow local memory)."""
    return [name for name, usage in kernel_resources(log).items()
            if usage.stack_bytes or usage.spill_store_bytes]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
