"""The ensemble's outputs: one response's worth of output (a Step), and the tensors it is
sent as, by name, as the request and its named outputs ask."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.triton.errors import TritonError
from server.triton.request import EnsembleRequest
from server.triton.tensors import Tensor

LOGPROB_OUTPUTS = frozenset({"cum_log_probs", "output_log_probs"})


@dataclass(frozen=True)
class Step:
    """New text, its tokens' logprobs, whether the output ends here, and token counts (the
    prompt's, and the output tokens this response covers)."""

    text: str
    logprobs: tuple[float, ...]
    finished: bool
    num_input_tokens: int = 0
    num_output_tokens: int = 0


def with_requested_outputs(request: EnsembleRequest,
                           requested: tuple[str, ...] | None) -> EnsembleRequest:
    """The request as the outputs named need it (log probs computed when one of theirs is
    named); an output the ensemble does not have is refused here, before anything runs."""
    if requested is not None and LOGPROB_OUTPUTS & set(requested):
        request = dataclasses.replace(request, return_log_probs=True)
    output_names(request, requested)
    return request


# each output: its datatype, and its values (flat) in one response
_OUTPUTS: dict[str, tuple[str, Callable[[Step], tuple]]] = {
    "text_output": ("BYTES", lambda step: (step.text,)),
    "cum_log_probs": ("FP32", lambda step: (float(sum(step.logprobs)),)),
    "output_log_probs": ("FP32", lambda step: step.logprobs),
    "num_input_tokens": ("INT32", lambda step: (step.num_input_tokens,)),
    "num_output_tokens": ("INT32", lambda step: (step.num_output_tokens,)),
    "batch_index": ("INT32", lambda _step: (0,)),
}


def output_names(request: EnsembleRequest,
                 requested: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The outputs a response carries: those `requested`, else text_output plus what the
    request's return_* inputs ask for; an output the ensemble does not have is an error."""
    names = requested or _default_outputs(request)
    for name in names:
        if name not in _OUTPUTS:
            raise TritonError(f"unexpected inference output '{name}' for the ensemble model")
    return names


def output_tensors(step: Step, request: EnsembleRequest,
                   requested: tuple[str, ...] | None = None) -> list[Tensor]:
    """The outputs of one response, shaped [batch 1, beam 1, ...] (output_log_probs: one
    value per token)."""
    tensors = []
    for name in output_names(request, requested):
        datatype, values_of = _OUTPUTS[name]
        values = values_of(step)
        shape = (1, 1, len(values)) if name == "output_log_probs" else (1, 1)
        tensors.append(Tensor(name, datatype, shape, values))
    return tensors


def generate_fields(step: Step, names: tuple[str, ...]) -> dict[str, Any]:
    """The outputs as a generate-extension answer has them: by name, one value as a scalar
    (output_log_probs always a list)."""
    fields: dict[str, Any] = {}
    for name in names:
        values = _OUTPUTS[name][1](step)
        fields[name] = list(values) if name == "output_log_probs" else values[0]
    return fields


def _default_outputs(request: EnsembleRequest) -> tuple[str, ...]:
    names = ["text_output"]
    if request.return_log_probs:
        names += ["cum_log_probs", "output_log_probs"]
    if request.return_num_input_tokens:
        names.append("num_input_tokens")
    if request.return_num_output_tokens:
        names.append("num_output_tokens")
    return tuple(names)
