"""KServe v2 tensors: decoded from JSON data, from the binary tensor extension or from gRPC
raw contents into one flat form, checked against their shape, and encoded back."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.triton.errors import TritonError

# KServe v2 datatype -> numpy dtype (little-endian, as the binary extension and gRPC raw
# contents carry them); BYTES is handled apart (length-prefixed elements).
NUMPY_TYPES = {"BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
               "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
               "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
               "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
DATATYPES = frozenset(NUMPY_TYPES) | {"BYTES"}
MAX_DIMS = 8
# Far above any input of the ensemble (one element, or a word list); with it no tensor makes
# the decoders below loop long on the event loop.
MAX_ELEMENTS = 4096


@dataclass(frozen=True)
class Tensor:
    """One named tensor; `values` is flat, row-major: str or bytes for BYTES, else numbers."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: tuple[Any, ...]


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if (not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in shape)):
        raise TritonError(f"input '{name}': shape must be a list of at most {MAX_DIMS} "
                          f"non-negative integers, got {shape!r}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise TritonError(f"input '{name}': shape {list(shape)} has more than "
                          f"{MAX_ELEMENTS} elements")
    return tuple(shape)


def check_datatype(name: str, datatype: Any) -> str:
    if datatype not in DATATYPES:
        raise TritonError(f"input '{name}': unknown datatype {datatype!r}; expected one of "
                          f"{', '.join(sorted(DATATYPES))}")
    return datatype


def from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> Tensor:
    """A tensor from KServe v2 JSON `data` (flat or nested as the shape)."""
    values = _flatten(name, data, limit=math.prod(shape))
    check_count(name, shape, len(values))
    return Tensor(name, datatype, shape, tuple(_json_element(name, datatype, v)
                                               for v in values))


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> Tensor:
    """A tensor from raw bytes (the binary extension, or gRPC raw_input_contents)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        values = _split_bytes(name, raw, limit=count)
    else:
        dtype = NUMPY_TYPES[datatype]
        if len(raw) != count * dtype.itemsize:
            raise TritonError(f"input '{name}': shape {list(shape)} of {datatype} needs "
                              f"{count * dtype.itemsize} bytes, got {len(raw)}")
        values = np.frombuffer(raw, dtype=dtype).tolist()
    check_count(name, shape, len(values))
    return Tensor(name, datatype, shape, tuple(values))


def check_count(name: str, shape: tuple[int, ...], num_values: int) -> None:
    """The decoders stop one past the count, so a larger number reads as "more"."""
    count = math.prod(shape)
    if num_values != count:
        got = num_values if num_values < count else "more"
        raise TritonError(f"input '{name}': shape {list(shape)} needs {count} elements, "
                          f"got {got}")


def to_raw(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        parts = []
        for value in tensor.values:
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.asarray(tensor.values, dtype=NUMPY_TYPES[tensor.datatype]).tobytes()


def to_json_data(tensor: Tensor) -> list:
    """A tensor's values as KServe v2 JSON data (flat); bytes become text."""
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v
                for v in tensor.values]
    return list(tensor.values)


def _flatten(name: str, data: Any, *, limit: int) -> list:
    """The elements in row-major order; stops once there are more than `limit`."""
    if not isinstance(data, list):
        return [data]
    flat: list = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested body must not exhaust the recursion limit
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            if len(stack) > MAX_DIMS:
                raise TritonError(f"input '{name}': data is nested deeper than {MAX_DIMS}")
            stack.append(iter(item))
        else:
            flat.append(item)
            if len(flat) > limit:
                break
    return flat


_END = object()


def _json_element(name: str, datatype: str, value: Any) -> Any:
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise TritonError(f"input '{name}': BYTES data must be strings, got {value!r:.40}")
        return value
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise TritonError(f"input '{name}': BOOL data must be true or false, "
                              f"got {value!r:.40}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TritonError(f"input '{name}': {datatype} data must be numbers, got {value!r:.40}")
    if datatype.startswith(("INT", "UINT")):
        if not isinstance(value, int) and not float(value).is_integer():
            raise TritonError(f"input '{name}': {datatype} data must be integers, "
                              f"got {value!r:.40}")
        return int(value)
    return float(value)


def _split_bytes(name: str, raw: bytes, *, limit: int) -> list[bytes]:
    """Length-prefixed BYTES elements: a 4-byte little-endian size, then the bytes; stops
    once there are more than `limit`."""
    values, offset = [], 0
    while offset < len(raw) and len(values) <= limit:
        if offset + 4 > len(raw):
            raise TritonError(f"input '{name}': BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise TritonError(f"input '{name}': a BYTES element of {size} bytes runs past "
                              f"the end of the data")
        values.append(raw[offset:offset + size])
        offset += size
    return values


def elements(tensors: Sequence[Tensor], name: str) -> tuple[Any, ...] | None:
    for tensor in tensors:
        if tensor.name == name:
            return tensor.values
    return None
