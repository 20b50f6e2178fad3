"""The real Scheduler over a real BlockManager, driven with hand-made or fake-runner
ModelOutputs."""

from __future__ import annotations

import pytest

from server.config import CacheConfig, SchedulerConfig
from server.scheduler.errors import (ModelOutputMismatchError, RequestRejectedError,
                                     StaleSchedulerOutputError)
from server.scheduler.output import ModelOutput
from server.scheduler.request import RequestStatus
from server.scheduler.scheduler import Scheduler
from tests.unit.scheduler_helpers import (FakeRunner, expected_output, fake_token,
                                          make_request, make_scheduler, run_until_done, step)


def sample(*pairs: tuple[str, int]) -> ModelOutput:
    return ModelOutput(req_ids=tuple(p[0] for p in pairs),
                       sampled_token_ids=tuple(p[1] for p in pairs))


def chunk_sizes(output) -> dict[str, int]:
    return {s.req_id: s.num_tokens for s in output.scheduled}


# ---- token budget and chunked prefill ---------------------------------------------------

def test_step_never_exceeds_the_token_budget_and_splits_the_overflowing_prompt():
    scheduler = make_scheduler(max_num_batched_tokens=16)
    for req_id in ("a", "b", "c"):
        scheduler.add(make_request(req_id, num_prompt_tokens=10))
    output = scheduler.schedule()
    assert chunk_sizes(output) == {"a": 10, "b": 6}
    assert output.num_batched_tokens == 16
    assert [s.sample for s in output.scheduled] == [True, False]


def test_long_prompt_is_prefilled_over_several_steps_and_sampled_only_at_the_end():
    scheduler = make_scheduler(max_num_batched_tokens=8, block_size=4)
    request = make_request("long", num_prompt_tokens=25, max_tokens=3)
    scheduler.add(request)
    starts, samples = [], []
    for _ in range(4):
        output = scheduler.schedule()
        (chunk,) = output.scheduled
        end = chunk.start_position + chunk.num_tokens
        assert chunk.token_ids == tuple(request.prompt_token_ids[chunk.start_position:end])
        assert len(chunk.block_ids) == -(-(chunk.start_position + chunk.num_tokens) // 4)
        starts.append(chunk.start_position)
        samples.append(chunk.sample)
        outputs = scheduler.update(output, sample(("long", 7)) if chunk.sample else sample())
        assert [o.new_token_ids for o in outputs] == ([(7,)] if chunk.sample else [])
    assert starts == [0, 8, 16, 24]
    assert samples == [False, False, False, True]
    assert request.num_computed_tokens == 25 and request.output_token_ids == [7]
    decode = scheduler.schedule().scheduled[0]
    assert (decode.start_position, decode.token_ids, decode.sample) == (25, (7,), True)


def test_running_requests_are_served_before_waiting_ones():
    scheduler = make_scheduler(max_num_batched_tokens=10)
    scheduler.add(make_request("first", num_prompt_tokens=10, max_tokens=5))
    output = scheduler.schedule()
    scheduler.update(output, sample(("first", 1)))
    scheduler.add(make_request("second", num_prompt_tokens=10))
    output = scheduler.schedule()
    assert chunk_sizes(output) == {"first": 1, "second": 9}


def test_max_num_seqs_caps_the_running_requests():
    scheduler = make_scheduler(max_num_seqs=2)
    for req_id in ("a", "b", "c"):
        scheduler.add(make_request(req_id, num_prompt_tokens=4))
    output = scheduler.schedule()
    assert list(chunk_sizes(output)) == ["a", "b"]
    assert (scheduler.stats.num_running, scheduler.stats.num_waiting) == (2, 1)


def test_new_requests_are_sent_only_on_first_schedule():
    scheduler = make_scheduler()
    scheduler.add(make_request("a", num_prompt_tokens=4, max_tokens=3))
    first = scheduler.schedule()
    assert [n.req_id for n in first.new_requests] == ["a"]
    scheduler.update(first, sample(("a", 1)))
    assert scheduler.schedule().new_requests == ()


# ---- preemption ----------------------------------------------------------------------------

def _preemption_workload(scheduler: Scheduler) -> None:
    for index in range(4):
        scheduler.add(make_request(f"r{index}", num_prompt_tokens=6 + index, max_tokens=10,
                                   ignore_eos=True))


def test_preempted_request_resumes_with_identical_tokens():
    roomy = make_scheduler(num_blocks=64, block_size=2)
    _preemption_workload(roomy)
    undisturbed = run_until_done(roomy, FakeRunner(block_size=2))
    assert roomy.stats.num_preemptions_total == 0

    tight = make_scheduler(num_blocks=14, block_size=2)
    _preemption_workload(tight)
    disturbed = run_until_done(tight, FakeRunner(block_size=2))
    assert tight.stats.num_preemptions_total > 0
    assert disturbed == undisturbed
    assert all(reason == "length" and len(tokens) == 10 for tokens, reason in disturbed.values())


def test_guaranteed_admission_waits_instead_of_preempting_and_gives_the_same_tokens():
    roomy = make_scheduler(num_blocks=64, block_size=2)
    _preemption_workload(roomy)
    undisturbed = run_until_done(roomy, FakeRunner(block_size=2))

    guaranteed = make_scheduler(num_blocks=14, block_size=2, kv_admission="guaranteed")
    _preemption_workload(guaranteed)
    runner = FakeRunner(block_size=2)
    most_running = 0
    tokens: dict[str, list[int]] = {}
    while guaranteed.has_unfinished():
        _, outputs = step(guaranteed, runner)
        most_running = max(most_running, guaranteed.stats.num_running)
        for out in outputs:
            tokens.setdefault(out.req_id, []).extend(out.new_token_ids)
    assert guaranteed.stats.num_preemptions_total == 0
    assert most_running == 1  # each needs 8 of the 14 blocks at full length
    assert tokens == {req_id: streamed for req_id, (streamed, _) in undisturbed.items()}


def test_unknown_kv_admission_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="--kv-admission must be one of optimistic"):
        SchedulerConfig(kv_admission="eager")


