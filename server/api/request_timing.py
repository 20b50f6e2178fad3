"""When things happened to a request, for its metrics and its log line.

Times are time.monotonic() seconds: on Linux one clock for every process, so the moment the
engine process admitted a request compares with the moments the api process saw.

    # one engine request (one choice):
    # arrival ──queue──▶ admitted ──prefill──▶ first token ──decode──▶ last token ─▶ finished
    # |◀──────── time to first token ────────▶|
    # |◀───────────────────────── end-to-end latency ───────────────────────────────▶|
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

request_logger = logging.getLogger("inflightd.requests")


def _span(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)


@dataclass
class ChoiceTiming:
    """One engine request's moments, filled in as its outputs arrive."""

    arrival_at: float  # sent to the engine
    admitted_at: float | None = None  # the step that first took it up began
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    num_tokens: int = 0
    finish_reason: str | None = None  # "stop", "length", "abort"; None: it failed
    token_gaps: list[float] = field(default_factory=list)  # seconds per token after the first

    def on_tokens(self, now: float, num_tokens: int) -> None:
        """num_tokens arrived at `now`: more than one when engine steps merged while this
        request's task was busy (output_stream.py). Each token after the first has a gap:
        the time since the last arrival shared out evenly, and none for tokens that came
        with the first."""
        if num_tokens == 0:
            return
        if self.last_token_at is not None:
            self.token_gaps.extend([(now - self.last_token_at) / num_tokens] * num_tokens)
        else:
            self.first_token_at = now
            self.token_gaps.extend([0.0] * (num_tokens - 1))
        self.last_token_at = now
        self.num_tokens += num_tokens

    def finish(self, now: float, finish_reason: str | None) -> None:
        if self.finished_at is None:
            self.finished_at = now
            self.finish_reason = finish_reason

    @property
    def queue_time(self) -> float | None:
        return _span(self.arrival_at, self.admitted_at)

    @property
    def prefill_time(self) -> float | None:
        return _span(self.admitted_at, self.first_token_at)

    @property
    def decode_time(self) -> float | None:
        return _span(self.first_token_at, self.last_token_at)

    @property
    def time_to_first_token(self) -> float | None:
        return _span(self.arrival_at, self.first_token_at)

    @property
    def e2e_latency(self) -> float | None:
        return _span(self.arrival_at, self.finished_at)


@dataclass(frozen=True)
class GenerationRecord:
    """One api request, as its log line tells it."""

    request_id: str
    num_prompt_tokens: int
    num_completion_tokens: int
    num_cached_tokens: int
    time_to_first_token: float | None  # from the request's start to its first token
    latency: float
    finish_reasons: tuple[str | None, ...]  # per choice; None: it failed
    grammar: str | None = None  # the kind of grammar its output followed, if any
    grammar_failed: bool = False  # its grammar did not compile (answered with a 400)


def first_token_at(timings: Sequence[ChoiceTiming]) -> float | None:
    moments = [t.first_token_at for t in timings if t.first_token_at is not None]
    return min(moments) if moments else None


def log_generation(record: GenerationRecord) -> None:
    """One line per finished api request (a JSON object with --log-format json)."""
    reasons = record.finish_reasons
    finish_reason = reasons[0] if len(set(reasons)) == 1 else list(reasons)
    ttft = record.time_to_first_token
    fields = {"event": "request_finished", "req_id": record.request_id,
              "prompt_tokens": record.num_prompt_tokens,
              "completion_tokens": record.num_completion_tokens,
              "cached_tokens": record.num_cached_tokens,
              "ttft_s": None if ttft is None else round(ttft, 6),
              "latency_s": round(record.latency, 6), "finish_reason": finish_reason,
              "grammar": record.grammar}
    ttft_text = "-" if ttft is None else f"{ttft:.3f} s"
    grammar_text = "" if record.grammar is None else f", grammar {record.grammar}"
    request_logger.info("%s: %d prompt + %d completion tokens, first token %s, %.3f s, %s%s",
                        record.request_id, record.num_prompt_tokens,
                        record.num_completion_tokens, ttft_text, record.latency,
                        finish_reason, grammar_text, extra={"fields": fields})
