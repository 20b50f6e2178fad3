"""KernelLibrary on a real GPU: prebuilt cubins from an engine directory, and launches
ordered on torch's current stream."""

from __future__ import annotations

import torch

from server.engine.gpu.kernel_store import load_cubins, save_cubins
from server.engine.gpu.kernels import KernelLibrary, compile_all
from server.engine.ops.cuda_launch import rms_norm_into
from tests.gpu.helpers import assert_close, cuda_generator, poisoned, random_tensor


def test_library_runs_cubins_loaded_from_an_engine_directory(library, torch_ops, tmp_path):
    save_cubins(tmp_path, library.arch, compile_all(library.arch))
    prebuilt = KernelLibrary(library.device, cubins=load_cubins(tmp_path, library.arch))
    gen = cuda_generator(21)
    x = random_tensor((8, 1024), dtype=torch.bfloat16, generator=gen)
    weight = random_tensor((1024,), dtype=torch.bfloat16, generator=gen)
    out = poisoned((8, 1024), dtype=torch.bfloat16)
    rms_norm_into(prebuilt, out, x, weight, 1e-6)
    assert_close(out, torch_ops.rms_norm(x, weight, 1e-6), what="rms_norm from engine cubins")


def test_kernels_run_after_earlier_work_on_the_current_side_stream(library, torch_ops):
    # The kernel must wait for the copy queued before it on the same (non-default) stream;
    # launched on any other stream it would read x before the delayed copy lands.
    gen = cuda_generator(22)
    source = random_tensor((64, 4096), dtype=torch.float16, generator=gen)
    weight = random_tensor((4096,), dtype=torch.float16, generator=gen)
    x = poisoned((64, 4096), dtype=torch.float16)
    out = poisoned((64, 4096), dtype=torch.float16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # tens of milliseconds of GPU time
        x.copy_(source)
        rms_norm_into(library, out, x, weight, 1e-6)
    side.synchronize()
    assert_close(out, torch_ops.rms_norm(source, weight, 1e-6), what="rms_norm after a delay")