def test_preemption_evicts_the_most_recently_admitted_and_resumes_it_first():
    scheduler = make_scheduler(num_blocks=4, block_size=2, max_num_batched_tokens=64,
                               enable_prefix_caching=False)
    runner = FakeRunner(block_size=2)
    old = make_request("old", num_prompt_tokens=3, max_tokens=5, ignore_eos=True)
    new = make_request("new", num_prompt_tokens=3, max_tokens=5, ignore_eos=True)
    scheduler.add(old)
    scheduler.add(new)
    streamed = {"old": [], "new": []}
    for _ in range(3):
        # step 1: 2 blocks each cover positions 0..3; step 2: both decode position 3;
        # step 3: position 4 needs a third block and the pool is full
        output, outputs = step(scheduler, runner)
        for out in outputs:
            streamed[out.req_id] += out.new_token_ids
    assert output.preempted_req_ids == ("new",)
    assert [s.req_id for s in output.scheduled] == ["old"]
    assert new.status is RequestStatus.PREEMPTED and new.num_computed_tokens == 0
    assert new.output_token_ids == [fake_token(req_id="new", position=3),
                                    fake_token(req_id="new", position=4)]
    assert output.new_requests == ()  # no admissions in a step that had to preempt
    assert scheduler.stats.num_preemptions_total == 1
    results = run_until_done(scheduler, runner)
    for request in (old, new):
        assert streamed[request.req_id] + results[request.req_id][0] == expected_output(
            req_id=request.req_id, num_prompt_tokens=3, max_tokens=5)


