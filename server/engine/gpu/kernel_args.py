"""Argument checks shared by the kernel wrappers: a wrong tensor raises KernelArgumentError
with the argument's name and what was expected, before anything reaches the GPU."""

from __future__ import annotations

import os

import torch

DTYPE_SUFFIX = {torch.bfloat16: "bf16", torch.float16: "fp16"}


class KernelArgumentError(ValueError):
    """A tensor handed to a kernel has the wrong device, dtype, shape or layout."""


ENV_SWITCH_VALUES = {"0": False, "off": False, "false": False, "1": True, "on": True,
                     "true": True}


def env_switch(name: str, *, default: bool) -> bool:
    """An on/off environment variable (0/1, off/on, false/true), `default` when unset; any
    other value is an error naming the variable."""
    value = os.environ.get(name)
    if value is None:
        return default
    switch = ENV_SWITCH_VALUES.get(value.strip().lower())
    if switch is None:
        raise KernelArgumentError(f"{name} must be 0 or 1, got {value!r}")
    return switch


def dtype_suffix(name: str, tensor: torch.Tensor) -> str:
    suffix = DTYPE_SUFFIX.get(tensor.dtype)
    if suffix is None:
        raise KernelArgumentError(f"{name} must be bfloat16 or float16, got {tensor.dtype}")
    return suffix


def kv_cache_suffix(kv_cache: torch.Tensor, model_dtype: torch.dtype) -> str:
    """"" for a cache in the model's dtype, "_kvfp8" for an e4m3 one (the kernel names'
    suffix, csrc/rope_cache.cu and csrc/paged_attention_fp8_d*.cu); else an error."""
    if kv_cache.dtype == model_dtype:
        return ""
    if kv_cache.dtype == torch.float8_e4m3fn:
        return "_kvfp8"
    raise KernelArgumentError(f"kv_cache must be {model_dtype} or float8_e4m3fn "
                              f"(--kv-cache-dtype fp8), got {kv_cache.dtype}")


def check_device(device: torch.device, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise KernelArgumentError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device != device:
            raise KernelArgumentError(f"{name} is on {tensor.device}; the kernels run on {device}")


def check_dtype(dtype: torch.dtype, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.dtype != dtype:
            raise KernelArgumentError(f"{name} must be {dtype}, got {tensor.dtype}")


def check_shape(name: str, tensor: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """`shape` entries of None match any size."""
    actual = tuple(tensor.shape)
    if len(actual) != len(shape) or any(
            want is not None and want != got for want, got in zip(shape, actual)):
        expected = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise KernelArgumentError(f"{name} must have shape {expected}, got {list(actual)}")


def check_contiguous(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if not tensor.is_contiguous():
            raise KernelArgumentError(f"{name} must be contiguous (strides {tensor.stride()})")


def row_stride(name: str, tensor: torch.Tensor) -> int:
    """Stride of dim 0 of a tensor whose other dims are contiguous (e.g. a view into a
    fused projection's output); raises if the inner dims are not."""
    expected = 1
    for size, stride in reversed(tuple(zip(tensor.shape[1:], tensor.stride()[1:]))):
        if size != 1 and stride != expected:
            raise KernelArgumentError(
                f"{name} must be contiguous apart from its first dim (strides {tensor.stride()})")
        expected *= size
    return tensor.stride(0)


def is_aligned16(tensor: torch.Tensor, stride: int) -> bool:
    """16-byte vector accesses are possible: base and row stride are 16-byte multiples."""
    return tensor.data_ptr() % 16 == 0 and (stride * tensor.element_size()) % 16 == 0


def check_aligned16(name: str, tensor: torch.Tensor, stride: int) -> None:
    if not is_aligned16(tensor, stride):
        raise KernelArgumentError(
            f"{name} must start on a 16-byte boundary with rows a multiple of 16 bytes apart "
            f"(data_ptr {tensor.data_ptr():#x}, row stride {stride} elements)")
