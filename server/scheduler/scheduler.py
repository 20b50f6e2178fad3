"""Iteration-level scheduling over the paged KV cache.

There are no prefill and decode modes: each step, every scheduled request computes some of
the tokens it knows but has not computed yet, within one token budget for the step
(running decodes first, then prefill chunks under their own cap: budget.py):

    # | computed earlier (KV cached) | this step's chunk | not yet (next steps) |
    # 0                     num_computed_tokens                          num_tokens

A token is sampled only when a chunk reaches num_tokens. Running requests are served first
(in the policy's order), then waiting ones. When blocks run out, the running tail (see
policy.py) is preempted: its blocks are freed and it waits at the head of the queue with the
tokens it has generated, to be recomputed on resume (prefix-cache hits make that cheaper).

The engine calls, per step: out = schedule(); res = runner.execute(out); update(out, res).
schedule() plans the step and counts its tokens as computed; update() appends the sampled
tokens, registers newly full blocks in the prefix cache and retires finished requests.
With async scheduling the engine schedules step k+1 before it reads step k back:

    schedule(k) -> launch(k) -> update(k-1) -> schedule(k+1) -> launch(k+1) -> update(k) ...

so at schedule(k+1) each request sampled in step k has one pending token (its id still on
the device). Its decode is scheduled with pending_input and the runner feeds the id from
the device. A request whose pending tokens would reach max_tokens is not scheduled again;
one that stops on a token is retired by update(k), and what step k+1 sampled for it is
dropped. A waiting request is not admitted while it has a pending token (recomputing it
needs every id).
abort() returns the aborted request's final RequestOutput at once (finish_reason "abort");
update() never reports it again, and the next SchedulerOutput lists it in finished_req_ids.

A request with a grammar still compiling is added with awaits_grammar: it is held aside,
out of the waiting queue (so it holds nobody back), until grammar_ready() queues it.

A request that wants prompt logprobs gathers them from each step's model output
(prompt_logprobs.py) and gets them with its first token; until then it takes no prefix-cache
hit. With max_tokens 0 that first token is dropped: the request ends there, "length".
"""

from __future__ import annotations

from server.config import CacheConfig, SchedulerConfig
from server.kvcache.block_manager import BlockManager, BlockTable
from server.kvcache.events import KVEventRecorder
from server.scheduler.errors import StaleSchedulerOutputError
from server.scheduler.admission import check_admissible, make_admission
from server.scheduler.budget import StepBudget
from server.scheduler.output import (ModelOutput, NewRequestData, RequestOutput,
                                     ScheduledRequest, SchedulerOutput, TokenLogprobs,
                                     sampled_in_step_order)
