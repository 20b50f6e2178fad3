"""Shared test helpers: building schedulers and requests, and a fake runner that checks every
SchedulerOutput against a shadow KV cache and samples tokens as a pure function of
(req_id, position), so a preempted request must resume with exactly the same tokens."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.config import CacheConfig, SchedulerConfig
from server.scheduler.output import ModelOutput, RequestOutput, SchedulerOutput
from server.scheduler.request import Request, RequestStatus, SamplingParams
from server.scheduler.scheduler import Scheduler

VOCAB_SIZE = 32


def fake_token(*, req_id: str, position: int, vocab_size: int = VOCAB_SIZE) -> int:
    """The fake model's sample for the token at `position` of request `req_id`."""
    return zlib.crc32(f"{req_id}@{position}".encode()) % vocab_size


def expected_output(*, req_id: str, num_prompt_tokens: int, max_tokens: int,
                    eos_token_id: int | None = None, ignore_eos: bool = False,
                    stop_token_ids: Sequence[int] = ()) -> list[int]:
    """What an undisturbed run of the fake model produces for this request."""
    output: list[int] = []
    while len(output) < max_tokens:
        token_id = fake_token(req_id=req_id, position=num_prompt_tokens + len(output))
        output.append(token_id)
        if (not ignore_eos and token_id == eos_token_id) or token_id in stop_token_ids:
            break
    return output


def make_scheduler(*, num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8,
                   max_num_batched_tokens: int = 64, max_model_len: int = 256,
                   policy: str = "fcfs", enable_prefix_caching: bool = True,
                   kv_admission: str = "optimistic",
                   max_prefill_tokens: int | None = None) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens,
                        max_model_len=max_model_len, policy=policy,
                        kv_admission=kv_admission, max_prefill_tokens=max_prefill_tokens),
        CacheConfig(block_size=block_size, num_blocks=num_blocks,
                    enable_prefix_caching=enable_prefix_caching))


def make_request(req_id: str, *, prompt_token_ids: Sequence[int] | None = None,
                 num_prompt_tokens: int = 8, max_tokens: int = 4,
                 eos_token_id: int | None = None, ignore_eos: bool = False,
                 stop_token_ids: Sequence[int] = (), priority: int = 0,
                 arrival_time: float = 0.0) -> Request:
    if prompt_token_ids is None:  # distinct per req_id, so no accidental prefix sharing
        base = zlib.crc32(req_id.encode()) % 1000 * 1000
        prompt_token_ids = [base + i for i in range(num_prompt_tokens)]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos,
                            stop_token_ids=tuple(stop_token_ids))
    return Request(req_id=req_id, prompt_token_ids=list(prompt_token_ids),
                   sampling_params=params, eos_token_id=eos_token_id,
                   arrival_time=arrival_time, priority=priority)


