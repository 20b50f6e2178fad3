"""GPU tests: our kernels against TorchOps. Skipped, with the reason shown, where torch sees
no CUDA device; everything else (a missing cuda.core, a kernel that fails) fails loudly."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _needs_gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU: torch.cuda.is_available() is False")


@pytest.fixture(scope="session")
def library():
    from server.engine.gpu.kernels import KernelLibrary

    lib = KernelLibrary(torch.device("cuda", torch.cuda.current_device()))
    lib.load_all()
    return lib


@pytest.fixture(scope="session")
def cuda_ops(library):
    from server.engine.ops.cuda import CudaOps

    return CudaOps(library)


@pytest.fixture(scope="session")
def torch_ops():
    from server.engine.ops.torch_ref import TorchOps

    return TorchOps()
