"""One ensemble request, read from named inputs (generate JSON, KServe v2 tensors or gRPC)
and checked: what TensorRT-LLM's ensemble takes, as far as this engine can honour it."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.triton.ensemble import INPUTS_BY_NAME, UNSUPPORTED_INPUTS, TensorSpec
from server.triton.errors import TritonError
from server.triton.tensors import NUMPY_TYPES, Tensor

MAX_WORDS = 64  # bad_words / stop_words entries, after splitting
MAX_WORD_CHARS = 256
# Inputs that ask for something this engine cannot do when set away from their default.
_OFF_ONLY = {"return_context_logits": "context logits", "return_generation_logits":
             "generation logits", "return_perf_metrics": "perf metrics"}


@dataclass(frozen=True)
class EnsembleRequest:
    text_input: str
    max_tokens: int
    bad_words: tuple[str, ...] = ()
    stop_words: tuple[str, ...] = ()
    # TensorRT-LLM deployments set exclude_input_in_output: text_output is the completion
    # alone unless a request asks for the prompt too
    exclude_input_in_output: bool = True
    end_id: int | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_tokens: int = 0
    seed: int | None = None
    return_log_probs: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    stream: bool | None = None  # None: not given
    guide_type: str | None = None  # guided_decoding_guide_type: json, json_schema, ...
    guide: str | None = None


def from_tensors(tensors: Sequence[Tensor]) -> EnsembleRequest:
    """From KServe v2 tensors (HTTP infer or gRPC): names and datatypes are checked."""
    values: dict[str, tuple[Any, ...]] = {}
    for tensor in tensors:
        spec = _known_input(tensor.name)
        if tensor.name in values:
            raise TritonError(f"input '{tensor.name}' is given twice")
        if not _datatype_fits(spec, tensor.datatype):
            raise TritonError(f"input '{tensor.name}' must be {spec.datatype}, "
                              f"got {tensor.datatype}")
        values[tensor.name] = tensor.values
    return _build(values)


def from_generate_body(body: Any) -> EnsembleRequest:
    """From a generate-extension body: inputs by name, each a value or a list of values;
    values under "parameters" count as inputs too, as older TensorRT-LLM clients send them."""
    if not isinstance(body, dict):
        raise TritonError("the request body must be a JSON object")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise TritonError("'parameters' must be a JSON object")
    fields = {k: v for k, v in parameters.items() if k in INPUTS_BY_NAME}
    fields |= {k: v for k, v in body.items() if k not in ("id", "parameters")}
    values: dict[str, tuple[Any, ...]] = {}
    for name, value in fields.items():
        spec = _known_input(name)
        items = tuple(value) if isinstance(value, list) else (value,)
        values[name] = tuple(_json_value(spec, item) for item in items)
    return _build(values)


def _known_input(name: str) -> TensorSpec:
    spec = INPUTS_BY_NAME.get(name)
    if spec is None:
        if name in UNSUPPORTED_INPUTS:
            raise TritonError(f"input '{name}' is not supported by this server")
        raise TritonError(f"unexpected inference input '{name}' for the ensemble model")
    return spec


def _datatype_fits(spec: TensorSpec, datatype: str) -> bool:
    """The declared type, or one of its family (clients send INT64 for INT32 and so on)."""
    if spec.kind == "text" or spec.kind == "bool":
        return datatype == spec.datatype
    if spec.kind == "int":
        return datatype.startswith(("INT", "UINT"))
    return datatype in NUMPY_TYPES and datatype.startswith("FP")


def _json_value(spec: TensorSpec, value: Any) -> Any:
    ok = {"text": isinstance(value, str), "bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, int | float) and not isinstance(value, bool)}[spec.kind]
    if not ok:
        kind = {"text": "a string", "bool": "true or false", "int": "an integer",
                "float": "a number"}[spec.kind]
        raise TritonError(f"input '{spec.name}' must be {kind}, got {value!r:.40}")
    return value


def _build(values: Mapping[str, tuple[Any, ...]]) -> EnsembleRequest:
    for name, what in _OFF_ONLY.items():
        if _one(values, name, default=False):
            raise TritonError(f"input '{name}': {what} are not supported by this server")
    beam_width = _one(values, "beam_width", default=1)
    if beam_width != 1:
        raise TritonError(f"beam_width {beam_width} is not supported: this server has no "
                          f"beam search yet; send beam_width 1 (or leave it out)")
    if _one(values, "num_return_sequences", default=1) != 1:
        raise TritonError("num_return_sequences must be 1")
    if _words(values, "embedding_bias_words") or values.get("embedding_bias_weights"):
        raise TritonError("input 'embedding_bias_words': embedding bias is not supported")
    text = _text(_required(values, "text_input"), "text_input")
    if not text:
        raise TritonError("input 'text_input' must not be empty")
    max_tokens = _required(values, "max_tokens")
    if max_tokens < 1:
        raise TritonError(f"input 'max_tokens' must be >= 1, got {max_tokens}")
    min_tokens = max(_one(values, "min_tokens", default=0), _one(values, "min_length",
                                                                 default=0))
    seed = _one(values, "seed", default=None)
    return EnsembleRequest(
        text_input=text, max_tokens=max_tokens, bad_words=_words(values, "bad_words"),
        stop_words=_words(values, "stop_words"),
        exclude_input_in_output=_one(values, "exclude_input_in_output", default=True),
        end_id=_one(values, "end_id", default=None), top_k=_one(values, "top_k", default=None),
        top_p=_one(values, "top_p", default=None),
        temperature=_one(values, "temperature", default=None),
        repetition_penalty=_one(values, "repetition_penalty", default=None),
        presence_penalty=_one(values, "presence_penalty", default=None),
        frequency_penalty=_one(values, "frequency_penalty", default=None),
        min_tokens=min_tokens,
        seed=seed if seed is not None else _one(values, "random_seed", default=None),
        return_log_probs=_one(values, "return_log_probs", default=False),
        return_num_input_tokens=_one(values, "return_num_input_tokens", default=False),
        return_num_output_tokens=_one(values, "return_num_output_tokens", default=False),
        stream=_one(values, "stream", default=None), **_guide(values))


def _guide(values: Mapping[str, tuple[Any, ...]]) -> dict[str, str | None]:
    kind = _one(values, "guided_decoding_guide_type", default=None)
    guide = _one(values, "guided_decoding_guide", default=None)
    return {"guide_type": None if kind is None else _text(kind, "guided_decoding_guide_type"),
            "guide": None if guide is None else _text(guide, "guided_decoding_guide")}


def _required(values: Mapping[str, tuple[Any, ...]], name: str) -> Any:
    if name not in values:
        raise TritonError(f"input '{name}' is required")
    return _one(values, name, default=None)


def _one(values: Mapping[str, tuple[Any, ...]], name: str, *, default: Any) -> Any:
    """A scalar input: one element (this server takes one request per call, batch 1)."""
    items = values.get(name)
    if items is None:
        return default
    if len(items) != 1:
        raise TritonError(f"input '{name}' must hold one element (batch size 1), "
                          f"got {len(items)}")
    return items[0]


def _text(value: Any, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise TritonError(f"input '{name}' is not valid UTF-8") from None
    return value


def _words(values: Mapping[str, tuple[Any, ...]], name: str) -> tuple[str, ...]:
    """Each element is a comma-separated list, as TensorRT-LLM's preprocessing reads it
    (csv quoting lets a word hold a comma); empty words are dropped."""
    words: list[str] = []
    for item in values.get(name, ()):
        text = _text(item, name)
        if len(text) > MAX_WORDS * (MAX_WORD_CHARS + 3):
            raise TritonError(f"input '{name}' is too long")
        try:
            rows = list(csv.reader([text]))
        except csv.Error as exc:
            raise TritonError(f"input '{name}' is not a comma-separated list: {exc}") from None
        for row in rows:
            words.extend(word for word in row if word)
    if len(words) > MAX_WORDS:
        raise TritonError(f"input '{name}' may hold at most {MAX_WORDS} words")
    if any(len(word) > MAX_WORD_CHARS for word in words):
        raise TritonError(f"input '{name}': a word may have at most {MAX_WORD_CHARS} "
                          f"characters")
    return tuple(words)