def test_resumed_request_is_sent_as_new_with_its_generated_tokens():
    scheduler = make_scheduler(num_blocks=4, block_size=2, enable_prefix_caching=False)
    runner = FakeRunner(block_size=2)
    scheduler.add(make_request("old", num_prompt_tokens=3, max_tokens=3, ignore_eos=True))
    scheduler.add(make_request("new", num_prompt_tokens=3, max_tokens=5, ignore_eos=True))
    resumed = None
    for _ in range(20):
        output, _ = step(scheduler, runner)
        resumed = next((n for n in output.new_requests
                        if n.req_id == "new" and n.output_token_ids), resumed)
    assert resumed is not None
    assert list(resumed.output_token_ids) == [fake_token(req_id="new", position=3),
                                              fake_token(req_id="new", position=4)]
    assert not scheduler.has_unfinished()


# ---- abort -------------------------------------------------------------------------------

def test_abort_while_waiting_returns_abort_output_and_frees_nothing_held():
    scheduler = make_scheduler(max_num_seqs=1)
    scheduler.add(make_request("running", num_prompt_tokens=4))
    scheduler.add(make_request("waiting", num_prompt_tokens=4))
    scheduler.update(output := scheduler.schedule(), sample(("running", 1)))
    free_before = scheduler.block_manager.num_free_blocks
    final = scheduler.abort("waiting")
    assert (final.finish_reason, final.new_token_ids) == ("abort", ())
    assert scheduler.block_manager.num_free_blocks == free_before
    assert scheduler.stats.num_waiting == 0
    assert "waiting" in scheduler.schedule().finished_req_ids
    assert output.finished_req_ids == ()


@pytest.mark.parametrize("num_steps", [1, 3], ids=["mid_prefill", "decoding"])
def test_abort_of_a_running_request_frees_all_its_blocks_at_once(num_steps):
    scheduler = make_scheduler(num_blocks=16, max_num_batched_tokens=8,
                               enable_prefix_caching=False)
    runner = FakeRunner(block_size=4)
    scheduler.add(make_request("victim", num_prompt_tokens=12, max_tokens=10, ignore_eos=True))
    for _ in range(num_steps):
        step(scheduler, runner)
    assert scheduler.block_manager.num_free_blocks < 16
    final = scheduler.abort("victim")
    assert final.finished and final.finish_reason == "abort"
    assert scheduler.block_manager.num_free_blocks == 16
    scheduler.block_manager.check_invariants()
    assert not scheduler.has_unfinished()
    assert scheduler.schedule().finished_req_ids == ("victim",)


def test_abort_of_unknown_or_finished_request_is_a_no_op():
    scheduler = make_scheduler()
    scheduler.add(make_request("done", num_prompt_tokens=4, max_tokens=1))
    run_until_done(scheduler, FakeRunner(block_size=4))
    assert scheduler.abort("done") is None
    assert scheduler.abort("never-seen") is None
    assert scheduler.abort("done") is None


def test_abort_between_schedule_and_update_drops_the_sampled_token():
    scheduler = make_scheduler()
    runner = FakeRunner(block_size=4)
    scheduler.add(make_request("a", num_prompt_tokens=4, max_tokens=3))
    scheduler.add(make_request("b", num_prompt_tokens=4, max_tokens=3))
    output = scheduler.schedule()
    model_output = runner.execute(output)
    scheduler.abort("a")
    outputs = scheduler.update(output, model_output)
    assert [o.req_id for o in outputs] == ["b"]


# ---- stop conditions ---------------------------------------------------------------------

def _single_request_outputs(**request_kwargs):
    scheduler = make_scheduler()
    scheduler.add(make_request("r", num_prompt_tokens=4, **request_kwargs))
    outputs = []
    while scheduler.has_unfinished():
        output = scheduler.schedule()
        outputs += scheduler.update(output, sample(("r", 5)) if output.scheduled[0].sample
                                    else sample())
    return outputs


