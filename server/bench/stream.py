"""Turn one request's SSE chunks, with their arrival times, into TTFT, ITLs and token counts.

How ITLs are measured (the choice the benchmark documents):
- A chunk is never taken to be a token: a chunk may carry several tokens, or none (a role-only
  first chunk, a token whose text is held back until a UTF-8 character is complete, the final
  usage chunk).
- TTFT is the time until the first chunk that carries text (a response with no text at all
  takes its end-to-end time as TTFT).
- When the server reports a running token count on every chunk (vLLM's
  `stream_options.continuous_usage_stats`), a chunk that added k tokens contributes k ITLs, each
  its gap since the previous text chunk divided by k; the first chunk's extra tokens count as gaps
  of 0. The ITLs then number output_tokens - 1 and sum to the decode time.
- Otherwise each text chunk after the first contributes one ITL, its gap (vLLM's convention).
- Output token counts come from the final `usage.completion_tokens`; only when the server gives
  no usage is the text re-encoded with the benchmark tokenizer. TPOT is computed from the token
  count, not from the ITLs, so it is exact either way (metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StreamRecorder:
    """Fed each parsed chunk in order with its time (seconds since the request was sent)."""

    endpoint: str  # "completions", "chat" or "triton" (generate_stream events)
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    _last_text_time: float | None = None
    _tokens_at_last_text: int = 0

    def add_chunk(self, chunk: dict, at: float) -> None:
        if "error" in chunk:
            self.error = _error_message(chunk["error"])
            return
        usage = chunk.get("usage") or None
        if self.endpoint == "triton":
            text = chunk.get("text_output") or ""
        else:
            text = "".join(self._chunk_text(choice) for choice in chunk.get("choices") or [])
        if text:
            self._record_text(text, at, usage)
        if usage is not None:
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)

    def _chunk_text(self, choice: dict) -> str:
        if self.endpoint == "chat":
            delta = choice.get("delta") or {}
            return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
        return choice.get("text") or ""

    def _record_text(self, text: str, at: float, usage: dict | None) -> None:
        self.text_parts.append(text)
        running = None if usage is None else usage.get("completion_tokens")
        if self._last_text_time is None:
            self.ttft = at
            if running is not None:
                self.itls.extend([0.0] * max(running - 1, 0))
        else:
            gap = at - self._last_text_time
            added = None if running is None else running - self._tokens_at_last_text
            if added is not None and added >= 1:
                self.itls.extend([gap / added] * added)
            else:
                self.itls.append(gap)
        self._last_text_time = at
        if running is not None:
            self._tokens_at_last_text = running

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def _error_message(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
