"""One choice's text as it grows: engine tokens -> detokenized text -> stop strings -> what
the client may see, with the logprobs of the tokens whose text it has seen.

    # detokenized text: | released to the client | held back (may start a stop string) |
    # token i is released once its text ends inside the released part (token_ends[i])
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from server.api.detokenizer import Decoder, IncrementalDetokenizer
from server.api.stop_strings import StopStringFilter
from server.scheduler.output import RequestOutput, TokenLogprobs


@dataclass(frozen=True)
class ChoiceDelta:
    """What one engine step adds to a choice."""

    index: int
    text: str
    logprobs: tuple[TokenLogprobs, ...]
    token_offsets: tuple[int, ...]  # where each logprobs token's text starts in the choice
    finish_reason: str | None  # "stop", "length" or "abort" once the choice is over
    # prompt tokens 1..'s logprobs, on the first delta (when the request asked for them)
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None


class ChoiceAssembler:
    def __init__(self, *, index: int, decoder: Decoder, prompt_token_ids: Sequence[int],
                 stop_strings: Sequence[str], stop_token_ids: Collection[int],
                 want_logprobs: bool, skip_special_tokens: bool = True) -> None:
        self.index = index
        self._detokenizer = IncrementalDetokenizer(decoder, prompt_token_ids=prompt_token_ids,
                                                   skip_special_tokens=skip_special_tokens)
        self._stop_filter = StopStringFilter(stop_strings)
        self._stop_token_ids = frozenset(stop_token_ids)
        self._want_logprobs = want_logprobs
        self._token_logprobs: list[TokenLogprobs] = []
        self._num_logprobs_released = 0
        self._released_len = 0
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_cached_tokens = 0
        self.cached_known = False  # the engine's first output says how many were cached
        self.num_generated_tokens = 0
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def stopped_by_string(self) -> bool:
        return self._stop_filter.matched is not None

    def update(self, output: RequestOutput) -> ChoiceDelta:
        """Take an engine output. If a stop string matched, the choice is finished with
        "stop" even though the engine request still runs: the caller aborts it."""
        if self.finished:
            return self._delta("")
        self.num_cached_tokens = output.num_cached_tokens
        self.cached_known = True
        prompt_logprobs = output.prompt_logprobs
        token_ids = list(output.new_token_ids)
        self.num_generated_tokens += len(token_ids)
        if self._want_logprobs and output.logprobs:
            self._token_logprobs.extend(output.logprobs)
        if (output.finish_reason == "stop" and token_ids
                and token_ids[-1] in self._stop_token_ids):
            # An EOS or stop token ends the text; its own text is not part of it.
            token_ids.pop()
        piece = self._detokenizer.push(token_ids)
        if output.finished:
            piece += self._detokenizer.flush()
        text, matched = self._stop_filter.push(piece)
        if matched:
            self.finish_reason = "stop"
        elif output.finished:
            text += self._stop_filter.flush()
            # "abort": the server aborted it while shutting down (vLLM's word for it)
            self.finish_reason = (output.finish_reason
                                  if output.finish_reason in ("length", "abort") else "stop")
        self._released_len += len(text)
        return self._delta(text, prompt_logprobs)

    def _delta(self, text: str,
               prompt_logprobs: tuple[TokenLogprobs, ...] | None = None) -> ChoiceDelta:
        logprobs, offsets = self._release_logprobs()
        return ChoiceDelta(index=self.index, text=text, logprobs=logprobs,
                           token_offsets=offsets, finish_reason=self.finish_reason,
                           prompt_logprobs=prompt_logprobs)

    def _release_logprobs(self) -> tuple[tuple[TokenLogprobs, ...], tuple[int, ...]]:
        """Logprobs of the tokens whose text the client now has. At the end: every token
        that contributed to the text (and, without a stop string, the rest, EOS included)."""
        if not self._token_logprobs:
            return (), ()
        ends = self._detokenizer.token_ends
        released, offsets = [], []
        i = self._num_logprobs_released
        while i < len(self._token_logprobs):
            start = ends[i - 1] if i > 0 else 0
            end = ends[i] if i < len(ends) else start
            if self.finished:
                if self.stopped_by_string and start >= self._released_len:
                    break  # this token only made the stop string
            elif end > self._released_len:
                break
            released.append(self._token_logprobs[i])
            offsets.append(min(start, self._released_len))
            i += 1
        if self.finished:
            i = len(self._token_logprobs)  # nothing more will be released
        self._num_logprobs_released = i
        return tuple(released), tuple(offsets)
