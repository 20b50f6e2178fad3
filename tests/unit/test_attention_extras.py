"""Soft-capping and ALiBi on our attention kernels, on the CPU: which kernels the calls
launch (the "_extras" builds, csrc/attention_scores.cuh), with which score constants, which
mistakes are refused before a launch, and which models the runner now puts on our kernels.
The numbers themselves are checked on a GPU (tests/gpu/test_paged_attention_kernel.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.gpu.ops_choice import cuda_ops_unsupported_reason
from server.engine.loading.dummy import dummy_hf_config
from server.engine.models.alibi import alibi_slopes
from server.engine.models.config import ModelArchConfig
from server.engine.ops.cuda import CudaOps
from server.engine.ops.cuda_attention import paged_attention_into, plan_for
from server.engine.ops.cuda_attention_scores import LOG2_E, AttentionExtrasError
from tests.unit.test_kernel_launch_args import RecordingLibrary, attention_metadata, bf16


def score_args(launch) -> tuple:
    """(scale_log2, alibi_slopes, cap_in, cap_out, window): the launch's arguments before
    num_partitions, min_rows and max_rows."""
    return launch[4][-8:-3]


def mixed_inputs(kv_dtype=torch.bfloat16):
    metadata = attention_metadata([1, 6, 40], [300, 306, 340], width=30)  # 1-, 2-, 4-warp rows
    q = bf16(47, 32, 128)
    kv_cache = torch.zeros((2, 100, 16, 8, 128), dtype=kv_dtype)
    return q, kv_cache, metadata


@pytest.mark.parametrize("kv_dtype, module, infix, decode", (
    (torch.bfloat16, "paged_attention_d128", "", "w1k2"),
    (torch.float8_e4m3fn, "paged_attention_fp8_d128", "_kvfp8", "w1tk2")))  # transposed decodes
def test_softcap_and_alibi_launch_the_extras_kernel_of_every_row_class(kv_dtype, module, infix,
                                                                        decode):
    lib = RecordingLibrary()
    q, kv_cache, metadata = mixed_inputs(kv_dtype)
    slopes = alibi_slopes(32, bias_max=8.0)
    plan = paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088,
                                softcap=50.0, alibi_slopes=slopes, decode_key_split=2)
    assert all(launch.extras for launch in plan.launches)
    names = [function for _, function, _, _, _ in lib.launches]
    assert names == [f"paged_attention_bf16{infix}_d128_{v}_extras" for v in (decode, "w2", "w4")]
    assert {m for m, _, _, _, _ in lib.launches} == {module}
    # the plan is sized by the occupancy of the kernels it launches
    assert all(name.endswith("_extras") for name in lib.occupancy_queries)
    scale_log2, slopes_ptr, cap_in, cap_out, window = score_args(lib.launches[0])
    assert slopes_ptr == slopes.data_ptr() and window == 0
    assert scale_log2 == np.float32(0.088 * LOG2_E)
    assert cap_in == np.float32(2 * 0.088 * LOG2_E / 50.0)
    assert cap_out == np.float32(50.0 * LOG2_E)
    # tanh(z) = 1 - 2 / (e^(2z) + 1): the kernel's arithmetic, in float64
    z = 3.7
    capped = cap_out * (1 - 2 / (2 ** (z / 0.088 * cap_in) + 1))
    assert math.isclose(capped, 50.0 * math.tanh(z / 50.0) * LOG2_E, rel_tol=1e-6)


def test_plain_attention_keeps_the_plain_kernels_and_passes_no_extras():
    lib = RecordingLibrary()
    q, kv_cache, metadata = mixed_inputs()
    paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088)
    assert not any(function.endswith("_extras") for _, function, _, _, _ in lib.launches)
    for launch in lib.launches:
        assert score_args(launch)[1:] == (0, np.float32(0), np.float32(0), np.int32(0))


@pytest.mark.parametrize("softcap, slopes", ((30.0, None), (None, "slopes")))
def test_either_extra_alone_runs_the_extras_kernel(softcap, slopes):
    lib = RecordingLibrary()
    q, kv_cache, metadata = mixed_inputs()
    slopes = alibi_slopes(32, bias_max=8.0) if slopes else None
    paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088,
                         softcap=softcap, alibi_slopes=slopes)
    assert all(function.endswith("_extras") for _, function, _, _, _ in lib.launches)
    _, slopes_ptr, cap_in, _, _ = score_args(lib.launches[0])
    assert (slopes_ptr != 0) == (slopes is not None)
    assert (cap_in != 0) == (softcap is not None)


def test_a_sliding_window_runs_the_extras_kernel_with_its_width():
    lib = RecordingLibrary()
    q, kv_cache, metadata = mixed_inputs()
    paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088, window=37)
    assert all(function.endswith("_extras") for _, function, _, _, _ in lib.launches)
    assert all(score_args(launch)[1:] == (0, np.float32(0), np.float32(0), np.int32(37))
               for launch in lib.launches)


def test_cuda_ops_passes_a_window_only_where_a_context_reaches_past_it():
    q, kv_cache, metadata = mixed_inputs()  # contexts up to 340 keys
    for window, extras in ((340, False), (339, True)):
        lib = RecordingLibrary()
        CudaOps(lib).attention(q, kv_cache, metadata, 0.088, window=window)
        assert all(function.endswith("_extras") == extras
                   for _, function, _, _, _ in lib.launches), window


@pytest.mark.parametrize("kwargs, match", (
    ({"softcap": 0.0}, "softcap must be a positive finite number"),
    ({"softcap": -5.0}, "softcap must be a positive finite number"),
    ({"softcap": float("inf")}, "softcap must be a positive finite number"),
    ({"alibi_slopes": torch.ones(32, dtype=torch.float64)}, "alibi_slopes must be torch.float32"),
    ({"alibi_slopes": torch.ones(8)}, r"alibi_slopes must have shape \[32\]"),
    ({"alibi_slopes": torch.ones(64)[::2]}, "alibi_slopes must be contiguous"),
    ({"window": 0}, "window must be a positive number of keys"),
    ({"window": 4.5}, "window must be a positive number of keys"),
))
def test_malformed_extras_are_refused_before_any_launch(kwargs, match):
    lib = RecordingLibrary()
    q, kv_cache, metadata = mixed_inputs()
    with pytest.raises(KernelArgumentError, match=match):  # AttentionExtrasError is one
        paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088, **kwargs)
    assert lib.launches == []


def test_a_plan_for_the_other_kernels_is_refused():
    lib = RecordingLibrary()
    q, kv_cache, metadata = mixed_inputs()
    plain = plan_for(lib, q, kv_cache, metadata)
    with pytest.raises(AttentionExtrasError, match=r"plan_for\(..., extras=True\)"):
        paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088, plan=plain,
                             softcap=50.0)
    extras = plan_for(lib, q, kv_cache, metadata, extras=True)
    with pytest.raises(AttentionExtrasError, match=r"plan_for\(..., extras=False\)"):
        paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088, plan=extras)
    assert lib.launches == []


def test_cuda_ops_attention_passes_softcap_and_slopes_to_the_kernels():
    lib = RecordingLibrary()
    q, kv_cache, metadata = mixed_inputs()
    slopes = alibi_slopes(32, bias_max=8.0)
    CudaOps(lib).attention(q, kv_cache, metadata, 0.088, softcap=50.0, alibi_slopes=slopes)
    assert all(function.endswith("_extras") for _, function, _, _, _ in lib.launches)
    assert score_args(lib.launches[0])[1] == slopes.data_ptr()


@pytest.mark.parametrize("shape", ("mpt-7b", "bloom-7b1", "baichuan2-13b"))
def test_alibi_models_now_run_on_our_kernels(shape):
    arch = ModelArchConfig.from_hf(dummy_hf_config(shape))
    assert arch.alibi_bias_max is not None
    assert cuda_ops_unsupported_reason(arch, torch.bfloat16) is None


@pytest.mark.parametrize("shape, overrides", (
    ("gemma-2-9b", {}), ("gemma-3-12b", {}),  # sliding layers alternate with global ones
    ("mistral-7b", {"sliding_window": 4096})))  # Mistral v0.1: every layer slides
def test_windowed_models_run_on_our_kernels(shape, overrides):
    arch = ModelArchConfig.from_hf(dummy_hf_config(shape) | overrides)
    assert any(arch.layer_windows) and arch.sliding_window < arch.max_position_embeddings
    assert cuda_ops_unsupported_reason(arch, torch.bfloat16) is None


def test_gemma2_softcap_runs_on_our_kernels_at_both_its_head_dims():
    nine_b = ModelArchConfig.from_hf(dummy_hf_config("gemma-2-9b"))
    assert nine_b.attn_softcap is not None and nine_b.head_dim == 256
    assert cuda_ops_unsupported_reason(nine_b, torch.bfloat16) is None
    # Gemma 2 27B's shape: head_dim 128
    twenty_seven_b = ModelArchConfig.from_hf({**dummy_hf_config("gemma-2-9b"), "head_dim": 128})
    assert cuda_ops_unsupported_reason(twenty_seven_b, torch.bfloat16) is None
