"""The kernel wrappers' checks and launch arguments, on the CPU: a recording library stands in
for the GPU, so what is checked is what would be launched (kernel variant, grid, block and
scalar arguments) and which mistakes are refused with KernelArgumentError."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.ops.cuda_attention import paged_attention_into
from server.engine.ops.cuda_attention_hopper import (HOPPER_MIN_ROWS, HOPPER_ROWS,
                                                     HOPPER_SMEM_BYTES, HOPPER_WARPS)
from server.engine.ops.cuda_launch import (add_rms_norm_into, gemv_into, rms_norm_into,
                                           rope_and_cache_into, silu_and_mul_into)


@dataclass
class RecordingLibrary:
    device: torch.device = torch.device("cpu")
    num_sms: int = 132
    arch: str = "sm_80"  # no Hopper kernel unless a test asks for sm_90
    programmatic_launch: bool = False
    resident_ctas: dict[str, int] = field(default_factory=dict)  # by kernel; else 6
    launches: list[tuple] = field(default_factory=list)
    occupancy_queries: list[str] = field(default_factory=list)

    shared_bytes: dict[str, int] = field(default_factory=dict)  # dynamic, by kernel

    def launch(self, module, function, *, grid, block, args, shared_bytes=0):
        self.launches.append((module, function, grid, block, args))
        if shared_bytes:
            self.shared_bytes[function] = shared_bytes

    def max_active_ctas(self, module, function, threads, shared_bytes=0):
        self.occupancy_queries.append(function)
        return self.resident_ctas.get(function, 6)

    def zeroed_int32(self, name, size):
        return torch.zeros(max(size, 1), dtype=torch.int32)


def bf16(*shape):
    return torch.randn(shape).to(torch.bfloat16)


def test_rms_norm_picks_the_vector_kernel_for_aligned_rows():
    lib = RecordingLibrary()
    x = bf16(5, 4096)
    rms_norm_into(lib, torch.empty_like(x), x, bf16(4096), 1e-6)
    module, function, grid, block, args = lib.launches[0]
    assert (module, function, grid, block) == ("rms_norm", "rms_norm_bf16_vec8", (5,), (512,))
    assert args[3] == np.int32(4096) and args[4] == np.int64(4096)


def test_rms_norm_falls_back_to_scalar_kernel_for_odd_widths():
    lib = RecordingLibrary()
    x = torch.randn(3, 100).to(torch.float16)
    rms_norm_into(lib, torch.empty_like(x), x, torch.randn(100).to(torch.float16), 1e-6)
    assert lib.launches[0][1] == "rms_norm_fp16_vec1"


def test_add_rms_norm_passes_row_strides_of_views():
    lib = RecordingLibrary()
    wide = bf16(8, 3 * 256)
    x = wide[:, 256:512]
    add_rms_norm_into(lib, bf16(8, 256), bf16(8, 256), x, bf16(8, 256), bf16(256), 1e-5)
    args = lib.launches[0][4]
    assert args[6] == np.int64(768) and args[7] == np.int64(256)


def test_shape_dtype_and_layout_mistakes_are_refused():
    lib = RecordingLibrary()
    x = bf16(4, 64)
    with pytest.raises(KernelArgumentError, match="weight must have shape"):
        rms_norm_into(lib, torch.empty_like(x), x, bf16(65), 1e-6)
    with pytest.raises(KernelArgumentError, match="weight must be torch.bfloat16"):
        rms_norm_into(lib, torch.empty_like(x), x, torch.randn(64), 1e-6)
    with pytest.raises(KernelArgumentError, match="out must be contiguous"):
        rms_norm_into(lib, bf16(64, 4).t(), x, bf16(64), 1e-6)
    with pytest.raises(KernelArgumentError, match="even last dim"):
        silu_and_mul_into(lib, bf16(4, 2), bf16(4, 5))
    with pytest.raises(KernelArgumentError, match="contiguous apart from its first dim"):
        silu_and_mul_into(lib, bf16(8, 2), bf16(4, 8).t())
    assert lib.launches == []


def test_silu_and_mul_spreads_long_rows_over_column_blocks():
    lib = RecordingLibrary()
    silu_and_mul_into(lib, bf16(3, 14336), bf16(3, 2 * 14336))
    _, function, grid, block, _ = lib.launches[0]
    assert function == "silu_and_mul_bf16_vec8"
    assert grid == (3, 7) and block == (256,)


def test_rope_and_cache_accepts_fused_qkv_views_and_float32_tables():
    lib = RecordingLibrary()
    tokens, heads, kv_heads, dim = 6, 8, 2, 64
    qkv = bf16(tokens, (heads + 2 * kv_heads) * dim)
    q, k, v = qkv.split((heads * dim, kv_heads * dim, kv_heads * dim), dim=-1)
    q = q.view(tokens, heads, dim)
    k, v = k.view(tokens, kv_heads, dim), v.view(tokens, kv_heads, dim)
    kv_cache = bf16(2, 10, 16, kv_heads, dim)
    rope_and_cache_into(lib, bf16(tokens, heads, dim), bf16(tokens, kv_heads, dim), q, k, v,
                        torch.arange(tokens), torch.randn(100, dim), kv_cache,
                        torch.arange(tokens))
    _, function, grid, _, args = lib.launches[0]
    assert function == "rope_and_cache_bf16_f32cos" and grid == (tokens,)
    assert args[12] == np.int64((heads + 2 * kv_heads) * dim)  # q row stride
    assert args[15] == np.int64(160) and args[16] == np.int64(100)  # slots, positions
    with pytest.raises(KernelArgumentError, match="positions must be torch.int64"):
        rope_and_cache_into(lib, bf16(tokens, heads, dim), bf16(tokens, kv_heads, dim), q, k, v,
                            torch.arange(tokens, dtype=torch.int32), torch.randn(100, dim),
                            kv_cache, torch.arange(tokens))


def attention_metadata(query_lens, seq_lens, width):
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    return AttentionMetadata(
        num_tokens=starts[-1], num_seqs=len(query_lens),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        context_lens=torch.tensor([s - q for s, q in zip(seq_lens, query_lens)], dtype=torch.int32),
        block_tables=torch.zeros((len(query_lens), width), dtype=torch.int32),
        slot_mapping=torch.zeros(starts[-1], dtype=torch.int64), max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), query_lens_host=tuple(query_lens), seq_lens_host=tuple(seq_lens))


def test_long_decode_launches_one_split_attention_that_merges_itself():
    lib = RecordingLibrary()
    metadata = attention_metadata([1, 1], [8000, 30], width=500)
    q = bf16(2, 32, 128)
    plan = paged_attention_into(lib, torch.empty_like(q), q, bf16(2, 600, 16, 8, 128), metadata,
                                0.088, decode_key_split=1)
    assert plan.num_partitions > 1
    [(_, function, grid, block, args)] = lib.launches  # no separate merge kernel
    assert function == "paged_attention_bf16_d128_w1" and block == (32,)
    # the 8 kv heads of each of the (2 * 4 // 16 + 2) row tiles are neighbouring CTAs
    assert grid == ((2 * 4 // 16 + 2) * 8, 1, plan.num_partitions)
    assert all(isinstance(ptr, int) and ptr for ptr in args[1:5])  # partials and counters
    assert args[-3] == np.int32(plan.num_partitions)
    assert args[-2:] == (np.int32(1), np.int32(16))  # the 1-warp launch's rows per sequence
    assert plan.num_counters(8) == grid[0]


def test_unsplit_attention_passes_no_workspace():
    lib = RecordingLibrary()
    metadata = attention_metadata([1] * 256, [100] * 256, width=8)
    q = bf16(256, 32, 128)
    plan = paged_attention_into(lib, torch.empty_like(q), q, bf16(2, 600, 16, 8, 128), metadata,
                                0.088)
    assert plan.num_partitions == 1
    [(_, _, _, _, args)] = lib.launches
    assert args[1:5] == (0, 0, 0, 0)


def test_head_dim_256_launches_pass_their_shared_memory_and_128_none():
    # a mixed batch: 1-, 2- and 4-warp launches; past 48 KB a CTA's shared memory is dynamic
    metadata = attention_metadata([1, 20, 40], [300, 20, 40], width=32)
    for head_dim, expected in ((256, {"w1k2": 76032, "w2": 84480, "w4": 101376}), (128, {})):
        lib = RecordingLibrary()
        q = bf16(61, 8, head_dim)
        paged_attention_into(lib, torch.empty_like(q), q, bf16(2, 40, 16, 8, head_dim),
                             metadata, 0.0625)
        assert len(lib.launches) == 3
        assert lib.shared_bytes == {f"paged_attention_bf16_d{head_dim}_{variant}": size
                                    for variant, size in expected.items()}


def test_attention_refuses_unsupported_head_dims_and_uneven_groups():
    lib = RecordingLibrary()
    metadata = attention_metadata([2], [2], width=1)
    q = bf16(2, 6, 112)  # a multiple of 16 no kernel is built for
    with pytest.raises(KernelArgumentError, match="head_dim"):
        paged_attention_into(lib, torch.empty_like(q), q, bf16(2, 1, 16, 2, 112), metadata, 0.1)
    q = bf16(2, 6, 64)
    with pytest.raises(KernelArgumentError, match="6 query heads cannot share 4"):
        paged_attention_into(lib, torch.empty_like(q), q, bf16(2, 1, 16, 4, 64), metadata, 0.1)


def test_gemv_launches_one_warp_per_output_column_and_checks_its_inputs():
    lib = RecordingLibrary()
    x, weight, bias = bf16(3, 4096), bf16(1000, 4096), bf16(1000)
    gemv_into(lib, torch.empty(3, 1000, dtype=torch.bfloat16), x, weight, bias)
    [(module, function, grid, block, args)] = lib.launches
    assert (module, function, grid, block) == ("gemv", "gemv_bf16_m3", (125,), (256,))
    assert args[4:] == (np.int32(1000), np.int32(4096), np.int64(4096))
    with pytest.raises(KernelArgumentError, match="1 to 4 rows"):
        gemv_into(lib, torch.empty(5, 1000, dtype=torch.bfloat16), bf16(5, 4096), weight)
    with pytest.raises(KernelArgumentError, match="multiple of 8"):
        gemv_into(lib, torch.empty(1, 10, dtype=torch.bfloat16), bf16(1, 12), bf16(10, 12))
    with pytest.raises(KernelArgumentError, match="bias"):
        gemv_into(lib, torch.empty(1, 1000, dtype=torch.bfloat16), bf16(1, 4096), weight,
                  bf16(999))


@pytest.mark.parametrize("split, decode_kernel, decode_threads", ((1, "w1", 32), (2, "w1k2", 64)))
def test_each_row_class_launches_its_own_kernel_kv_heads_side_by_side(split, decode_kernel,
                                                                      decode_threads):
    lib = RecordingLibrary()
    metadata = attention_metadata([1, 6, 40], [300, 306, 340], width=30)  # rows 4, 24, 160
    q = bf16(47, 32, 128)
    plan = paged_attention_into(lib, torch.empty_like(q), q, bf16(2, 100, 16, 8, 128),
                                metadata, 0.088, decode_key_split=split)
    assert [launch.warps for launch in plan.launches] == [1, 2, 4]
    kernels = [(decode_kernel, decode_threads), ("w2", 64), ("w4", 128)]
    assert [(function, grid[:2], block) for _, function, grid, block, _ in lib.launches] == [
        (f"paged_attention_bf16_d128_{kernel}", (launch.grid_x * 8, 1), (threads,))
        for (kernel, threads), launch in zip(kernels, plan.launches)]
    # the key split runs the same tiles: grid and rows per sequence are those of w1
    assert plan.launches[0].grid_x == 47 * 4 // 16 + 3
    assert lib.launches[0][4][-2:] == (np.int32(1), np.int32(16))


def test_on_sm90_long_prefills_launch_the_hopper_kernel_with_its_shared_memory():
    lib = RecordingLibrary(arch="sm_90", resident_ctas={"paged_attention_hopper_bf16_d128": 1})
    metadata = attention_metadata([1, 10, 40], [300, 20, 40], width=30)  # rows 4, 40, 160
    q = bf16(51, 32, 128)
    plan = paged_attention_into(lib, torch.empty_like(q), q, bf16(2, 100, 16, 8, 128),
                                metadata, 0.088)
    assert [(launch.warps, launch.hopper) for launch in plan.launches] == [
        (1, False), (4, False), (HOPPER_WARPS, True)]
    module, function, grid, block, args = lib.launches[-1]
    assert (module, function, block) == ("paged_attention_hopper",
                                         "paged_attention_hopper_bf16_d128", (384,))
    assert grid[:2] == ((51 * 4 // HOPPER_ROWS + 3) * 8, 1)
    assert lib.shared_bytes["paged_attention_hopper_bf16_d128"] == HOPPER_SMEM_BYTES
    assert args[-2:] == (np.int32(HOPPER_MIN_ROWS), np.int32(2**31 - 1))
    assert lib.launches[1][4][-2:] == (np.int32(33), np.int32(HOPPER_MIN_ROWS - 1))


def test_on_sm90_an_e4m3_cache_launches_the_hopper_kernel_built_for_it():
    lib = RecordingLibrary(arch="sm_90")
    metadata = attention_metadata([40], [40], width=30)
    q = bf16(40, 32, 128)
    cache = torch.zeros((2, 100, 16, 8, 128), dtype=torch.float8_e4m3fn)
    plan = paged_attention_into(lib, torch.empty_like(q), q, cache, metadata, 0.088)
    assert [launch.hopper for launch in plan.launches] == [True]
    assert lib.launches[0][1:4:2] == ("paged_attention_hopper_bf16_kvfp8_d128", (256,))


@pytest.mark.parametrize("resident, partitions", ((6, 3), (4, 1)))
@pytest.mark.parametrize("split, kernel, other, threads",
                         ((1, "w1", "w1k2", 32), (2, "w1k2", "w1", 64)))
def test_split_is_sized_by_the_occupancy_of_the_decode_kernel_launched(split, kernel, other,
                                                                       threads, resident,
                                                                       partitions):
    # 64 decodes x 8 kv heads = 512 CTAs: 6 per SM (792 slots) fill a wave well only with 3
    # partitions, 4 per SM (528 slots) with none. The other decode kernel's occupancy (a
    # misleading 1) must not matter.
    lib = RecordingLibrary(resident_ctas={f"paged_attention_fp16_d128_{kernel}": resident,
                                          f"paged_attention_fp16_d128_{other}": 1})
    metadata = attention_metadata([1] * 64, [8192] * 64, width=512)
    q = torch.randn(64, 32, 128).to(torch.float16)
    kv_cache = torch.randn(2, 8, 16, 8, 128).to(torch.float16)
    plan = paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088,
                                decode_key_split=split)
    assert plan.num_partitions == partitions
    assert f"paged_attention_fp16_d128_{kernel}" in lib.occupancy_queries
    assert f"paged_attention_fp16_d128_{other}" not in lib.occupancy_queries
    [(_, function, grid, block, _)] = lib.launches
    assert function == f"paged_attention_fp16_d128_{kernel}" and block == (threads,)
    assert grid == ((64 * 4 // 16 + 64) * 8, 1, partitions)


def test_plan_made_for_another_key_split_is_refused():
    lib = RecordingLibrary()
    metadata = attention_metadata([1, 1], [500, 30], width=40)
    q = bf16(2, 32, 64)
    kv_cache = bf16(2, 80, 16, 8, 64)
    plan = paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.125,
                                decode_key_split=1)
    with pytest.raises(KernelArgumentError, match="plan_for\\(..., decode_key_split=2\\)"):
        paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.125, plan=plan,
                             decode_key_split=2)
    with pytest.raises(KernelArgumentError, match="decode_key_split must be one of"):
        paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.125,
                             decode_key_split=4)
    assert [function for _, function, _, _, _ in lib.launches] == ["paged_attention_bf16_d64_w1"]


def test_decodes_run_on_the_w1k2_kernel_by_default():
    lib = RecordingLibrary()
    metadata = attention_metadata([1] * 4, [300] * 4, width=30)
    q = bf16(4, 32, 128)
    paged_attention_into(lib, torch.empty_like(q), q, bf16(2, 100, 16, 8, 128), metadata, 0.088)
    assert [(function, block) for _, function, _, block, _ in lib.launches] == [
        ("paged_attention_bf16_d128_w1k2", (64,))]


@pytest.mark.parametrize("cache, num_decodes, module, kernel", (
    ("fp8", 1024, "paged_attention_fp8_d128", "paged_attention_bf16_kvfp8_d128_w1tk2"),
    ("fp8", 64, "paged_attention_fp8_d128", "paged_attention_bf16_kvfp8_d128_w1tk2"),
    ("bf16", 1024, "paged_attention_d128", "paged_attention_bf16_d128_w1k2"),
    ("bf16", 64, "paged_attention_d128", "paged_attention_bf16_d128_w1k2")))
def test_decodes_split_their_keys_at_every_batch_and_run_transposed_over_an_fp8_cache(
        cache, num_decodes, module, kernel):
    # 1,024 decodes x 8 kv heads = 8,192 one-warp CTAs, many waves of the GPU; 64 x 8 = 512,
    # under one: both keep the key split's second warp per CTA. A bf16 cache keeps 16-row
    # tiles.
    lib = RecordingLibrary()
    metadata = attention_metadata([1] * num_decodes, [640] * num_decodes, width=40)
    q = bf16(num_decodes, 32, 128)
    kv_cache = (torch.zeros((2, 80, 16, 8, 128), dtype=torch.float8_e4m3fn) if cache == "fp8"
                else bf16(2, 80, 16, 8, 128))
    paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088)
    assert [(m, f) for m, f, _, _, _ in lib.launches] == [(module, kernel)]


def test_rope_and_attention_take_an_fp8_cache_and_refuse_other_dtypes():
    lib = RecordingLibrary()
    metadata = attention_metadata([2], [5], width=1)
    q = bf16(2, 4, 64)
    for dtype, ok in ((torch.float8_e4m3fn, True), (torch.float16, False), (torch.int8, False)):
        kv_cache = torch.zeros((2, 1, 16, 2, 64), dtype=dtype)
        if ok:
            paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.125)
        else:
            with pytest.raises(KernelArgumentError, match="kv_cache must be torch.bfloat16 or "
                                                          "float8_e4m3fn"):
                paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.125)


def test_transposed_plan_puts_tiles_of_up_to_8_rows_on_the_t_kernel_and_the_rest_as_before():
    # GQA group 4: a decode (4 rows) and a 2-token chunk (8 rows) run transposed, 8 rows a
    # CTA; a 3-token chunk (12 rows) on the 16-row 1-warp kernel; 40 rows on 4 warps.
    lib = RecordingLibrary()
    metadata = attention_metadata([1, 2, 3, 10], [300, 302, 303, 310], width=30)
    q = bf16(16, 32, 128)
    kv_cache = torch.zeros((2, 100, 16, 8, 128), dtype=torch.float8_e4m3fn)
    plan = paged_attention_into(lib, torch.empty_like(q), q, kv_cache, metadata, 0.088,
                                decode_key_split=2)
    assert [(launch.warps, launch.transposed, launch.min_rows, launch.max_rows)
            for launch in plan.launches] == [(1, True, 1, 8), (1, False, 9, 16), (4, False, 33,
                                                                                2**31 - 1)]
    assert plan.launches[0].grid_x == 16 * 4 // 8 + 4
    assert [function for _, function, _, _, _ in lib.launches] == [
        "paged_attention_bf16_kvfp8_d128_w1tk2", "paged_attention_bf16_kvfp8_d128_w1k2",
        "paged_attention_bf16_kvfp8_d128_w4"]


def test_programmatic_launch_is_on_from_sm90_unless_the_env_turns_it_off(monkeypatch):
    from server.engine.gpu.kernels import PROGRAMMATIC_LAUNCH_ENV, programmatic_launch_enabled

    monkeypatch.delenv(PROGRAMMATIC_LAUNCH_ENV, raising=False)
    assert programmatic_launch_enabled("sm_90a") and programmatic_launch_enabled("sm_120")
    assert not programmatic_launch_enabled("sm_89")
    assert not programmatic_launch_enabled("sm_90", False)
    monkeypatch.setenv(PROGRAMMATIC_LAUNCH_ENV, "0")
    assert not programmatic_launch_enabled("sm_90")
    assert programmatic_launch_enabled("sm_90", True)
    monkeypatch.setenv(PROGRAMMATIC_LAUNCH_ENV, "maybe")
    with pytest.raises(KernelArgumentError, match="must be 0 or 1"):
        programmatic_launch_enabled("sm_90")
