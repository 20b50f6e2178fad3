"""FP8 weights for the linear layers (`--quantization fp8`): W8A8 with dynamic scales.

Each linear weight [N, K] is stored as float8 e4m3 with one float32 scale per output row
(per channel), quantized from the checkpoint's weights as they load. At run time each token's
activations are quantized the same way (one scale per row, from that row's largest
magnitude), so a GEMM multiplies two FP8 matrices on the tensor cores and applies both
scales to its float32 accumulators:

    x [T, K] ~= x_q * x_scale [T, 1]     weight [N, K] ~= w_q * w_scale [N, 1]
    out[t, n] = x_scale[t] * w_scale[n] * sum_k x_q[t, k] * w_q[n, k]

Steps of one token (FP8_WEIGHT_ONLY_MAX_TOKENS) leave the activations as they are and
multiply them by the dequantized weight (W8A16): there the step is the weights streamed once,
and a quantizer between two weight streams is time the GPU waits.

Embeddings, norms, biases and lm_head stay in the model dtype. This module holds the
format and the torch reference; CudaOps runs it on csrc/quantize.cu and torch._scaled_mm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from server.config import QUANTIZATIONS
from server.engine.models.config import ModelArchConfig
from server.engine.models.weight_layout import weight_shapes

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3 value
# Scales are absmax times float32(1 / 448), not absmax / 448: torch on a GPU divides by a
# scalar as a multiply by its reciprocal, and the kernel does the same, so both agree bit
# for bit on every device.
FP8_INV_MAX = 1.0 / FP8_MAX
MIN_ABS_MAX = 1e-12  # a row of zeros gets this absmax, so its scale is never 0
FP8_DIM_MULTIPLE = 16  # the FP8 GEMM needs K and N to be multiples of this
# Steps of at most this many tokens take 16-bit activations (W8A16, csrc/gemv_fp8.cu's
# weight-only kernels): an H200's batch-1 FP8 step was 77 % of its roofline with a quantizer
# and FP8-writing norms around every GEMV (docs/benchmarks.md, session 14).
FP8_WEIGHT_ONLY_MAX_TOKENS = 1
# A stored FP8 weight "X.weight" has its per-row scales beside it as "X.weight_scale".
SCALE_SUFFIX = "_scale"
_LINEAR_SUFFIXES = tuple(f".{proj}.weight" for proj in
                         ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                          "down_proj", "qkv_proj", "gate_up_proj", "c_fc", "c_proj"))


class QuantizationError(ValueError):
    """A quantization the engine does not have, or a model or device it cannot run on."""


def check_quantization(quantization: str | None) -> None:
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise QuantizationError(f"--quantization must be one of {', '.join(QUANTIZATIONS)} "
                                f"(or left out for none), got {quantization!r}")


def is_fp8_linear(name: str) -> bool:
    """Whether --quantization fp8 stores this checkpoint tensor in FP8."""
    return name.endswith(_LINEAR_SUFFIXES)


def stored_layout(arch: ModelArchConfig, *, dtype: torch.dtype,
                  quantization: str | None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor a checkpoint of this model holds: the model
    dtype throughout, or with quantization "fp8" each linear weight in FP8 followed by its
    float32 scales."""
    layout = {}
    for name, shape in weight_shapes(arch).items():
        if quantization == "fp8" and is_fp8_linear(name):
            layout[name] = (shape, FP8_DTYPE)
            layout[name + SCALE_SUFFIX] = ((shape[0],), torch.float32)
        else:
            layout[name] = (shape, dtype)
    return layout


def quantize_checkpoint(weights: Iterable[tuple[str, torch.Tensor]]
                        ) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) stream of a checkpoint with its linear weights in FP8, each
    followed by its scales, in stored_layout's order."""
    for name, tensor in weights:
        if is_fp8_linear(name):
            data, scale = quantize_rows(tensor)
            yield name, data
            yield name + SCALE_SUFFIX, scale.view(-1)
        else:
            yield name, tensor


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise FP8 of a 2-D tensor: (q [R, C] float8_e4m3fn, scale [R, 1] float32) with
    x ~= q * scale. csrc/quantize.cu computes exactly this on the GPU."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=MIN_ABS_MAX) * FP8_INV_MAX
    return (x / scale).to(FP8_DTYPE), scale