def test_eos_finishes_the_request_with_stop():
    outputs = _single_request_outputs(max_tokens=10, eos_token_id=5)
    assert [(o.new_token_ids, o.finish_reason) for o in outputs] == [((5,), "stop")]


def test_ignore_eos_runs_to_max_tokens_and_finishes_with_length():
    outputs = _single_request_outputs(max_tokens=3, eos_token_id=5, ignore_eos=True)
    assert [o.finish_reason for o in outputs] == [None, None, "length"]


def test_stop_token_id_finishes_the_request_with_stop():
    outputs = _single_request_outputs(max_tokens=10, stop_token_ids=(9, 5))
    assert [o.finish_reason for o in outputs] == ["stop"]


def test_max_tokens_finishes_the_request_with_length_and_frees_its_blocks():
    scheduler = make_scheduler(enable_prefix_caching=False)
    request = make_request("r", num_prompt_tokens=5, max_tokens=4, eos_token_id=99)
    scheduler.add(request)
    results = run_until_done(scheduler, FakeRunner(block_size=4))
    expected = expected_output(req_id="r", num_prompt_tokens=5, max_tokens=4)
    assert results["r"] == (expected, "length")
    assert request.status is RequestStatus.FINISHED_LENGTH
    assert scheduler.block_manager.num_free_blocks == 64
    assert scheduler.schedule().finished_req_ids == ("r",)


# ---- ordering ----------------------------------------------------------------------------

def _admission_order(scheduler: Scheduler) -> list[str]:
    order = []
    while scheduler.has_unfinished():
        output = scheduler.schedule()
        order += [n.req_id for n in output.new_requests]
        scheduler.update(output, sample(*((s.req_id, 0) for s in output.scheduled if s.sample)))
    return order


def test_fcfs_starts_waiting_requests_in_arrival_order():
    scheduler = make_scheduler(max_num_seqs=1)
    for req_id, priority in (("x", 5), ("y", 0), ("z", 3)):
        scheduler.add(make_request(req_id, num_prompt_tokens=4, max_tokens=1, priority=priority))
    assert _admission_order(scheduler) == ["x", "y", "z"]


def test_priority_policy_starts_lower_priority_first_and_ties_by_arrival():
    scheduler = make_scheduler(max_num_seqs=1, policy="priority")
    for req_id, priority, arrival in (("p5", 5, 0.0), ("p0-late", 0, 2.0), ("p3", 3, 1.0),
                                      ("p0-early", 0, 1.5)):
        scheduler.add(make_request(req_id, num_prompt_tokens=4, max_tokens=1, priority=priority,
                                   arrival_time=arrival))
    assert _admission_order(scheduler) == ["p0-early", "p0-late", "p3", "p5"]


# ---- prefix cache ------------------------------------------------------------------------

def test_second_request_with_the_same_three_block_prompt_computes_only_what_follows():
    scheduler = make_scheduler(block_size=4)
    runner = FakeRunner(block_size=4)
    shared = list(range(100, 112))  # three full blocks
    scheduler.add(make_request("first", prompt_token_ids=shared + [1, 2], max_tokens=1))
    run_until_done(scheduler, runner)
    scheduler.add(make_request("second", prompt_token_ids=shared + [7, 8, 9], max_tokens=1))
    output, outputs = step(scheduler, runner)
    (chunk,) = output.scheduled
    assert (chunk.start_position, chunk.token_ids) == (12, (7, 8, 9))
    assert outputs[0].num_cached_tokens == 12
    assert scheduler.stats.prefix_cache_hits == 12
    assert scheduler.stats.prefix_cache_queries == 14 + 15


def test_fully_cached_prompt_still_computes_its_last_block():
    scheduler = make_scheduler(block_size=4)
    runner = FakeRunner(block_size=4)
    prompt = list(range(200, 212))
    scheduler.add(make_request("first", prompt_token_ids=prompt, max_tokens=1))
    run_until_done(scheduler, runner)
    scheduler.add(make_request("again", prompt_token_ids=prompt, max_tokens=1))
    output, outputs = step(scheduler, runner)
    (chunk,) = output.scheduled
    assert (chunk.start_position, chunk.num_tokens, chunk.sample) == (8, 4, True)
    assert outputs[0].new_token_ids == (fake_token(req_id="again", position=12),)