from server.scheduler.prompt_logprobs import gather_prompt_logprobs, take_prompt_logprobs
from server.scheduler.policy import make_policy
from server.scheduler.request import Request, RequestStatus
from server.scheduler.stats import SchedulerStats


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig, *,
                 kv_events: KVEventRecorder | None = None) -> None:
        """kv_events: told of every prefix-cache change (for KV-event publishing)."""
        if cache_config.num_blocks is None:
            raise ValueError("the scheduler needs cache_config.num_blocks; derive it from "
                             "the model size and memory before building the scheduler")
        self._config = scheduler_config
        self._block_manager = BlockManager(
            cache_config.num_blocks, cache_config.block_size,
            enable_prefix_caching=cache_config.enable_prefix_caching, events=kv_events)
        self._policy = make_policy(scheduler_config.policy)
        self._admission = make_admission(scheduler_config.kv_admission,
                                         num_blocks=cache_config.num_blocks,
                                         block_size=cache_config.block_size)
        self._waiting = self._policy.new_waiting_queue()
        self._running: list[Request] = []
        self._awaiting_grammar: dict[str, Request] = {}
        self._requests: dict[str, Request] = {}  # every live (unfinished) request
        self._finished_req_ids: list[str] = []  # since the last schedule()
        self._num_preemptions_total = 0

    @property
    def config(self) -> SchedulerConfig:
        return self._config

    @property
    def block_manager(self) -> BlockManager:
        return self._block_manager

    # ---- requests in and out -----------------------------------------------------------

    def add(self, request: Request, *, awaits_grammar: bool = False) -> None:
        """Queue a request (or hold it until grammar_ready, with awaits_grammar); raises
        RequestRejectedError if it could never run."""
        check_admissible(request, config=self._config, block_manager=self._block_manager,
                         in_use=self._requests)
        self._requests[request.req_id] = request
        if awaits_grammar:
            request.status = RequestStatus.WAITING_FOR_GRAMMAR
            self._awaiting_grammar[request.req_id] = request
            return
        request.status = RequestStatus.WAITING
        self._waiting.push(request)

    def grammar_ready(self, req_id: str) -> None:
        """The request's grammar compiled: it joins the waiting queue (in arrival order
        among those that join now, after those already waiting)."""
        request = self._awaiting_grammar.pop(req_id, None)
        if request is not None:
            request.status = RequestStatus.WAITING
            self._waiting.push(request)

    def abort(self, req_id: str) -> RequestOutput | None:
        """Drop a request wherever it is and free its blocks at once. Returns its final
        output (finish_reason "abort"), or None when req_id is unknown or already finished."""
        request = self._requests.get(req_id)
        if request is None:
            return None
        if request.status is RequestStatus.RUNNING:
            _remove_by_identity(self._running, request)
            self._admission.release(request)
            self._block_manager.free(req_id)
        elif request.status is RequestStatus.WAITING_FOR_GRAMMAR:
            del self._awaiting_grammar[req_id]
        else:
            self._waiting.remove(request)
        self._retire(request, RequestStatus.FINISHED_ABORTED)
        return _request_output(request, (), None)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_unfinished(self) -> int:
        return len(self._requests)

    @property
    def num_awaiting_grammar(self) -> int:
        return len(self._awaiting_grammar)

    @property
    def stats(self) -> SchedulerStats:
        blocks = self._block_manager
        return SchedulerStats(
            num_running=len(self._running),
            num_waiting=len(self._waiting) + len(self._awaiting_grammar),
            num_preemptions_total=self._num_preemptions_total, kv_cache_usage=blocks.usage,
            num_free_blocks=blocks.num_free_blocks,
            num_evictable_blocks=blocks.num_evictable_blocks,
            num_total_blocks=blocks.num_blocks,
            prefix_cache_queries=blocks.prefix_cache_queries,
            prefix_cache_hits=blocks.prefix_cache_hits)

    # ---- planning a step ---------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Plan a step: running decodes first, then prefill chunks of running requests, then
        waiting requests, within the step's budget and prefill cap (budget.py)."""
        budget = StepBudget(max_tokens=self._config.max_num_batched_tokens,
                            max_prefill_tokens=self._config.prefill_token_cap)
        self._policy.order_running(self._running)
        scheduled: dict[str, ScheduledRequest] = {}
        preempted_req_ids: list[str] = []
        self._schedule_running(budget, scheduled, preempted_req_ids)
        new_requests: list[NewRequestData] = []
        if not preempted_req_ids:  # memory is short: admitting more would only thrash
            new_requests = self._schedule_waiting(budget, scheduled)
        finished_req_ids = tuple(self._finished_req_ids)
        self._finished_req_ids.clear()
        chunks = tuple(scheduled.values())
        return SchedulerOutput(
            scheduled=chunks, new_requests=tuple(new_requests),
            preempted_req_ids=tuple(preempted_req_ids), finished_req_ids=finished_req_ids,
            num_batched_tokens=sum(s.num_tokens for s in chunks))

    def _schedule_running(self, budget: StepBudget, scheduled: dict[str, ScheduledRequest],
                          preempted_req_ids: list[str]) -> None:
        self._recompute_past_rope_threshold(preempted_req_ids)
        decodes: list[Request] = []
        prefills: list[Request] = []
        for request in self._running:
            if not request.awaits_last_token:
                (decodes if request.num_uncomputed_tokens == 1 else prefills).append(request)
        for request in decodes:  # they all fit (budget.py); the check keeps the step's size
            if budget.tokens == 0:
                return
            if request.status is RequestStatus.RUNNING and not self._schedule_running_chunk(
                    request, 1, budget, scheduled, preempted_req_ids, prefill=False):
                return  # it preempted itself: memory is exhausted for this step
        for request in prefills:
            if budget.prefill_left == 0:
                return
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted to make room for a request served before it
            num_new = min(request.num_uncomputed_tokens, budget.prefill_left)
            if not self._schedule_running_chunk(request, num_new, budget, scheduled,
                                                preempted_req_ids, prefill=True):
                return

    def _recompute_past_rope_threshold(self, preempted_req_ids: list[str]) -> None:
        """A request grown past a LongRoPE model's original context rotates every position
        the long way now: its KV is recomputed, as transformers does."""
        for request in [r for r in self._running if r.rope_table != self._rope_table(r)]:
            _remove_by_identity(self._running, request)
            self._preempt(request)
            preempted_req_ids.append(request.req_id)

    def _schedule_running_chunk(self, request: Request, num_new: int, budget: StepBudget,
                                scheduled: dict[str, ScheduledRequest],
                                preempted_req_ids: list[str], *, prefill: bool) -> bool:
        """Schedule a running request's next chunk; False if it had to be preempted."""
        table = self._make_room(request, num_new, budget, scheduled, preempted_req_ids)
        if table is None:
            return False
        scheduled[request.req_id] = self._schedule_chunk(request, num_new, table.block_ids)
        budget.spend(request.req_id, num_new, prefill=prefill)
        return True

    def _make_room(self, request: Request, num_new: int, budget: StepBudget,
                   scheduled: dict[str, ScheduledRequest],
                   preempted_req_ids: list[str]) -> BlockTable | None:
        """Preempt from the running tail until request's next chunk fits; returns its grown
        table, or None if the request itself had to go. A victim already scheduled this
        step (decodes go first) gives its chunk and tokens back."""
        num_tokens = request.num_computed_tokens + num_new
        self._release_out_of_window(request)
        while (table := self._block_manager.try_append_slots(request.req_id,
                                                             num_tokens)) is None:
            victim = self._running.pop()
            chunk = scheduled.pop(victim.req_id, None)
            if chunk is not None:
                budget.refund(victim.req_id)
                victim.num_pending_tokens -= chunk.sample  # that step will not run it
            self._preempt(victim)
            preempted_req_ids.append(victim.req_id)
            if victim is request:
                return None
        return table

    def _rope_table(self, request: Request) -> int:
        threshold = self._config.long_rope_threshold
        return int(threshold is not None and request.num_tokens_with_pending > threshold)

    def _release_out_of_window(self, request: Request) -> None:
        """Every layer slides: the blocks before the window of the chunk's first query
        (position num_computed_tokens) go back to the pool."""
        window = self._config.kv_window
        if window is not None:
            self._block_manager.release_before(request.req_id,
                                               request.num_computed_tokens - window + 1)

    def _preempt(self, request: Request) -> None:
        self._admission.release(request)
        self._block_manager.free(request.req_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0  # recomputed on resume, prompt and outputs alike
        self._waiting.push_front(request)
        self._num_preemptions_total += 1

    def _schedule_waiting(self, budget: StepBudget,
                          scheduled: dict[str, ScheduledRequest]) -> list[NewRequestData]:
        new_requests: list[NewRequestData] = []
        while (self._waiting and budget.prefill_left > 0
               and len(self._running) < self._config.max_num_seqs):
            request = self._waiting.peek()
            if request.num_pending_tokens:
                break  # preempted with a token in flight: it resumes once the id is here
            if not self._admission.fits(request):
                break  # its growth is not guaranteed yet (kv_admission "guaranteed")
            num_new = self._admit(request, budget.prefill_left)
            if num_new is None:
                break  # no room for the head: later ones wait behind it, in order
            self._waiting.pop()
            new_requests.append(NewRequestData(
                req_id=request.req_id, prompt_token_ids=tuple(request.prompt_token_ids),
                output_token_ids=tuple(request.output_token_ids),
                sampling_params=request.sampling_params))
            scheduled[request.req_id] = self._schedule_chunk(request, num_new)
            budget.spend(request.req_id, num_new, prefill=True)
        return new_requests

    def _admit(self, request: Request, budget: int) -> int | None:
        """Allocate blocks for a waiting request's cached prefix and first chunk; returns
        the chunk's token count, or None when the blocks do not fit now."""
        token_ids = request.all_token_ids
        salt = self._rope_table(request)  # KV of the long rotary table is cached apart
        # Prompt logprobs come from the logits at every prompt position, which a prefix hit
        # would skip: a request still owed them takes no hit (its own blocks are cached
        # for others as usual). Recomputing the hit blocks' positions is the cheap way to
        # get their logits; once they are out (with the first token) a resume may hit.
        blocks, reuse = self._block_manager, request.prompt_logprobs is None
        num_cached = blocks.num_cached_prefix_tokens(token_ids, salt=salt, reuse_prefix=reuse)
        num_new = min(request.num_tokens - num_cached, budget)
        if not blocks.can_allocate(token_ids, num_cached + num_new, salt=salt,
                                   reuse_prefix=reuse):
            return None
        table = blocks.allocate(request.req_id, token_ids, num_cached + num_new, salt=salt,
                                reuse_prefix=reuse)
        request.rope_table = salt
        if request.status is RequestStatus.WAITING:  # first admission, not a resume
            request.num_cached_tokens = table.num_cached_tokens
        request.num_computed_tokens = table.num_cached_tokens
        self._release_out_of_window(request)  # a long prefix hit
        request.status = RequestStatus.RUNNING
        self._running.append(request)
        self._admission.admit(request)
        return num_new

    def _schedule_chunk(self, request: Request, num_new: int,
                        block_ids: tuple[int, ...] | None = None) -> ScheduledRequest:
        """Plans the chunk and counts it as computed (the step that computes it is the
        next one the engine launches). block_ids: its table, when the caller has it."""
        start = request.num_computed_tokens
        end = start + num_new
        num_known = request.num_tokens
        pending_input = end > num_known
        if pending_input and (start != num_known or request.num_pending_tokens != 1):
            raise StaleSchedulerOutputError(
                f"request {request.req_id!r}: a step needs {end - num_known} token ids not "
                f"read back yet; run at most one step ahead of update()")
        sample = end == num_known + request.num_pending_tokens
        request.num_computed_tokens = end
        request.num_pending_tokens += sample
        return ScheduledRequest(
            req_id=request.req_id, token_ids=request.token_slice(start, min(end, num_known)),
            start_position=start,
            block_ids=(block_ids if block_ids is not None else
                       self._block_manager.get_block_table(request.req_id).block_ids),
            sample=sample, pending_input=pending_input, rope_table=request.rope_table)

    # ---- after the model ran -----------------------------------------------------------

    def update(self, scheduler_output: SchedulerOutput,
               model_output: ModelOutput) -> list[RequestOutput]:
        """Append the step's sampled tokens (in step order: pass each schedule() output
        once). Returns an output for each request that got a token (finished or not)."""
        sampled = iter(sampled_in_step_order(scheduler_output, model_output))
        outputs: list[RequestOutput] = []
        requests = self._requests
        block_size = self._block_manager.block_size
        prompt_chunks = {c.req_id: c for c in model_output.prompt_logprobs}
        for chunk in scheduler_output.scheduled:
            token_id, logprobs = next(sampled) if chunk.sample else (None, None)
            request = requests.get(chunk.req_id)
            if request is None:
                continue  # finished or aborted since schedule(); nothing more to report
            if prompt_chunks:
                gather_prompt_logprobs(request, prompt_chunks.get(chunk.req_id))
            if chunk.sample and not request.num_pending_tokens:
                raise StaleSchedulerOutputError(
                    f"request {request.req_id!r} has no token in flight; pass update() "
                    f"each schedule() output once, in order")
            end = chunk.start_position + len(chunk.token_ids) + chunk.pending_input
            if end // block_size > chunk.start_position // block_size:
                self._cache_full_blocks(request, end)
            if chunk.sample:
                outputs.append(self._append_token(request, token_id, logprobs))
        return outputs

    def _cache_full_blocks(self, request: Request, end: int) -> None:
        """A block a chunk ending at `end` filled up now holds computed KV and can be
        shared."""
        if request.status is not RequestStatus.RUNNING:
            return  # preempted since: its blocks are gone
        self._block_manager.cache_computed_blocks(request.req_id, request.all_token_ids, end)

    def _append_token(self, request: Request, token_id: int,
                      logprobs: TokenLogprobs | None) -> RequestOutput:
        request.num_pending_tokens -= 1
        prompt_logprobs = take_prompt_logprobs(request)
        if request.sampling_params.max_tokens == 0:  # the prompt alone was wanted
            token_id, logprobs = None, None
            finish_status = RequestStatus.FINISHED_LENGTH
        else:
            request.output_token_ids.append(token_id)
            finish_status = request.stop_status(token_id)
        if finish_status is not None:
            if request.status is RequestStatus.RUNNING:
                _remove_by_identity(self._running, request)
                self._admission.release(request)
                self._block_manager.free(request.req_id)
            else:  # preempted while its token was in flight
                self._waiting.remove(request)
            self._retire(request, finish_status)
        return _request_output(request, () if token_id is None else (token_id,), logprobs,
                               prompt_logprobs)

    def _retire(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        del self._requests[request.req_id]
        self._finished_req_ids.append(request.req_id)


def _request_output(request: Request, new_token_ids: tuple[int, ...],
                    logprobs: TokenLogprobs | None,
                    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None) -> RequestOutput:
    return RequestOutput(
        req_id=request.req_id, new_token_ids=new_token_ids,
        finish_reason=request.status.finish_reason, num_prompt_tokens=request.num_prompt_tokens,
        num_cached_tokens=request.num_cached_tokens,
        logprobs=None if logprobs is None else (logprobs,), prompt_logprobs=prompt_logprobs)


def _remove_by_identity(requests: list[Request], request: Request) -> None:
    # not list.remove: Request's dataclass __eq__ would compare field by field
    for index, candidate in enumerate(requests):
        if candidate is request:
            del requests[index]
            return
    raise ValueError(f"request {request.req_id!r} is not in the list")