@dataclass(frozen=True)
class Fp8Rows:
    """Activations [T, K] already quantized row by row (what the fused norm and SiLU kernels
    hand an FP8 linear layer): x ~= q * scale, and `dtype` is the model's, which the linear
    layer's output takes."""

    q: torch.Tensor  # [T, K] float8_e4m3fn
    scale: torch.Tensor  # [T, 1] float32
    dtype: torch.dtype

    @classmethod
    def of(cls, x: torch.Tensor) -> "Fp8Rows":
        """The reference: quantize_rows of x."""
        q, scale = quantize_rows(x)
        return cls(q=q, scale=scale, dtype=x.dtype)

    @property
    def shape(self) -> torch.Size:
        return self.q.shape


@dataclass(frozen=True)
class Fp8Weight:
    """A linear weight [N, K] as FP8 data and one float32 scale per output row. Slicing rows
    gives views of both, so fused weights (q|k|v, gate|up) load part by part; copy_ quantizes
    a checkpoint tensor into it, so the weight loader treats it like any tensor."""

    data: torch.Tensor  # [N, K] float8_e4m3fn
    scale: torch.Tensor  # [N] float32

    @classmethod
    def empty(cls, rows: int, cols: int, *, device: torch.device | str) -> "Fp8Weight":
        return cls(data=torch.empty((rows, cols), dtype=FP8_DTYPE, device=device),
                   scale=torch.empty((rows,), dtype=torch.float32, device=device))

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def __getitem__(self, rows: slice) -> "Fp8Weight":
        return Fp8Weight(data=self.data[rows], scale=self.scale[rows])

    def copy_(self, weight: torch.Tensor) -> "Fp8Weight":
        """Quantizes `weight`; FP8 data stored by `inflightd build` is copied as it is (its
        scales load separately, into .scale)."""
        if weight.dtype == FP8_DTYPE:
            self.data.copy_(weight)
            return self
        data, scale = quantize_rows(weight.to(self.data.device))
        self.data.copy_(data)
        self.scale.copy_(scale.view(-1))
        return self

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.data.float() * self.scale[:, None]).to(dtype)


def quantizes_activations(num_tokens: int) -> bool:
    """Whether an FP8 linear layer in a step of num_tokens tokens takes its input quantized
    (W8A8), or 16-bit as it is (W8A16, FP8_WEIGHT_ONLY_MAX_TOKENS)."""
    return num_tokens > FP8_WEIGHT_ONLY_MAX_TOKENS


def fp8_linear_reference(x: torch.Tensor | Fp8Rows, weight: Fp8Weight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """What the FP8 GEMM computes, in float32: x's rows quantized as at run time (or as
    given; a one-token step's row as it is), times the dequantized weight, rounded once to
    x's dtype."""
    if isinstance(x, Fp8Rows) or quantizes_activations(x.shape[0]):
        rows = x if isinstance(x, Fp8Rows) else Fp8Rows.of(x)
        x32, dtype = rows.q.float() * rows.scale, rows.dtype
    else:
        x32, dtype = x.float(), x.dtype
    out = torch.mm(x32, weight.dequantize().t())
    if bias is not None:
        out = out + bias.float()
    return out.to(dtype)


def check_not_quantized(x) -> None:
    """Quantized activations (Fp8Rows) only feed FP8 weights."""
    if isinstance(x, Fp8Rows):
        raise QuantizationError("FP8 activations (Fp8Rows) reached a linear layer whose "
                                "weight is not FP8")


def check_fp8_shapes(shapes: dict[str, tuple[int, int]]) -> None:
    """Every quantized weight's N and K must be multiples of FP8_DIM_MULTIPLE."""
    for name, (rows, cols) in shapes.items():
        if rows % FP8_DIM_MULTIPLE or cols % FP8_DIM_MULTIPLE:
            raise QuantizationError(
                f"--quantization fp8 needs every linear weight's dims to be multiples of "
                f"{FP8_DIM_MULTIPLE}; {name} is {rows} x {cols}")


def check_fp8_device(device: torch.device, dtype: torch.dtype) -> None:
    """On a GPU, FP8 tensor cores (compute capability 8.9+, e.g. Ada, Hopper) and bfloat16
    activations (the only output torch's row-scaled FP8 GEMM writes). The CPU runs the
    reference in any dtype."""
    if device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise QuantizationError(
            f"--quantization fp8 needs FP8 tensor cores (compute capability 8.9 or newer); "
            f"this GPU is {major}.{minor}")
    if dtype != torch.bfloat16:
        raise QuantizationError(f"--quantization fp8 runs with --dtype bfloat16 on a GPU, "
                                f"got {dtype}")
