"""Plain data crossing the scheduler's boundaries: to the runner, from the runner, to the api.

Everything here is frozen and made of ids, counts and tuples, so it can be sent over a
socket (msgspec encodes dataclasses) and never aliases the scheduler's own state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from server.scheduler.errors import ModelOutputMismatchError
from server.scheduler.request import SamplingParams


@dataclass(frozen=True)
class NewRequestData:
    """Sent the first step a request is scheduled, and again when it resumes after
    preemption: everything the runner keeps per request (penalties need the history)."""

    req_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    sampling_params: SamplingParams


@dataclass(frozen=True)
class ScheduledRequest:
    """One request's share of a step.

    # | computed earlier (in the KV cache) | token_ids (this step) |
    #                                      ^ start_position

    With async scheduling a decode may compute a token whose id the host does not know
    yet: the one the previous step sampled for this request. Then pending_input is True,
    token_ids is empty and the runner takes the id from the previous step's device output.
    """

    req_id: str
    token_ids: tuple[int, ...]
    start_position: int
    block_ids: tuple[int, ...]  # the whole block table, covering start_position + num_tokens
    sample: bool  # True when this step computes the request's newest token
    pending_input: bool = False
    # which of the model's rotary tables its positions read: 1 for a LongRoPE request
    # longer than the original context (SchedulerConfig.long_rope_threshold), else 0
    rope_table: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.pending_input


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: tuple[ScheduledRequest, ...]
    new_requests: tuple[NewRequestData, ...]
    preempted_req_ids: tuple[str, ...]  # the runner drops their state; they come back as new
    finished_req_ids: tuple[str, ...]  # finished or aborted since the last step
    num_batched_tokens: int

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def is_decode_only(self) -> bool:
        return all(s.num_tokens == 1 for s in self.scheduled)


@dataclass(frozen=True)
class TokenLogprobs:
    """A token's logprob and the top-k alternatives, highest first: the sampled token's,
    or a prompt token's (then with its rank, 1 for the model's most likely token)."""

    token_id: int
    logprob: float
    top_token_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]
    rank: int | None = None


@dataclass(frozen=True)
class PromptLogprobsChunk:
    """One step's prompt logprobs for one request: entries[i] is prompt token
    first_index + i's (first_index >= 1: the first prompt token has no context)."""

    req_id: str
    first_index: int
    entries: tuple[TokenLogprobs, ...]


@dataclass(frozen=True)
class ModelOutput:
    """The runner's answer: one sampled token for each scheduled request with sample=True,
    in the order they were scheduled; and the prompt logprobs the step computed for the
    requests that want them (any scheduled request, sampled or not)."""

    req_ids: tuple[str, ...]
    sampled_token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs | None, ...] | None = None
    prompt_logprobs: tuple[PromptLogprobsChunk, ...] = ()


@dataclass(frozen=True)
class RequestOutput:
    """What the engine tells the api about one request after a step."""

    req_id: str
    new_token_ids: tuple[int, ...]
    finish_reason: str | None  # None, "stop", "length", "abort", "error"
    num_prompt_tokens: int
    num_cached_tokens: int
    logprobs: tuple[TokenLogprobs, ...] | None = None
    # With SamplingParams.prompt_logprobs, on the request's first output: prompt tokens
    # 1 .. n-1's (the first has no context, so none)
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def sampled_in_step_order(scheduler_output: SchedulerOutput, model_output: ModelOutput
                          ) -> Iterator[tuple[int, TokenLogprobs | None]]:
    """(token id, logprobs) of each sampled chunk, in the step's order, once the model
    output is checked to sample exactly those."""
    expected = tuple(s.req_id for s in scheduler_output.scheduled if s.sample)
    if model_output.req_ids != expected:
        raise ModelOutputMismatchError(
            f"the model output samples for {list(model_output.req_ids)} but the step "
            f"scheduled sampling for {list(expected)}, in that order")
    if len(model_output.sampled_token_ids) != len(expected):
        raise ModelOutputMismatchError(
            f"{len(model_output.sampled_token_ids)} sampled tokens for {len(expected)} requests")
    logprobs: Sequence[TokenLogprobs | None] = (
        model_output.logprobs if model_output.logprobs is not None else (None,) * len(expected))
    return zip(model_output.sampled_token_ids, logprobs, strict=True)
