"""The CPU-side half of the integer-weight GPU path (server/engine/ops/cuda_int.py): which
kernel each step launches and with what (a recording library stands in for the GPU), which
weights the kernels take, and the torch reference the kernels are held to and that runs the
rest (W8A8: int8 rows, exact integer sums, float32 scales)."""

from __future__ import annotations

import pytest
import torch

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.models.int_weights import IntWeight, pack_int4
from server.engine.ops.cuda import CudaOps
from server.engine.ops.cuda_int import (gemv_int_into, int_kernel_problem, int_linear,
                                        int_linear_reference, quantize_int8_rows_reference)
from tests.unit.test_kernel_launch_args import RecordingLibrary


def int4_weight(n: int, k: int, group_size: int, dtype=torch.bfloat16) -> IntWeight:
    gen = torch.Generator().manual_seed(n + k)
    groups = k // group_size
    return IntWeight(qweight=pack_int4(torch.randint(0, 16, (n, k), generator=gen)),
                     scales=(torch.rand((n, groups), generator=gen) * 0.1).to(dtype),
                     zeros=torch.randint(0, 16, (n, groups), generator=gen).to(dtype),
                     bits=4, group_size=group_size)


def int8_weight(n: int, k: int, group_size: int, *, act_int8: bool = True) -> IntWeight:
    gen = torch.Generator().manual_seed(n * k)
    return IntWeight(qweight=torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8),
                     scales=(torch.rand((n, k // group_size), generator=gen) + 0.5).to(
                         torch.bfloat16), zeros=None, bits=8, group_size=group_size,
                     act_int8=act_int8)


@pytest.mark.parametrize("weight", [int4_weight(64, 4096, 128), int4_weight(48, 4128, 4128),
                                    int8_weight(64, 1024, 64, act_int8=False),
                                    int8_weight(64, 1040, 1040)])
def test_the_kernels_take_the_usual_layouts(weight):
    assert int_kernel_problem(weight, torch.bfloat16) is None


@pytest.mark.parametrize(("weight", "dtype", "reason"), [
    (int4_weight(64, 4096, 128), torch.float32, "activations in torch.float32"),
    (int4_weight(64, 4096, 128, dtype=torch.float16), torch.bfloat16, "scales or zeros"),
    (int4_weight(64, 384, 96), torch.bfloat16, "group size 96"),
    (int4_weight(64, 80, 80), torch.bfloat16, "K=80"),
    (int8_weight(64, 1024, 128), torch.bfloat16, "W8A8 with group size 128"),
    (int8_weight(60, 1024, 1024), torch.bfloat16, "N=60"),
])
def test_the_kernels_say_what_they_cannot_take(weight, dtype, reason):
    assert reason in int_kernel_problem(weight, dtype)


def test_a_weight_the_kernels_cannot_take_runs_on_the_reference_without_a_gpu():
    weight = int4_weight(16, 384, 96)
    x = torch.randn((3, 384)).to(torch.bfloat16)
    assert torch.equal(int_linear(None, x, weight), int_linear_reference(x, weight))


def test_int8_rows_round_half_to_even_and_reach_127_at_the_row_maximum():
    x = torch.tensor([[127.0, -63.5, 0.5, 1.5], [0.0, 0.0, 0.0, 0.0]])
    q, scale = quantize_int8_rows_reference(x)
    assert scale[0].item() == pytest.approx(1.0, rel=1e-6)
    assert q[0].tolist() == [127, -64, 0, 2]  # -63.5 -> -64 and 1.5 -> 2 (even), 0.5 -> 0
    assert q[1].tolist() == [0, 0, 0, 0] and scale[1].item() > 0


def test_w8a8_reference_sums_integers_exactly_group_by_group():
    weight = int8_weight(8, 64, 16)  # four groups per row: the reference's general case
    x = torch.randn((3, 64)).to(torch.bfloat16)
    q, scale = quantize_int8_rows_reference(x)
    expected = torch.zeros((3, 8), dtype=torch.float64)
    for t in range(3):
        for n in range(8):
            for g in range(4):
                cols = slice(16 * g, 16 * g + 16)
                total = int((q[t, cols].long() * weight.qweight[n, cols].long()).sum())
                expected[t, n] += total * weight.scales[n, g].double()
    expected = (expected.float() * scale).to(torch.bfloat16)
    assert torch.equal(int_linear_reference(x, weight), expected)


def launched(lib: RecordingLibrary) -> list[str]:
    return [launch[1] for launch in lib.launches]


@pytest.mark.parametrize(("num_rows", "group", "kernels"), [
    (1, 128, ["gemv_w4_bf16_t1_bs"]),  # groups covering a 128-column block: sums scaled
    (8, 4096, ["gemv_w4_bf16_t1_bs"]),
    (9, 128, ["gemv_w4_bf16_t2_bs"]),  # a second tile of 8 tokens
    (16, 32, ["gemv_w4_bf16_t2"]),  # narrow groups: weights scaled one by one
    (17, 128, ["dequantize_w4_bf16"]),  # then cuBLAS (torch, not recorded)
])
def test_int4_steps_pick_the_gemv_or_dequantize(num_rows, group, kernels):
    lib = RecordingLibrary()
    out = int_linear(lib, torch.randn((num_rows, 4096)).to(torch.bfloat16),
                     int4_weight(40, 4096, group))
    assert out.shape == (num_rows, 40) and launched(lib) == kernels
    if num_rows <= 16:
        module, _, grid, block, args = lib.launches[0]
        assert (module, grid, block) == ("gemv_int", (3,), (256,))  # 16 columns a CTA
        shift = 31 if group == 4096 else group.bit_length() - 1  # group of column j: j >> it
        assert args[6:10] == (num_rows, 40, 4096, shift)


# an H100's occupancy at one tile of tokens: the block-scaled kernel 2 CTAs an SM, the other 3
H100_INT4_RESIDENT = {"gemv_w4_bf16_t1_bs": 2, "gemv_w4_bf16_t1": 3,
                      "gemv_w4_bf16_t1_bs_silu": 2, "gemv_w4_bf16_t1_silu": 3}


@pytest.mark.parametrize(("rows", "silu_and_mul", "kernel"), [
    (4096, False, "gemv_w4_bf16_t1_bs"),  # 256 CTAs: one wave either way
    (6144, False, "gemv_w4_bf16_t1"),  # 384: two waves of the _bs kernel, one of the other
    (28672, True, "gemv_w4_bf16_t1_silu"),  # 1,792: 7 waves against 5
])
def test_block_scaled_gemv_runs_only_where_it_costs_no_wave_of_ctas(rows, silu_and_mul,
                                                                     kernel):
    lib = RecordingLibrary(num_sms=132, resident_ctas=H100_INT4_RESIDENT)
    weight = int4_weight(rows, 256, 128)
    x = torch.randn((1, 256)).to(torch.bfloat16)
    out = torch.empty((1, rows // 2 if silu_and_mul else rows), dtype=torch.bfloat16)
    gemv_int_into(lib, out, x, weight, silu_and_mul=silu_and_mul)
    assert launched(lib) == [kernel]
    assert lib.launches[0][2] == (-(-out.shape[1] // (8 if silu_and_mul else 16)),)


def test_silu_and_mul_gemv_takes_one_tile_of_tokens_an_even_n_and_no_bias():
    lib = RecordingLibrary()
    weight = int4_weight(64, 256, 128)
    with pytest.raises(KernelArgumentError, match="SiLU-and-mul takes 1 to 8 rows"):
        gemv_int_into(lib, torch.empty((9, 32), dtype=torch.bfloat16),
                      torch.randn((9, 256)).to(torch.bfloat16), weight, silu_and_mul=True)
    with pytest.raises(KernelArgumentError, match="no bias"):
        gemv_int_into(lib, torch.empty((1, 32), dtype=torch.bfloat16),
                      torch.randn((1, 256)).to(torch.bfloat16), weight,
                      torch.zeros(64, dtype=torch.bfloat16), silu_and_mul=True)
    assert lib.launches == []


@pytest.mark.parametrize(("num_rows", "gemv_max_tokens", "kernels", "int_mm_rows"), [
    (3, 16, ["quantize_int8_rows_bf16", "gemv_w8a8_bf16_t1"], None),
    (3, 0, ["quantize_int8_rows_bf16", "int8_scaled_out_bf16"], 17),  # padded for _int_mm
    (40, 16, ["quantize_int8_rows_bf16", "int8_scaled_out_bf16"], 40),
])
def test_w8a8_steps_quantize_rows_then_pick_the_gemv_or_int_mm(num_rows, gemv_max_tokens,
                                                                kernels, int_mm_rows,
                                                                monkeypatch):
    shapes = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: shapes.append(a.shape) or int_mm(a, b))
    lib = RecordingLibrary()
    out = int_linear(lib, torch.randn((num_rows, 1024)).to(torch.bfloat16),
                     int8_weight(64, 1024, 1024), gemv_max_tokens=gemv_max_tokens)
    assert out.shape == (num_rows, 64) and launched(lib) == kernels
    assert shapes == ([] if int_mm_rows is None else [(int_mm_rows, 1024)])


def test_cuda_ops_linear_hands_int_weights_to_int_linear():
    ops = CudaOps(RecordingLibrary())
    ops.linear(torch.randn((2, 1024)).to(torch.bfloat16), int8_weight(64, 1024, 64,
                                                                      act_int8=False))
    assert launched(ops.library) == ["gemv_w8_bf16_t1_bs"]


def test_the_gemv_refuses_what_it_cannot_compute():
    lib = RecordingLibrary()
    x = torch.randn((2, 4096)).to(torch.bfloat16)
    y = torch.empty((2, 40), dtype=torch.bfloat16)
    with pytest.raises(KernelArgumentError, match="narrower than a block"):
        gemv_int_into(lib, y, x, int4_weight(40, 4096, 32), block_scale=True)
    with pytest.raises(KernelArgumentError, match="gemv_w8a8_into"):
        gemv_int_into(lib, y, x, int8_weight(40, 4096, 4096))
    with pytest.raises(KernelArgumentError, match="1 to 16 rows"):
        gemv_int_into(lib, torch.empty((17, 40), dtype=torch.bfloat16),
                      torch.randn((17, 4096)).to(torch.bfloat16), int4_weight(40, 4096, 128))
    assert not lib.launches


def test_fp8_and_int8_row_quantizers_share_their_launch_and_checks():
    from server.engine.ops.cuda_fp8 import quantize_fp8_rows_into
    from server.engine.ops.cuda_int import quantize_int8_rows_into

    lib = RecordingLibrary()
    x = torch.randn((3, 4096 + 64)).to(torch.bfloat16)[:, :4096]  # rows of a wider tensor
    scale = torch.empty((3, 1))
    quantize_fp8_rows_into(lib, torch.empty((3, 4096), dtype=torch.float8_e4m3fn), scale, x)
    quantize_int8_rows_into(lib, torch.empty((3, 4096), dtype=torch.int8), scale, x)
    assert [(m, f, g, b) for m, f, g, b, _ in lib.launches] == [
        ("quantize", "quantize_fp8_rows_bf16", (3,), (256,)),
        ("w8a8", "quantize_int8_rows_bf16", (3,), (256,))]
    assert all(args[3:] == (4096, 4160) for *_, args in lib.launches)
    with pytest.raises(KernelArgumentError, match="multiple of 8 long for int8"):
        quantize_int8_rows_into(lib, torch.empty((3, 12), dtype=torch.int8), scale,
                                torch.randn((3, 12)).to(torch.bfloat16))