@dataclass
class FakeRunner:
    """Plays the model runner. It keeps what a real runner keeps per request (from
    new_requests), writes each computed token into a shadow KV cache at its slot, and
    checks that every chunk's context is already in the cache at the slots its block table
    names: a wrong prefix-cache hit or a clobbered block fails here."""

    block_size: int
    tokens: dict[str, list[int]] = field(default_factory=dict)
    kv: dict[int, tuple[int, int]] = field(default_factory=dict)  # slot -> (position, token)
    num_steps: int = 0
    last_sampled_req_ids: frozenset[str] = frozenset()  # what a pending input may feed from

    def execute(self, output: SchedulerOutput) -> ModelOutput:
        self.num_steps += 1
        for req_id in output.finished_req_ids + output.preempted_req_ids:
            self.tokens.pop(req_id, None)
        for new in output.new_requests:
            if new.req_id in self.tokens:
                raise AssertionError(f"{new.req_id} sent as new while the runner has it")
            self.tokens[new.req_id] = list(new.prompt_token_ids + new.output_token_ids)
        sampled_req_ids, sampled_token_ids = [], []
        for chunk in output.scheduled:
            known = self.tokens[chunk.req_id]
            end = chunk.start_position + chunk.num_tokens
            if chunk.num_tokens < 1:
                raise AssertionError(f"{chunk.req_id}: empty chunk (nothing to compute logits at)")
            if chunk.pending_input and (end != len(known)
                                        or chunk.req_id not in self.last_sampled_req_ids):
                raise AssertionError(f"{chunk.req_id}: pending input is not the token the "
                                     f"previous step sampled")
            if tuple(known[chunk.start_position:end - chunk.pending_input]) != chunk.token_ids:
                raise AssertionError(f"{chunk.req_id}: chunk tokens differ from its history")
            if chunk.sample != (end == len(known)):
                raise AssertionError(f"{chunk.req_id}: sample flag wrong at {end}/{len(known)}")
            if len(chunk.block_ids) * self.block_size < end:
                raise AssertionError(f"{chunk.req_id}: block table too short for {end} tokens")
            self._check_context(chunk.req_id, known, chunk.block_ids, chunk.start_position)
            for position in range(chunk.start_position, end):
                self.kv[self._slot(chunk.block_ids, position)] = (position, known[position])
            if chunk.sample:
                token_id = fake_token(req_id=chunk.req_id, position=end)
                known.append(token_id)
                sampled_req_ids.append(chunk.req_id)
                sampled_token_ids.append(token_id)
        if output.num_batched_tokens != sum(c.num_tokens for c in output.scheduled):
            raise AssertionError("num_batched_tokens is not the sum of the chunks")
        self.last_sampled_req_ids = frozenset(sampled_req_ids)
        return ModelOutput(req_ids=tuple(sampled_req_ids),
                           sampled_token_ids=tuple(sampled_token_ids))

    def _slot(self, block_ids: Sequence[int], position: int) -> int:
        return block_ids[position // self.block_size] * self.block_size + position % self.block_size

    def _check_context(self, req_id: str, known: list[int], block_ids: Sequence[int],
                       num_context: int) -> None:
        for position in range(num_context):
            found = self.kv.get(self._slot(block_ids, position))
            if found != (position, known[position]):
                raise AssertionError(f"{req_id}: KV at position {position} holds {found}, "
                                     f"expected {(position, known[position])}")


def step(scheduler: Scheduler, runner: FakeRunner
         ) -> tuple[SchedulerOutput, list[RequestOutput]]:
    """One engine iteration: schedule, run, update."""
    output = scheduler.schedule()
    return output, scheduler.update(output, runner.execute(output))


def pipelined_step(scheduler: Scheduler, runner: FakeRunner,
                   in_flight: list[tuple[SchedulerOutput, ModelOutput]]) -> list[RequestOutput]:
    """One iteration of async scheduling, as EngineCore runs it: schedule and run step k,
    then update step k-1 (or both, when step k is empty). in_flight holds what is not
    updated yet."""
    output = scheduler.schedule()
    in_flight.append((output, runner.execute(output)))
    outputs: list[RequestOutput] = []
    while len(in_flight) > 1 or (in_flight and output.is_empty):
        outputs += scheduler.update(*in_flight.pop(0))
    return outputs


def run_until_done(scheduler: Scheduler, runner: FakeRunner, *, max_steps: int = 1000,
                   pipelined: bool = False,
                   in_flight: list[tuple[SchedulerOutput, ModelOutput]] | None = None
                   ) -> dict[str, tuple[list[int], str]]:
    """Step until nothing is left; returns req_id -> (the tokens streamed from now on,
    finish_reason). pipelined: async scheduling (see pipelined_step), continuing from
    in_flight when given."""
    results: dict[str, tuple[list[int], str]] = {}
    streamed: dict[str, list[int]] = {}
    in_flight = [] if in_flight is None else in_flight
    for _ in range(max_steps):
        if not scheduler.has_unfinished() and not in_flight:
            return results
        if pipelined:
            outputs = pipelined_step(scheduler, runner, in_flight)
        else:
            _, outputs = step(scheduler, runner)
        for out in outputs:
            streamed.setdefault(out.req_id, []).extend(out.new_token_ids)
            if out.finished:
                results[out.req_id] = (streamed[out.req_id], out.finish_reason)
        scheduler.block_manager.check_invariants()
    raise AssertionError(f"requests still unfinished after {max_steps} steps")


class DecodeWatch:
    """Watches a synchronous run from outside through the Request objects it added: for
    each running request with one token left to compute (a decode), how many steps in a
    row it was left out of; and how many prefill tokens (chunks of anything else) each
    step computed."""

    def __init__(self) -> None:
        self.requests: dict[str, Request] = {}
        self.skips: dict[str, int] = {}  # req_id -> steps in a row it was left out of
        self.max_skips = 0
        self.prefill_tokens: list[int] = []  # per step
        self.decodes: set[str] = set()  # the last step's

    def add(self, scheduler: Scheduler, request: Request) -> None:
        self.requests[request.req_id] = request
        scheduler.add(request)

    def before_step(self) -> None:
        self.decodes = {r.req_id for r in self.requests.values()
                         if r.status is RequestStatus.RUNNING
                         and r.num_tokens - r.num_computed_tokens == 1}

    def after_schedule(self, output: SchedulerOutput) -> None:
        served = {c.req_id for c in output.scheduled}
        self.prefill_tokens.append(sum(c.num_tokens for c in output.scheduled
                                       if c.req_id not in self.decodes))
        for req_id in self.decodes:
            if req_id in served or self.requests[req_id].status is not RequestStatus.RUNNING:
                self.skips.pop(req_id, None)  # served, or preempted (no longer running)
            else:
                self.skips[req_id] = self.skips.get(req_id, 0) + 1
                self.max_skips = max(self.max_skips, self.skips[req_id])

    def step(self, scheduler: Scheduler, runner: FakeRunner) -> list[RequestOutput]:
        self.before_step()
        output = scheduler.schedule()
        self.after_schedule(output)
        return scheduler.update(output, runner.execute(output))
