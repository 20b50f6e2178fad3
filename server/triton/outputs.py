"""The ensemble's outputs: one response's worth of output (a Step), and the tensors it is
sent as, by name, as the request and its named outputs ask."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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


NO_OUTPUT = Step(text="", logprobs=(), finished=True)


def with_requested_outputs(request: EnsembleRequest,
                           requested: tuple[str, ...] | None) -> EnsembleRequest:
    """The request as the outputs named need it (log probs computed when one of theirs is
    named); an output the ensemble does not have is refused here, before anything runs."""
    if requested is not None and LOGPROB_OUTPUTS & set(requested):
        request = dataclasses.replace(request, return_log_probs=True)
    output_tensors(NO_OUTPUT, request, requested=requested)
    return request


def output_tensors(step: Step, request: EnsembleRequest,
                   requested: tuple[str, ...] | None = None) -> list[Tensor]:
    """The outputs of one response, shaped [batch 1, beam 1, ...]: those `requested`, else
    text_output plus what the request's return_* inputs ask for."""
    names = requested or _default_outputs(request)
    made = {"text_output": lambda: Tensor("text_output", "BYTES", (1, 1), (step.text,)),
            "cum_log_probs": lambda: Tensor("cum_log_probs", "FP32", (1, 1),
                                            (float(sum(step.logprobs)),)),
            "output_log_probs": lambda: Tensor("output_log_probs", "FP32",
                                               (1, 1, len(step.logprobs)), step.logprobs),
            "num_input_tokens": lambda: Tensor("num_input_tokens", "INT32", (1, 1),
                                               (step.num_input_tokens,)),
            "num_output_tokens": lambda: Tensor("num_output_tokens", "INT32", (1, 1),
                                                (step.num_output_tokens,)),
            "batch_index": lambda: Tensor("batch_index", "INT32", (1, 1), (0,))}
    for name in names:
        if name not in made:
            raise TritonError(f"unexpected inference output '{name}' for the ensemble model")
    return [made[name]() for name in names]


def _default_outputs(request: EnsembleRequest) -> tuple[str, ...]:
    names = ["text_output"]
    if request.return_log_probs:
        names += ["cum_log_probs", "output_log_probs"]
    if request.return_num_input_tokens:
        names.append("num_input_tokens")
    if request.return_num_output_tokens:
        names.append("num_output_tokens")
    return tuple(names)
