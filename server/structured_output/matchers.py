"""The runner's grammar state: a matcher per running constrained request, fed each sampled
token, and the token bitmask of a step's constrained rows filled from them on the host.

    register(req_id, compiled)      when the grammar compiles (before the request runs)
    start(req_id, output_ids)       each time the request is (re)scheduled as new: a fresh
                                    matcher replays the tokens it already has (preemption)
    fill(req_ids) -> StepMask       the rows to mask this step, and their bitmask
    accept(req_id, token_id)        each sampled token, once it is on the host
    stop(req_id) / release(req_id)  preempted (the compiled grammar stays) / finished
    follows_any(req_ids)            whether a step has constrained rows at all

Bitmask layout (xgrammar's): int32 [rows, ceil(tokenizer vocabulary / 32)]; bit j of word w
allows token 32 * w + j. The logits may be wider (a padded embedding): the mask's
application never allows those ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger("inflightd.engine")
# Rows filled on the calling thread below this; xgrammar's threaded batch fill above.
BATCH_FILL_MIN_ROWS = 16


@dataclass(frozen=True)
class StepMask:
    rows: tuple[int, ...]  # rows of the step's logits that follow a grammar
    bitmask: torch.Tensor  # int32 [len(rows), ceil(vocab / 32)], on the host


class GrammarMatchers:
    def __init__(self, *, max_rows: int = 256, pin_memory: bool = False) -> None:
        """pin_memory: the bitmask lives in pinned memory, for a non-blocking copy to a GPU
        (the runner fills it again only after the step that read it is done). Its width
        comes from the first grammar (the tokenizer's vocabulary)."""
        import xgrammar

        self._xgr = xgrammar
        self.vocab_size: int | None = None
        self._max_rows = max_rows
        self._pin_memory = pin_memory
        self._compiled: dict[str, object] = {}
        self._matchers: dict[str, object] = {}
        self._bitmask: torch.Tensor | None = None
        # One row's fill costs ~200 us at a 128k vocabulary inside a JSON string (H200 host,
        # bench/grammar_costs.py): 256 rows took 52 ms on one thread, 5 ms on 16.
        self._batch = xgrammar.BatchGrammarMatcher(max_threads=max(1, os.cpu_count() or 1))

    def __contains__(self, req_id: str) -> bool:
        return req_id in self._matchers

    @property
    def num_running(self) -> int:
        return len(self._matchers)

    def register(self, req_id: str, compiled) -> None:
        if self._bitmask is None:
            self.vocab_size = compiled.tokenizer_info.vocab_size
            self._bitmask = self._allocate(self._max_rows)
        self._compiled[req_id] = compiled

    def start(self, req_id: str, output_token_ids: Sequence[int]) -> None:
        """A fresh matcher for a request scheduled as new, with the tokens it already has
        replayed (a request recomputed after preemption); no-op without a grammar."""
        compiled = self._compiled.get(req_id)
        if compiled is None:
            return
        matcher = self._xgr.GrammarMatcher(compiled)
        for token_id in output_token_ids:
            if not matcher.accept_token(token_id):
                logger.warning("request %s: replaying its tokens, the grammar refused "
                               "token %d; it runs unconstrained from here", req_id, token_id)
                return
        self._matchers[req_id] = matcher

    def stop(self, req_id: str) -> None:
        self._matchers.pop(req_id, None)

    def release(self, req_id: str) -> None:
        self._matchers.pop(req_id, None)
        self._compiled.pop(req_id, None)

    def follows_any(self, req_ids: Sequence[str]) -> bool:
        """Whether any of these requests has a live matcher (a cheap test per step)."""
        matchers = self._matchers
        return bool(matchers) and any(req_id in matchers for req_id in req_ids)

    def rows_to_mask(self, req_ids: Sequence[str]) -> tuple[int, ...]:
        """Rows whose request has a live matcher. A terminated one (it took its stop token
        and awaits retirement) samples a token that is dropped, so it is not masked."""
        matchers = self._matchers
        return tuple(row for row, req_id in enumerate(req_ids)
                     if req_id in matchers and not matchers[req_id].is_terminated())

    def fill(self, req_ids: Sequence[str], rows: Sequence[int]) -> StepMask:
        """The bitmask of `rows` (from rows_to_mask), their matchers' next allowed tokens."""
        if len(rows) > self._bitmask.shape[0]:
            self._bitmask = self._allocate(len(rows))
        bitmask = self._bitmask[:len(rows)]
        matchers = [self._matchers[req_ids[row]] for row in rows]
        if len(matchers) < BATCH_FILL_MIN_ROWS:
            for index, matcher in enumerate(matchers):
                matcher.fill_next_token_bitmask(bitmask, index)
        else:
            self._batch.batch_fill_next_token_bitmask(matchers, bitmask)
        return StepMask(rows=tuple(rows), bitmask=bitmask)

    def _allocate(self, num_rows: int):
        words = (self.vocab_size + 31) // 32
        return torch.full((num_rows, words), -1, dtype=torch.int32,
                          pin_memory=self._pin_memory)

    def accept_many(self, req_ids: Sequence[str], token_ids: Sequence[int]) -> None:
        """accept() for a step's tokens; the grammar-bound ones in one threaded batch."""
        pairs = [(req_id, token_id) for req_id, token_id in zip(req_ids, token_ids)
                 if req_id in self._matchers
                 and not self._matchers[req_id].is_terminated()]
        if len(pairs) < BATCH_FILL_MIN_ROWS:
            for req_id, token_id in pairs:
                self.accept(req_id, token_id)
            return
        matchers = [self._matchers[req_id] for req_id, _ in pairs]
        accepted = self._batch.batch_accept_token(matchers, [t for _, t in pairs])
        for (req_id, token_id), ok in zip(pairs, accepted):
            if not ok:
                logger.warning("request %s: the grammar refused sampled token %d; it runs "
                               "unconstrained from here", req_id, token_id)
                del self._matchers[req_id]

    def accept(self, req_id: str, token_id: int) -> None:
        matcher = self._matchers.get(req_id)
        if matcher is None or matcher.is_terminated():
            return  # unconstrained, or a token sampled after its stop token (dropped)
        if not matcher.accept_token(token_id):
            logger.warning("request %s: the grammar refused sampled token %d; it runs "
                           "unconstrained from here", req_id, token_id)
            del self._matchers[req_id]
