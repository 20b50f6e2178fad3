"""Weight prefetch into L2 (ops/cuda_prefetch.py, csrc/prefetch.cu): which launches it makes,
over which bytes, when it is on, and where a decoder layer asks for it. The kernel itself
runs in tests/gpu/test_weight_prefetch.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.llm import LLM
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import Fp8Weight
from server.engine.ops.cuda import CudaOps
from server.engine.ops.cuda_prefetch import (PREFETCH_CHUNK_BYTES, PREFETCH_ENV,
                                             PREFETCH_MAX_BYTES, PREFETCH_MAX_TOKENS,
                                             prefetch_enabled, prefetch_range)
from server.engine.ops.torch_ref import TorchOps
from server.scheduler.request import SamplingParams
from tests.unit.test_kernel_launch_args import RecordingLibrary


def hopper_ops(**kwargs) -> tuple[CudaOps, RecordingLibrary]:
    lib = RecordingLibrary(arch="sm_90", programmatic_launch=True)
    return CudaOps(lib, prefetch_weights=True, **kwargs), lib


def test_prefetch_spreads_the_head_of_a_large_weight_over_one_warp_ctas():
    ops, lib = hopper_ops()
    weight = torch.empty((8192, 2048), dtype=torch.bfloat16)  # 32 MiB
    ops.prefetch(weight, 1)
    chunks = PREFETCH_MAX_BYTES // PREFETCH_CHUNK_BYTES  # 256 chunks, 132 SMs: 2 a CTA
    assert lib.launches == [("prefetch", "prefetch_l2", (chunks // 2,), (32,),
                             (weight.data_ptr(), np.int64(PREFETCH_MAX_BYTES),
                              np.int32(PREFETCH_CHUNK_BYTES), np.int32(2)))]


def test_prefetch_takes_a_small_weight_whole_in_one_cta():
    ops, lib = hopper_ops()
    weight = torch.empty((100, 72), dtype=torch.float16)  # 14,400 bytes
    ops.prefetch(weight, 1)
    ((_module, _function, grid, block, args),) = lib.launches
    assert (grid, block) == ((1,), (32,))
    assert args == (weight.data_ptr(), 14_400, PREFETCH_CHUNK_BYTES, 1)


def test_every_chunk_falls_to_exactly_one_thread():
    ops, lib = hopper_ops()
    for rows in (1, 31, 64, 200, 4096, 8192):
        lib.launches.clear()
        weight = torch.empty((rows, 2048), dtype=torch.bfloat16)
        ops.prefetch(weight, 1)
        ((_module, _function, (ctas,), _block, (_address, num_bytes, chunk, per_cta)),) = \
            lib.launches
        num_chunks = -(-int(num_bytes) // int(chunk))
        assert ctas <= lib.num_sms and int(per_cta) <= 32
        assert (ctas - 1) * int(per_cta) < num_chunks <= ctas * int(per_cta)


def test_prefetch_range_never_reaches_outside_an_unaligned_tensor():
    base = torch.empty(1000, dtype=torch.bfloat16)
    view = base[3:]  # starts 6 bytes into a 16-byte granule
    address, num_bytes = prefetch_range(view)
    assert address % 16 == 0 and num_bytes % 16 == 0
    assert view.data_ptr() <= address
    assert address + num_bytes <= view.data_ptr() + view.numel() * 2
    assert prefetch_range(view, max_bytes=8) == (address, 0)


def test_prefetch_reads_the_codes_of_fp8_and_integer_weights_not_their_scales():
    ops, lib = hopper_ops()
    fp8 = Fp8Weight.empty(64, 128, device="cpu")
    int4 = IntWeight(qweight=torch.zeros((64, 64), dtype=torch.uint8),
                     scales=torch.ones((64, 1), dtype=torch.bfloat16),
                     zeros=torch.full((64, 1), 8, dtype=torch.bfloat16), bits=4,
                     group_size=128)
    ops.prefetch(fp8, 1)
    ops.prefetch(int4, 1)
    assert [launch[4][:2] for launch in lib.launches] == [
        (fp8.data.data_ptr(), 64 * 128), (int4.qweight.data_ptr(), 64 * 64)]


def test_prefetch_skips_steps_of_many_tokens():
    ops, lib = hopper_ops()
    ops.prefetch(torch.empty((64, 64), dtype=torch.bfloat16), PREFETCH_MAX_TOKENS + 1)
    assert lib.launches == []


def test_prefetch_is_off_by_default_before_hopper_and_without_programmatic_launch(monkeypatch):
    monkeypatch.delenv(PREFETCH_ENV, raising=False)
    assert not prefetch_enabled("sm_90", True)
    monkeypatch.setenv(PREFETCH_ENV, "1")
    assert prefetch_enabled("sm_90", True)
    assert prefetch_enabled("sm_90a", True)
    assert not prefetch_enabled("sm_80", True)
    assert not prefetch_enabled("sm_90", False)
    assert not prefetch_enabled("sm_90", True, requested=False)
    lib = RecordingLibrary(arch="sm_80")
    CudaOps(lib).prefetch(torch.empty((64, 64), dtype=torch.bfloat16), 1)
    assert lib.launches == []


def test_a_bad_prefetch_setting_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(PREFETCH_ENV, "sometimes")
    with pytest.raises(KernelArgumentError, match=PREFETCH_ENV):
        prefetch_enabled("sm_90", True)


def test_prefetch_refuses_a_weight_it_cannot_take_as_one_range():
    ops, _lib = hopper_ops()
    with pytest.raises(KernelArgumentError, match="contiguous"):
        ops.prefetch(torch.empty((64, 64), dtype=torch.bfloat16).t(), 1)


def record_op_order(monkeypatch) -> list[tuple[str, int | None]]:
    """Patches TorchOps so every call is logged as (op, id of its weight argument or None)."""
    calls: list[tuple[str, int | None]] = []
    names = ("prefetch", "linear", "linear_gelu", "linear_silu_and_mul", "rms_norm",
             "add_rms_norm", "layer_norm", "add_layer_norm", "rope_and_cache", "attention")
    for name in names:
        original = getattr(TorchOps, name)

        def logged(self, *args, _original=original, _name=name, **kwargs):
            weight = args[1] if _name in ("linear", "linear_gelu", "linear_silu_and_mul") \
                else args[0] if _name == "prefetch" else None
            calls.append((_name, None if weight is None else id(weight)))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(TorchOps, name, logged)
    return calls


GEMVS = {"linear", "linear_gelu", "linear_silu_and_mul"}
SMALL_KERNELS = {"rms_norm", "add_rms_norm", "layer_norm", "add_layer_norm", "rope_and_cache",
                 "attention"}


@pytest.mark.parametrize("shape", ["tiny-llama3", "gpt2-tiny"])
def test_each_gemv_weight_is_prefetched_before_the_small_kernels_ahead_of_it(monkeypatch,
                                                                              shape):
    llm = LLM(f"dummy:{shape}", device="cpu", kv_cache_tokens=1024)
    calls = record_op_order(monkeypatch)
    llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    layer = llm.engine.runner.model.layers[1]
    decode = calls[len(calls) // 2:]  # the second step's calls: one decode token
    for weight in (layer.qkv_weight, layer.o_weight, layer.gate_up_weight):
        asked = decode.index(("prefetch", id(weight)))
        used = next(i for i, (name, seen) in enumerate(decode)
                    if seen == id(weight) and name in GEMVS)
        # | GEMV before | prefetch | norms, cache write, attention | this GEMV |
        previous = max(i for i, (name, _) in enumerate(decode[:used]) if name in GEMVS)
        small = [i for i in range(previous + 1, used) if decode[i][0] in SMALL_KERNELS]
        assert small, (shape, decode[previous:used])
        assert previous < asked < small[0], (shape, decode[previous:used])
