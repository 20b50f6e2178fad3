"""The Scheduler over a small pool with random arrivals, lengths, shared prefixes and aborts.

The fake runner samples tokens as a function of (req_id, position) and checks every chunk
against a shadow KV cache, so preemption, chunking and prefix reuse must all be invisible in
the tokens each request ends up with."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from server.scheduler.request import Request, RequestStatus
from server.scheduler.scheduler import Scheduler
from tests.unit.scheduler_helpers import (DecodeWatch, FakeRunner, expected_output,
                                          make_request, make_scheduler)

EOS_TOKEN_ID = 0
HEADS = ([7, 7, 7, 7, 7, 7, 7, 7], [7, 7, 7, 7, 8, 8], [9, 9, 9], [])
MAX_PROMPT, MAX_OUTPUT = 16, 10


@dataclass(frozen=True)
class Arrival:
    req_id: str
    arrive_at_step: int
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    ignore_eos: bool
    stop_token_ids: tuple[int, ...]
    priority: int
    abort_at_step: int | None

    def request(self) -> Request:
        return make_request(self.req_id, prompt_token_ids=self.prompt_token_ids,
                            max_tokens=self.max_tokens, eos_token_id=EOS_TOKEN_ID,
                            ignore_eos=self.ignore_eos, stop_token_ids=self.stop_token_ids,
                            priority=self.priority, arrival_time=float(self.arrive_at_step))

    def expected_tokens(self) -> list[int]:
        return expected_output(req_id=self.req_id, num_prompt_tokens=len(self.prompt_token_ids),
                               max_tokens=self.max_tokens, eos_token_id=EOS_TOKEN_ID,
                               ignore_eos=self.ignore_eos, stop_token_ids=self.stop_token_ids)


@st.composite
def arrivals(draw, index: int) -> Arrival:
    head = draw(st.sampled_from(HEADS))
    tail = draw(st.lists(st.integers(1, 20), min_size=0 if head else 1,
                         max_size=MAX_PROMPT - len(head)))
    return Arrival(
        req_id=f"req{index}", arrive_at_step=draw(st.integers(0, 12)),
        prompt_token_ids=tuple(head + tail), max_tokens=draw(st.integers(1, MAX_OUTPUT)),
        ignore_eos=draw(st.booleans()),
        stop_token_ids=tuple(draw(st.lists(st.integers(1, 31), max_size=2))),
        priority=draw(st.integers(0, 2)),
        abort_at_step=draw(st.none() | st.integers(0, 30)))


workloads = st.integers(1, 10).flatmap(
    lambda n: st.tuples(*(arrivals(i) for i in range(n))))


@dataclass
class Ledger:
    """Everything the api would see, per request."""

    tokens: dict[str, list[int]]
    finish_reasons: dict[str, list[str]]

    def record(self, output) -> None:
        assert not self.finish_reasons[output.req_id], f"{output.req_id} spoke after finishing"
        self.tokens[output.req_id] += output.new_token_ids
        if output.finished:
            self.finish_reasons[output.req_id].append(output.finish_reason)


def _run(scheduler: Scheduler, runner: FakeRunner, workload: tuple[Arrival, ...]) -> Ledger:
    ledger = Ledger({a.req_id: [] for a in workload}, {a.req_id: [] for a in workload})
    last_arrival = max(a.arrive_at_step for a in workload)
    watch = DecodeWatch()
    for step_index in range(1000):
        for arrival in workload:
            if arrival.arrive_at_step == step_index:
                watch.add(scheduler, arrival.request())
            if arrival.abort_at_step == step_index:
                final = scheduler.abort(arrival.req_id)
                if final is not None:
                    ledger.record(final)
        if step_index > last_arrival and not scheduler.has_unfinished():
            return ledger
        watch.before_step()
        output = scheduler.schedule()
        watch.after_schedule(output)
        outputs = scheduler.update(output, runner.execute(output))
        assert output.num_batched_tokens <= scheduler.config.max_num_batched_tokens
        assert len(output.scheduled) <= scheduler.config.max_num_seqs
        # decodes go first: none is ever left out while prefills take the rest, up to the cap
        assert watch.prefill_tokens[-1] <= scheduler.config.prefill_token_cap
        assert watch.max_skips == 0, watch.skips
        for out in outputs:
            ledger.record(out)
        scheduler.block_manager.check_invariants()
    raise AssertionError("the workload did not finish in 1000 steps")


def _check_results(workload: tuple[Arrival, ...], ledger: Ledger) -> None:
    for arrival in workload:
        reasons = ledger.finish_reasons[arrival.req_id]
        assert len(reasons) == 1, f"{arrival.req_id} finished {len(reasons)} times"
        expected = arrival.expected_tokens()
        produced = ledger.tokens[arrival.req_id]
        if reasons == ["abort"]:
            assert produced == expected[:len(produced)]
            continue
        assert produced == expected
        hit_stop = produced[-1] in arrival.stop_token_ids or (
            not arrival.ignore_eos and produced[-1] == EOS_TOKEN_ID)
        assert reasons == ["stop" if hit_stop else "length"]


def _check_nothing_leaked(scheduler: Scheduler, workload: tuple[Arrival, ...]) -> None:
    manager = scheduler.block_manager
    manager.check_invariants()
    assert manager.num_free_blocks == manager.num_blocks  # free, or evictable cached
    assert not any(manager.has_request(a.req_id) for a in workload)
    stats = scheduler.stats
    assert (stats.num_running, stats.num_waiting) == (0, 0)
    if not manager.enable_prefix_caching:
        assert stats.num_evictable_blocks == 0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads, block_size=st.sampled_from([1, 2, 4]),
       spare_blocks=st.integers(0, 6), max_num_batched_tokens=st.integers(1, 24),
       max_num_seqs=st.integers(1, 4), policy=st.sampled_from(["fcfs", "priority"]),
       enable_prefix_caching=st.booleans(),
       kv_admission=st.sampled_from(["optimistic", "guaranteed"]),
       prefill_cap=st.none() | st.integers(1, 24))
def test_every_request_finishes_once_with_its_undisturbed_tokens_and_nothing_leaks(
        workload, block_size, spare_blocks, max_num_batched_tokens, max_num_seqs, policy,
        enable_prefix_caching, kv_admission, prefill_cap):
    # the pool just fits the largest request, so several at once must preempt each other
    largest = max(len(a.prompt_token_ids) + a.max_tokens - 1 for a in workload)
    scheduler = make_scheduler(
        num_blocks=-(-largest // block_size) + spare_blocks, block_size=block_size,
        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=MAX_PROMPT + MAX_OUTPUT, policy=policy,
        enable_prefix_caching=enable_prefix_caching, kv_admission=kv_admission,
        max_prefill_tokens=None if prefill_cap is None else min(prefill_cap,
                                                                 max_num_batched_tokens))
    runner = FakeRunner(block_size=block_size)
    ledger = _run(scheduler, runner, workload)
    _check_results(workload, ledger)
    _check_nothing_leaked(scheduler, workload)
    if kv_admission == "guaranteed":  # what it promises: no request is ever preempted
        assert scheduler.stats.num_preemptions_total == 0
    target(float(scheduler.stats.num_preemptions_total), label="preemptions")


def test_a_pool_too_small_for_everyone_preempts_and_still_finishes_every_request():
    workload = tuple(Arrival(f"req{i}", 0, tuple(range(1, 13)), 10, True, (), 0, None)
                     for i in range(4))
    scheduler = make_scheduler(num_blocks=6, block_size=4, max_model_len=64)
    ledger = _run(scheduler, FakeRunner(block_size=4), workload)
    _check_results(workload, ledger)
    _check_nothing_leaked(scheduler, workload)
    assert scheduler.stats.num_preemptions_total > 0
    assert all(r == RequestStatus.FINISHED_LENGTH.finish_reason
               for reasons in ledger.finish_reasons.values() for r in reasons)
