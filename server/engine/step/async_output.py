"""What lets the host run one step ahead of the GPU (async scheduling).

A launched step's sampled ids stay on the device: the next step's pending inputs are
written from them there (TokenFeedback), and they reach the host through a non-blocking
copy into pinned memory that the engine waits for only when it updates the scheduler
(InFlightStep), after it has already launched the next step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from server.engine.step.inputs import host_to_device
from server.engine.step.prompt_logprobs import PendingPromptLogprobs
from server.scheduler.output import ModelOutput


class MissingPendingTokenError(RuntimeError):
    """A step feeds a request's pending token, but the previous step sampled none for it."""


class InFlightStep:
    """A launched step. output() waits for its sampled ids (and the prompt logprobs it
    computed, if any) to reach the host."""

    def __init__(self, req_ids: tuple[str, ...], *, output: ModelOutput | None = None,
                 host_token_ids: torch.Tensor | None = None,
                 ready: torch.cuda.Event | None = None,
                 prompt_logprobs: PendingPromptLogprobs | None = None) -> None:
        self.req_ids = req_ids
        self._output = output
        self._host_token_ids = host_token_ids
        self._ready = ready
        self._prompt_logprobs = prompt_logprobs

    @classmethod
    def done(cls, output: ModelOutput, *,
             prompt_logprobs: PendingPromptLogprobs | None = None) -> "InFlightStep":
        return cls(output.req_ids, output=output, prompt_logprobs=prompt_logprobs)

    @classmethod
    def copying(cls, req_ids: tuple[str, ...], token_ids: torch.Tensor, *,
                prompt_logprobs: PendingPromptLogprobs | None = None) -> "InFlightStep":
        """token_ids: int64 [len(req_ids)] on the device, still being computed."""
        if token_ids.device.type != "cuda":
            return cls.done(ModelOutput(req_ids=req_ids,
                                        sampled_token_ids=tuple(token_ids.tolist())),
                            prompt_logprobs=prompt_logprobs)
        host = torch.empty(token_ids.shape, dtype=torch.int64, pin_memory=True)
        host.copy_(token_ids, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(req_ids, host_token_ids=host, ready=ready, prompt_logprobs=prompt_logprobs)

    def output(self) -> ModelOutput:
        if self._output is None:
            self._ready.synchronize()
            self._output = ModelOutput(req_ids=self.req_ids,
                                       sampled_token_ids=tuple(self._host_token_ids.tolist()))
            self._host_token_ids = self._ready = None
        if self._prompt_logprobs is not None:
            self._output = replace(self._output,
                                   prompt_logprobs=self._prompt_logprobs.resolve())
            self._prompt_logprobs = None
        return self._output


class TokenFeedback:
    """The ids the last launched step sampled, on the device, by request."""

    def __init__(self) -> None:
        self._token_ids: torch.Tensor | None = None
        self._row_of: dict[str, int] = {}

    def remember(self, req_ids: Sequence[str], token_ids: torch.Tensor) -> None:
        self._token_ids = token_ids
        self._row_of = {req_id: row for row, req_id in enumerate(req_ids)}

    def write_into(self, input_ids: torch.Tensor, *, rows: Sequence[int],
                   req_ids: Sequence[str]) -> None:
        """input_ids[rows[i]] = the id the last step sampled for req_ids[i], on the device,
        queued after that step (nothing waits here)."""
        if not rows:
            return
        try:
            sources = [self._row_of[req_id] for req_id in req_ids]
        except KeyError as exc:
            raise MissingPendingTokenError(
                f"request {exc.args[0]!r} feeds a pending token but the last step sampled "
                f"none for it") from None
        count = len(rows)
        if list(rows) == sources == list(range(count)):  # the steady decode batch: one copy
            input_ids[:count].copy_(self._token_ids[:count])
            return
        index = host_to_device(torch.tensor([*rows, *sources], dtype=torch.int64),
                               input_ids.device)
        values = self._token_ids.index_select(0, index[count:]).to(input_ids.dtype)
        input_ids.index_copy_(0, index[:count], values)
