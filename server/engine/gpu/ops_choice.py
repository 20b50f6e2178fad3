"""Where and how a model runs: the device and dtype ("auto" resolved), and the Ops (our
kernels when they cover the model and the device has them, else the torch reference)."""

from __future__ import annotations

import logging

import torch

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


def cuda_ops_unsupported_reason(arch: ModelArchConfig, dtype: torch.dtype) -> str | None:
    """Why our kernels cannot run this model, or None when they can."""
    from server.engine.gpu.kernels import ATTENTION_HEAD_DIMS

    if dtype not in (torch.bfloat16, torch.float16):
        return f"the kernels take bfloat16 or float16, not {dtype}"
    if arch.head_dim not in ATTENTION_HEAD_DIMS:
        return f"the attention kernel covers head_dim {ATTENTION_HEAD_DIMS}, not {arch.head_dim}"
    return None


def default_ops(source: ModelSource, *, dtype: torch.dtype, device: torch.device) -> Ops:
    """CudaOps on a GPU when the kernels cover the model (with the engine directory's cubins
    and tuning when there is one), else TorchOps."""
    if device.type != "cuda":
        return TorchOps()
    reason = cuda_ops_unsupported_reason(source.arch, dtype)
    if reason is not None:
        logger.warning("running the torch reference ops on %s: %s", device, reason)
        return TorchOps()
    from server.engine.gpu.kernels import KernelLibrary, device_arch
    from server.engine.gpu.nvrtc import NvrtcUnavailableError
    from server.engine.ops.cuda import CudaOps

    head_dims = (source.arch.head_dim,)  # covered: checked above
    if source.engine_dir is None:
        try:
            library = KernelLibrary(device)
            library.load_all(head_dims=head_dims)
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
    library.load_all(head_dims=head_dims)
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
