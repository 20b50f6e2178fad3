"""Where and how a model runs: the device and dtype ("auto" resolved), and the Ops (our
kernels when they cover the model and the device has them, else the torch reference)."""

from __future__ import annotations

import logging

import torch

from server.config import ModelConfig
from server.engine.models.config import ModelArchConfig
from server.engine.ops import Ops
from server.engine.ops.torch_ref import TorchOps
from server.engine.loading.weights import ModelSource

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
logger = logging.getLogger("inflightd.engine")


def resolve_device(name: str) -> torch.device:
    """"auto": cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, *, engine_dtype: str | None = None
                  ) -> torch.dtype:
    """"auto": the engine directory's dtype on a GPU, else bfloat16 on a GPU and float32 on
    CPU (where bf16 matmuls are slow and lossy)."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return _DTYPES[engine_dtype] if engine_dtype else torch.bfloat16
    return _DTYPES[name]


def cuda_ops_unsupported_reason(arch: ModelArchConfig, dtype: torch.dtype, *,
                                max_model_len: int | None = None) -> str | None:
    """Why our kernels cannot run this model (with contexts up to max_model_len, default its
    own), or None when they can."""
    from server.engine.gpu.kernels import ATTENTION_HEAD_DIMS

    if dtype not in (torch.bfloat16, torch.float16):
        return f"the kernels take bfloat16 or float16, not {dtype}"
    if arch.head_dim not in ATTENTION_HEAD_DIMS:
        return f"the attention kernel covers head_dim {ATTENTION_HEAD_DIMS}, not {arch.head_dim}"
    # On our kernels the engine serves a windowed model within its window (their windowed
    # attention awaits its GPU tests). Where every layer slides that loses nothing a layer
    # could see; where global layers interleave (Gemma), they would lose the whole context
    # they exist for.
    context = max_model_len or arch.max_position_embeddings
    if arch.interleaves_windows and context > arch.sliding_window:
        return (f"its sliding-window layers ({arch.sliding_window} tokens) alternate with "
                "global ones, and the engine does not use windowed attention on our kernels "
                f"yet (with --max-model-len {arch.sliding_window} or less it runs on them)")
    return None


def attends_within_windows(model_config: ModelConfig, source: ModelSource) -> bool:
    """Whether the ops this model runs on compute sliding-window attention: the torch
    reference does; on our GPU kernels the engine does not yet (contexts stay within the window)."""
    device = resolve_device(model_config.device)
    engine = engine_config(source)
    dtype = resolve_dtype(model_config.dtype, device,
                          engine_dtype=engine.dtype if engine else None)
    return device.type != "cuda" or cuda_ops_unsupported_reason(
        source.arch, dtype, max_model_len=model_config.max_model_len) is not None


def default_ops(source: ModelSource, *, dtype: torch.dtype, device: torch.device,
                max_model_len: int | None = None) -> Ops:
    """CudaOps on a GPU when the kernels cover the model at contexts up to max_model_len
    (with the engine directory's cubins and tuning when there is one), else TorchOps."""
    if device.type != "cuda":
        return TorchOps()
    reason = cuda_ops_unsupported_reason(source.arch, dtype, max_model_len=max_model_len)
    if reason is not None:
        logger.warning("running the torch reference ops on %s: %s", device, reason)
        return TorchOps()
    from server.engine.gpu.kernels import KernelLibrary, device_arch
    from server.engine.gpu.nvrtc import NvrtcUnavailableError
    from server.engine.ops.cuda import CudaOps

    if source.engine_dir is None:
        try:
            library = KernelLibrary(device)
            library.load_all()
        except (ImportError, NvrtcUnavailableError) as exc:
            logger.warning("running the torch reference ops on %s, without CUDA graphs: our "
                           "kernels cannot be built here (%s); pip install 'inflightd[gpu]' "
                           "and the CUDA toolkit headers, or serve an engine directory",
                           device, exc)
            return TorchOps()
        return CudaOps(library)
    from server.engine.gpu.kernel_store import load_cubins
    from server.engine.gpu.tuning import TunedCudaOps, load_tuning

    arch = device_arch(device)
    library = KernelLibrary(device, cubins=load_cubins(source.engine_dir, arch))
    library.load_all()
    tuning = load_tuning(source.engine_dir, arch)
    return CudaOps(library) if tuning is None else TunedCudaOps(library, tuning)


def is_cuda_ops(ops: Ops) -> bool:
    from server.engine.ops.cuda import CudaOps

    return isinstance(ops, CudaOps)


def engine_config(source: ModelSource):
    """The EngineDirConfig when the model is an engine directory, else None."""
    if source.engine_dir is None:
        return None
    from server.engine.loading.engine_dir import read_engine_config

    return read_engine_config(source.engine_dir)[1]
