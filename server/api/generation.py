"""One api request on the engine: its choices fanned out into engine requests, their
outputs turned into per-step text deltas, and every engine request it started aborted when
it ends early (a stop string, an error, or a client that went away).

n > 1 on one prompt: the first choice goes alone; the others follow once it has produced
its first token. By then its prompt's full blocks are in the prefix cache, so the followers
share them instead of computing the same prompt n times.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass

from server.api.choice import ChoiceAssembler, ChoiceDelta
from server.api.detokenizer import Decoder
from server.api.errors import SERVER_ERROR, UNAVAILABLE, APIError
from server.api.request_timing import ChoiceTiming, GenerationRecord, first_token_at
from server.engine.service.client import (EngineClient, EngineDeadError, EngineRequest,
                                  EngineRequestRejected, OutputStream)
from server.scheduler.output import RequestOutput
from server.scheduler.request import SamplingParams


@dataclass(frozen=True)
class ChoicePlan:
    index: int
    prompt_index: int
    prompt_token_ids: list[int]
    sampling_params: SamplingParams


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


# RequestRejected codes of a grammar the engine could not compile in time (a 400 naming it)
GRAMMAR_FAILURES = frozenset({"invalid_grammar", "grammar_timeout"})


def engine_error(exc: Exception) -> APIError:
    if isinstance(exc, EngineRequestRejected):
        return APIError(str(exc), code=exc.code)
    return APIError(f"the engine is unavailable: {exc}", status_code=503, type=UNAVAILABLE,
                    code="engine_unavailable")


class Generation:
    def __init__(self, *, client: EngineClient, decoder: Decoder, request_id: str,
                 plans: Sequence[ChoicePlan], stop_strings: Sequence[str],
                 stop_token_ids: Collection[int], want_logprobs: bool,
                 share_prompt_blocks: bool, block_size: int, priority: int = 0,
                 skip_special_tokens: bool = True, grammar_param: str | None = None,
                 on_sent: Callable[[], None] | None = None,
                 on_finished: Callable[[GenerationRecord, list[ChoiceTiming]], None]
                 | None = None) -> None:
        """on_sent: called once the engine has the first of its requests (admission);
        on_finished: given the request's record and each choice's timing at the end;
        grammar_param: the field a grammar came from, named if it fails to compile."""
        self._client = client
        self._request_id = request_id
        self._on_sent = on_sent
        self._on_finished = on_finished
        self._grammar_param = grammar_param
        self._grammar_failed = False
        self.grammar_kind = None if grammar_param is None else \
            plans[0].sampling_params.grammar.kind
        self._started_at = time.monotonic()
        self._timings: dict[str, ChoiceTiming] = {}
        self._plans = list(plans)
        self._priority = priority
        self._req_ids = [f"{request_id}-{plan.index}" for plan in self._plans]
        self._assemblers = {
            req_id: ChoiceAssembler(index=plan.index, decoder=decoder,
                                    prompt_token_ids=plan.prompt_token_ids,
                                    stop_strings=stop_strings,
                                    stop_token_ids=set(stop_token_ids)
                                    | set(plan.sampling_params.stop_token_ids),
                                    want_logprobs=want_logprobs,
                                    skip_special_tokens=skip_special_tokens)
            for req_id, plan in zip(self._req_ids, self._plans)}
        self._num_unfinished = len(self._assemblers)  # choices still to finish
        self._share = share_prompt_blocks
        self._block_size = block_size

    def usage(self) -> Usage:
        prompts = self._prompt_assemblers()
        return Usage(
            prompt_tokens=sum(a.num_prompt_tokens for a in prompts),
            completion_tokens=sum(a.num_generated_tokens for a in self._assemblers.values()),
            cached_tokens=sum(a.num_cached_tokens for a in prompts))

    def _prompt_assemblers(self) -> list[ChoiceAssembler]:
        """One choice per prompt (its first), which counts the prompt's tokens."""
        prompts: dict[int, ChoiceAssembler] = {}
        for req_id, plan in zip(self._req_ids, self._plans):
            prompts.setdefault(plan.prompt_index, self._assemblers[req_id])
        return list(prompts.values())

    def running_usage(self) -> dict:
        """The usage so far for a chunk mid-stream (continuous_usage_stats): without
        prompt_tokens_details until the engine has said how many prompt tokens every prompt
        found cached, so no chunk reports a count that a later one corrects."""
        usage = self.usage().to_dict()
        if not all(assembler.cached_known for assembler in self._prompt_assemblers()):
            del usage["prompt_tokens_details"]
        return usage

    async def steps(self) -> AsyncIterator[list[ChoiceDelta]]:
        """Yield, per engine step, the deltas of the choices that changed. Raises APIError."""
        stream = OutputStream()
        failed = False
        try:
            first, followers = self._stage()
            self._send(stream, first)
            while self._num_unfinished:
                batch = await stream.next_batch()
                now = time.monotonic()
                deltas = []
                for output in batch:
                    if output.req_id in followers:
                        deltas += self._release_followers(stream, followers.pop(output.req_id),
                                                          leader=output, now=now)
                    delta = self._update(output, now)
                    if delta is not None:
                        deltas.append(delta)
                if deltas:
                    yield deltas
        except (EngineRequestRejected, EngineDeadError) as exc:
            failed = True
            error = engine_error(exc)
            if isinstance(exc, EngineRequestRejected) and exc.code in GRAMMAR_FAILURES:
                error.param = self._grammar_param
                self._grammar_failed = True
            raise error from exc
        except Exception:
            failed = True
            raise
        finally:
            self._client.close_stream(stream)
            self._report(stream, failed=failed)

    def _send(self, stream: OutputStream, requests: Sequence[EngineRequest]) -> None:
        self._client.add_requests(stream, requests)
        now = time.monotonic()
        for request in requests:
            self._timings[request.req_id] = ChoiceTiming(arrival_at=now)
        if self._on_sent is not None:
            self._on_sent()

    def _release_followers(self, stream: OutputStream, followers: list[EngineRequest], *,
                           leader: RequestOutput, now: float) -> list[ChoiceDelta]:
        """Send the followers of a leader that produced its first output; if the leader was
        aborted (the server is shutting down), they end as aborted without running."""
        if leader.finish_reason != "abort":
            self._send(stream, followers)
            return []
        deltas = (self._update(RequestOutput(req_id=f.req_id, new_token_ids=(),
                                             finish_reason="abort",
                                             num_prompt_tokens=len(f.prompt_token_ids),
                                             num_cached_tokens=0), now)
                  for f in followers)
        return [delta for delta in deltas if delta is not None]

    def _update(self, output: RequestOutput, now: float) -> ChoiceDelta | None:
        assembler = self._assemblers[output.req_id]
        if assembler.finished:
            return None
        if output.finish_reason == "error":
            raise APIError("the engine failed while generating", status_code=500,
                           type=SERVER_ERROR)
        timing = self._timings.get(output.req_id)
        if timing is None:
            timing = self._timings[output.req_id] = ChoiceTiming(arrival_at=now)
        timing.on_tokens(now, len(output.new_token_ids))
        delta = assembler.update(output)
        if assembler.finished:
            timing.finish(now, assembler.finish_reason)
            self._num_unfinished -= 1
        if assembler.finished and not output.finished:
            self._client.abort([output.req_id])  # a stop string matched
        if (delta.text or delta.logprobs or delta.finish_reason
                or delta.prompt_logprobs is not None):
            return delta
        return None

    def _report(self, stream: OutputStream, *, failed: bool) -> None:
        """Hand the request's record and timings on. Choices still open here were cut
        short: by the client leaving ("abort") or by a failure (no finish reason)."""
        if self._on_finished is None:
            return
        now = time.monotonic()
        cut_short = None if failed else "abort"
        for req_id, timing in self._timings.items():
            timing.admitted_at = stream.admitted_at.get(req_id)
            timing.finish(now, cut_short)
        usage = self.usage()
        first = first_token_at(list(self._timings.values()))
        record = GenerationRecord(
            request_id=self._request_id, num_prompt_tokens=usage.prompt_tokens,
            num_completion_tokens=usage.completion_tokens,
            num_cached_tokens=usage.cached_tokens,
            time_to_first_token=None if first is None else first - self._started_at,
            latency=now - self._started_at,
            finish_reasons=tuple(self._assemblers[r].finish_reason or cut_short
                                 for r in self._req_ids),
            grammar=self.grammar_kind, grammar_failed=self._grammar_failed)
        self._on_finished(record, list(self._timings.values()))

    def _stage(self) -> tuple[list[EngineRequest], dict[str, list[EngineRequest]]]:
        """Requests to send now, and those to send after a given request's first output."""
        requests = [EngineRequest(req_id=req_id, prompt_token_ids=plan.prompt_token_ids,
                                  sampling_params=plan.sampling_params, priority=self._priority)
                    for req_id, plan in zip(self._req_ids, self._plans)]
        if not self._share or self._plans[0].sampling_params.prompt_logprobs is not None:
            return requests, {}  # (requests owed prompt logprobs take no prefix hit)
        first: list[EngineRequest] = []
        followers: dict[str, list[EngineRequest]] = {}
        leader_of_prompt: dict[int, str] = {}
        for request, plan in zip(requests, self._plans):
            leader = leader_of_prompt.get(plan.prompt_index)
            if leader is None or len(plan.prompt_token_ids) < self._block_size:
                leader_of_prompt.setdefault(plan.prompt_index, request.req_id)
                first.append(request)
            else:
                followers.setdefault(leader, []).append(request)
        return first, followers