def test_prefix_caching_off_computes_every_prompt_token():
    scheduler = make_scheduler(block_size=4, enable_prefix_caching=False)
    runner = FakeRunner(block_size=4)
    prompt = list(range(300, 314))
    scheduler.add(make_request("first", prompt_token_ids=prompt, max_tokens=1))
    run_until_done(scheduler, runner)
    scheduler.add(make_request("second", prompt_token_ids=prompt, max_tokens=1))
    output, _ = step(scheduler, runner)
    assert output.scheduled[0].start_position == 0
    assert scheduler.stats.num_evictable_blocks == 0 and scheduler.stats.prefix_cache_queries == 0


def test_finished_requests_leave_only_evictable_cached_blocks():
    scheduler = make_scheduler(num_blocks=16, block_size=4)
    scheduler.add(make_request("r", num_prompt_tokens=9, max_tokens=4, ignore_eos=True))
    run_until_done(scheduler, FakeRunner(block_size=4))
    stats = scheduler.stats
    # 12 computed tokens (9 prompt + 3 fed-back outputs) fill three blocks
    assert (stats.num_free_blocks, stats.num_evictable_blocks) == (16, 3)
    assert stats.kv_cache_usage == 0.0


# ---- refusal and misuse --------------------------------------------------------------------

@pytest.mark.parametrize("num_prompt_tokens, max_tokens, code", [
    (200, 57, "context_length_exceeded"),
    (0, 4, "empty_prompt"),
    (30, 4, "kv_cache_too_small"),
])
def test_add_refuses_a_request_that_can_never_run(num_prompt_tokens, max_tokens, code):
    scheduler = make_scheduler(num_blocks=8, block_size=4, max_model_len=256)
    request = make_request("r", prompt_token_ids=list(range(num_prompt_tokens)),
                           max_tokens=max_tokens)
    with pytest.raises(RequestRejectedError) as raised:
        scheduler.add(request)
    assert raised.value.code == code and isinstance(raised.value, ValueError)
    assert not scheduler.has_unfinished()


def test_add_accepts_a_request_that_exactly_fills_the_pool_and_the_context():
    scheduler = make_scheduler(num_blocks=8, block_size=4, max_model_len=33)
    scheduler.add(make_request("r", num_prompt_tokens=29, max_tokens=4, ignore_eos=True))
    results = run_until_done(scheduler, FakeRunner(block_size=4))
    assert len(results["r"][0]) == 4


def test_add_refuses_a_request_id_already_in_use():
    scheduler = make_scheduler()
    scheduler.add(make_request("r"))
    with pytest.raises(RequestRejectedError) as raised:
        scheduler.add(make_request("r"))
    assert raised.value.code == "duplicate_request_id"


def test_scheduler_needs_num_blocks():
    with pytest.raises(ValueError, match="num_blocks"):
        Scheduler(SchedulerConfig(), CacheConfig())


def test_update_rejects_a_model_output_for_other_requests():
    scheduler = make_scheduler()
    scheduler.add(make_request("a", num_prompt_tokens=4))
    output = scheduler.schedule()
    with pytest.raises(ModelOutputMismatchError):
        scheduler.update(output, sample(("b", 1)))


def test_update_rejects_the_same_scheduler_output_twice():
    scheduler = make_scheduler()
    scheduler.add(make_request("a", num_prompt_tokens=4, max_tokens=5))
    output = scheduler.schedule()
    scheduler.update(output, sample(("a", 1)))
    with pytest.raises(StaleSchedulerOutputError):
        scheduler.update(output, sample(("a", 1)))
