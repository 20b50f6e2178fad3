"""The scheduler's own view of a request, and the sampling parameters it carries.

Only the scheduler mutates a `Request`; other layers see ids, counts and token lists
through the plain-data types in `output.py`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.structured_output.spec import GrammarSpec

if TYPE_CHECKING:  # output.py imports this module
    from server.scheduler.output import TokenLogprobs

MAX_LOGPROBS = 20
# OpenAI's logit_bias limits (server/engine/step/logit_bias.py applies it)
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_ENTRIES = 300


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop. temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # None: no top-k cut
    min_p: float = 0.0
    seed: int | None = None
    # 0: compute the prompt and sample nothing (for its prompt logprobs, as an evaluation
    # client scoring text asks)
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None  # None: no logprobs; k: the sampled one plus top k
    # None: none; k: each prompt token's logprob (from the second on), its rank and the
    # model's top k there, computed during prefill (server/engine/step/prompt_logprobs.py)
    prompt_logprobs: int | None = None
    grammar: GrammarSpec | None = None  # the output must follow it (structured outputs)
    # (token_id, bias) pairs added to those tokens' logits before sampling, ids distinct
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Token sequences that must never be completed (TensorRT-LLM's bad_words).
    bad_words: tuple[tuple[int, ...], ...] = ()
    # stop_token_ids are banned until this many tokens are out (the engine adds the model's
    # end tokens to them for requests that set it, unless ignore_eos).
    min_tokens: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b))
                                                     for t, b in self.logit_bias))
        _check_logit_bias(self.logit_bias)
        object.__setattr__(self, "bad_words", tuple(tuple(w) for w in self.bad_words))
        _check(all(self.bad_words), "bad_words", "must not hold an empty sequence")
        _check(self.min_tokens >= 0, "min_tokens", f"must be >= 0, got {self.min_tokens}")
        _check(math.isfinite(self.temperature) and self.temperature >= 0,
               "temperature", f"must be a finite number >= 0, got {self.temperature}")
        _check(math.isfinite(self.top_p) and 0 < self.top_p <= 1,
               "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k is None or self.top_k >= 1,
               "top_k", f"must be None or >= 1, got {self.top_k}")
        _check(math.isfinite(self.min_p) and 0 <= self.min_p <= 1,
               "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(self.max_tokens >= 0, "max_tokens", f"must be >= 0, got {self.max_tokens}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(math.isfinite(value) and -2 <= value <= 2,
                   name, f"must be in [-2, 2], got {value}")
        _check(math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
               "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or 0 <= value <= MAX_LOGPROBS,
                   name, f"must be None or in [0, {MAX_LOGPROBS}], got {value}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class SamplingParamsError(ValueError):
    """A sampling parameter is out of range; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param} {message}")
        self.param = param


def _check_logit_bias(pairs: tuple[tuple[int, float], ...]) -> None:
    _check(len(pairs) <= MAX_LOGIT_BIAS_ENTRIES, "logit_bias",
           f"may have at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {len(pairs)}")
    _check(len({token_id for token_id, _ in pairs}) == len(pairs), "logit_bias",
           "names a token id twice")
    for token_id, bias in pairs:
        _check(token_id >= 0, "logit_bias", f"token ids must be >= 0, got {token_id}")
        _check(math.isfinite(bias) and -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS, "logit_bias",
               f"biases must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {bias}")


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise SamplingParamsError(param, message)


class RequestStatus(enum.Enum):
    WAITING_FOR_GRAMMAR = "waiting_for_grammar"  # held aside until its grammar compiles
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISHED = frozenset({RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                       RequestStatus.FINISHED_ABORTED})
_FINISH_REASONS = {RequestStatus.FINISHED_STOPPED: "stop",
                   RequestStatus.FINISHED_LENGTH: "length",
                   RequestStatus.FINISHED_ABORTED: "abort"}


@dataclass
class Request:
    """A request as the scheduler tracks it.

    # | prompt_token_ids | output_token_ids | pending |
    # |<---------- num_computed_tokens ---------->|    ^ num_tokens + num_pending_tokens
    #                                       ^ num_tokens

    Pending tokens were sampled by a step still in flight (async scheduling): their ids are
    on the device, not here yet. A step may compute the newest one (the runner feeds it
    from the device); update() appends each one when its step is read back.
    """

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None = None
    arrival_time: float = 0.0
    priority: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache on first schedule
    num_pending_tokens: int = 0
    rope_table: int = 0  # the rotary table its cached KV was computed with (LongRoPE)
    status: RequestStatus = RequestStatus.WAITING
    # While its prompt logprobs are wanted and not yet handed out (with its first sampled
    # token): entry i is prompt token i + 1's, gathered chunk by chunk; None otherwise.
    prompt_logprobs: list[TokenLogprobs] | None = None

    def __post_init__(self) -> None:
        if self.sampling_params.prompt_logprobs is not None and not self.output_token_ids:
            self.prompt_logprobs = []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens_with_pending(self) -> int:
        return self.num_tokens + self.num_pending_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        """What its next chunks must still compute: 1 for a decode."""
        return self.num_tokens_with_pending - self.num_computed_tokens

    @property
    def awaits_last_token(self) -> bool:
        """Its pending tokens already reach max_tokens: nothing more to compute."""
        num_outputs = len(self.output_token_ids) + self.num_pending_tokens
        return self.num_pending_tokens > 0 and num_outputs >= self.sampling_params.max_tokens

    def stop_status(self, token_id: int) -> RequestStatus | None:
        """How the request ends with token_id appended as its newest output (None: not)."""
        params = self.sampling_params
        if not params.ignore_eos and token_id == self.eos_token_id:
            return RequestStatus.FINISHED_STOPPED
        if token_id in params.stop_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if len(self.output_token_ids) >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    @property
    def max_kv_slots(self) -> int:
        """KV slots it holds at its longest: the last sampled token is never fed back, so
        it needs none; every prompt token needs one (max_tokens 0 samples nothing)."""
        return self.num_prompt_tokens + max(self.sampling_params.max_tokens - 1, 0)

    def token_slice(self, start: int, end: int) -> tuple[int, ...]:
        """all_token_ids[start:end] without copying the whole history each step."""
        prompt, outputs = self.prompt_token_ids, self.output_token_ids
        num_prompt = len(prompt)
        if end <= num_prompt:
            return tuple(prompt[start:end])
        if start >= num_prompt:
            return tuple(outputs[start - num_prompt:end - num_prompt])
        return tuple(prompt[start:]) + tuple(outputs[:end - num_prompt])
