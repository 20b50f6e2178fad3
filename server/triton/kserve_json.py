"""KServe v2 inference bodies over HTTP: a JSON request (optionally followed by binary
tensor data, Triton's binary extension) read into tensors, and tensors written back as JSON
or JSON + binary as the client asked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.triton.errors import TritonError
from server.triton.tensors import Tensor, check_datatype, check_shape, from_json, from_raw, \
    to_json_data, to_raw

HEADER_LENGTH = "inference-header-content-length"
MAX_INPUTS = 64  # the ensemble has fewer; a body listing thousands is refused early


@dataclass(frozen=True)
class InferBody:
    request_id: str | None
    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...] | None  # None: the default outputs
    binary_outputs: frozenset[str]  # outputs to send as binary data
    binary_by_default: bool  # "binary_data_output": the outputs not named go binary


def parse_infer_body(raw: bytes, header_length: str | None) -> InferBody:
    json_part, binary = _split(raw, header_length)
    try:
        body = json.loads(json_part)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the limit
        raise TritonError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise TritonError("the request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TritonError("'inputs' must be a non-empty list of tensors")
    if len(inputs) > MAX_INPUTS:
        raise TritonError(f"at most {MAX_INPUTS} inputs are allowed")
    tensors, offset = [], 0
    for entry in inputs:
        tensor, used = _input(entry, binary, offset)
        tensors.append(tensor)
        offset += used
    if offset != len(binary):
        raise TritonError(f"the body carries {len(binary) - offset} bytes of binary data "
                          f"that no input claims")
    parameters = _object(body.get("parameters", {}), "parameters")
    outputs, binary_outputs = _requested_outputs(body.get("outputs"))
    request_id = body.get("id")
    return InferBody(request_id=request_id if isinstance(request_id, str) else None,
                     inputs=tuple(tensors), outputs=outputs, binary_outputs=binary_outputs,
                     binary_by_default=parameters.get("binary_data_output") is True)


def infer_response(*, model_name: str, model_version: str, request_id: str | None,
                   tensors: Sequence[Tensor], binary: frozenset[str],
                   binary_by_default: bool) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    outputs, blobs = [], []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.shape)}
        if tensor.name in binary or binary_by_default:
            blob = to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = to_json_data(tensor)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version,
                                "outputs": outputs}
    if request_id is not None:
        document["id"] = request_id
    header = json.dumps(document).encode("utf-8")
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _split(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return raw, b""
    try:
        size = int(header_length)
    except ValueError:
        raise TritonError(f"Inference-Header-Content-Length must be an integer, "
                          f"got {header_length!r:.40}") from None
    if not 0 < size <= len(raw):
        raise TritonError(f"Inference-Header-Content-Length {size} does not fit the body "
                          f"of {len(raw)} bytes")
    return raw[:size], raw[size:]


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise TritonError(f"'{what}' must be a JSON object")
    return value


def _input(entry: Any, binary: bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor, and how many bytes of the binary data it took."""
    entry = _object(entry, "inputs[]")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise TritonError("every input needs a 'name'")
    datatype = check_datatype(name, entry.get("datatype"))
    shape = check_shape(name, entry.get("shape"))
    parameters = _object(entry.get("parameters", {}), f"inputs[{name}].parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in entry:
            raise TritonError(f"input '{name}' has neither data nor binary_data_size")
        return from_json(name, datatype, shape, entry["data"]), 0
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
            or offset + size > len(binary):
        raise TritonError(f"input '{name}': binary_data_size {size!r:.20} runs past the "
                          f"binary data of the body")
    return from_raw(name, datatype, shape, binary[offset:offset + size]), size


def _requested_outputs(value: Any) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    if value is None:
        return None, frozenset()
    if not isinstance(value, list):
        raise TritonError("'outputs' must be a list")
    names, binary = [], set()
    for entry in value:
        entry = _object(entry, "outputs[]")
        name = entry.get("name")
        if not isinstance(name, str):
            raise TritonError("every requested output needs a 'name'")
        names.append(name)
        if _object(entry.get("parameters", {}), "outputs[].parameters").get("binary_data"):
            binary.add(name)
    return tuple(names) or None, frozenset(binary)
