"""KServe v2 gRPC messages to and from the front door's plain types: input tensors out of a
ModelInferRequest (typed contents or raw bytes), outputs into a ModelInferResponse."""

from __future__ import annotations

from collections.abc import Sequence

from server.triton.errors import TritonError
from server.triton.proto import grpc_service_pb2 as pb
from server.triton.tensors import (MAX_DIMS, Tensor, check_count, check_datatype, check_shape,
                                   from_json, from_raw, to_raw)

# KServe v2 datatype -> the InferTensorContents field that carries it
_CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                   "INT32": "int_contents", "INT64": "int64_contents",
                   "UINT8": "uint_contents", "UINT16": "uint_contents",
                   "UINT32": "uint_contents", "UINT64": "uint64_contents",
                   "FP32": "fp32_contents", "FP64": "fp64_contents",
                   "BYTES": "bytes_contents"}


def input_tensors(request: pb.ModelInferRequest) -> list[Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TritonError(f"raw_input_contents holds {len(raw)} entries for "
                          f"{len(request.inputs)} inputs")
    tensors = []
    for index, entry in enumerate(request.inputs):
        name = entry.name
        if not name:
            raise TritonError("every input needs a name")
        datatype = check_datatype(name, entry.datatype)
        if len(entry.shape) > MAX_DIMS:
            raise TritonError(f"input '{name}': more than {MAX_DIMS} dimensions")
        shape = check_shape(name, list(entry.shape))
        if raw:
            tensors.append(from_raw(name, datatype, shape, raw[index]))
        else:
            tensors.append(_from_contents(name, datatype, shape, entry.contents))
    return tensors


def _from_contents(name: str, datatype: str, shape: tuple[int, ...],
                   contents: pb.InferTensorContents) -> Tensor:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise TritonError(f"input '{name}': {datatype} must be sent as raw contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise TritonError(f"input '{name}' is {datatype} but carries {others[0]}")
    values = list(getattr(contents, field))
    if datatype == "BYTES":  # from_json checks the count; BYTES elements stay bytes
        check_count(name, shape, len(values))
        return Tensor(name, datatype, shape, tuple(values))
    return from_json(name, datatype, shape, values)


def infer_response(*, model_name: str, model_version: str, request_id: str,
                   tensors: Sequence[Tensor],
                   final: bool | None = None) -> pb.ModelInferResponse:
    """Outputs as raw contents, as Triton sends them; `final` sets the decoupled
    triton_final_response parameter."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version,
                                      id=request_id)
    for tensor in tensors:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype,
                             shape=list(tensor.shape))
        response.raw_output_contents.append(to_raw(tensor))
    if final is not None:
        response.parameters["triton_final_response"].bool_param = final
    return response


def requested_outputs(request: pb.ModelInferRequest) -> tuple[str, ...] | None:
    return tuple(output.name for output in request.outputs) or None


def bool_parameter(request: pb.ModelInferRequest, name: str) -> bool:
    if name not in request.parameters:
        return False
    parameter = request.parameters[name]
    return parameter.WhichOneof("parameter_choice") == "bool_param" and parameter.bool_param
