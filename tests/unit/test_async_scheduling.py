"""Async scheduling at the scheduler: step k+1 is planned before step k's tokens are read
back, and every request still gets exactly the tokens of an undisturbed run."""

from __future__ import annotations

import random

import pytest

from server.scheduler.errors import StaleSchedulerOutputError
from server.scheduler.request import RequestStatus
from tests.unit.scheduler_helpers import (FakeRunner, expected_output, fake_token,
                                          make_request, make_scheduler, pipelined_step,
                                          run_until_done)


def test_decode_after_an_unread_step_feeds_the_pending_token():
    scheduler = make_scheduler()
    runner = FakeRunner(block_size=4)
    request = make_request("a", num_prompt_tokens=6, max_tokens=5, ignore_eos=True)
    scheduler.add(request)
    first = scheduler.schedule()
    runner.execute(first)
    second = scheduler.schedule()  # before update(first)
    (decode,) = second.scheduled
    assert (decode.start_position, decode.token_ids, decode.pending_input, decode.sample) == (
        6, (), True, True)
    assert decode.num_tokens == 1 and request.num_pending_tokens == 2
    assert second.num_batched_tokens == 1


def test_request_at_max_tokens_in_flight_is_not_scheduled_again():
    scheduler = make_scheduler()
    runner = FakeRunner(block_size=4)
    scheduler.add(make_request("a", num_prompt_tokens=5, max_tokens=1, ignore_eos=True))
    in_flight = []
    assert pipelined_step(scheduler, runner, in_flight) == []
    assert scheduler.schedule().is_empty  # its only token is in flight
    scheduler.update(*in_flight.pop())
    assert not scheduler.has_unfinished()


def test_request_that_stops_on_a_token_drops_what_its_next_step_sampled():
    stop = fake_token(req_id="s", position=9)  # the 2nd output token
    scheduler = make_scheduler()
    runner = FakeRunner(block_size=4)
    scheduler.add(make_request("s", num_prompt_tokens=8, max_tokens=10, stop_token_ids=[stop]))
    results = run_until_done(scheduler, runner, pipelined=True)
    tokens, reason = results["s"]
    assert tokens == expected_output(req_id="s", num_prompt_tokens=8, max_tokens=10,
                                     stop_token_ids=[stop])
    assert reason == "stop" and len(tokens) == 2
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks


def test_request_preempted_with_a_token_in_flight_resumes_only_after_it_arrives():
    scheduler = make_scheduler(num_blocks=4, block_size=4, max_num_batched_tokens=64)
    runner = FakeRunner(block_size=4)
    first = make_request("first", num_prompt_tokens=7, max_tokens=6, ignore_eos=True)
    second = make_request("second", num_prompt_tokens=7, max_tokens=6, ignore_eos=True)
    scheduler.add(first)
    scheduler.add(second)
    in_flight = []
    pipelined_step(scheduler, runner, in_flight)  # both prefill, both sample
    pipelined_step(scheduler, runner, in_flight)  # decodes: 4 blocks for 2 x 8 tokens
    output = scheduler.schedule()  # the 9th tokens need a 5th block: one must go
    assert output.preempted_req_ids == ("second",)
    assert second.status is RequestStatus.PREEMPTED and second.num_pending_tokens == 1
    in_flight.append((output, runner.execute(output)))
    scheduler.update(*in_flight.pop(0))
    assert second.num_pending_tokens == 0 and len(second.output_token_ids) == 2
    results = run_until_done(scheduler, runner, pipelined=True, in_flight=in_flight)
    for req_id in ("first", "second"):
        assert results[req_id][0][-4:] == expected_output(
            req_id=req_id, num_prompt_tokens=7, max_tokens=6, ignore_eos=True)[-4:]


def test_scheduling_two_steps_ahead_of_update_is_refused():
    scheduler = make_scheduler()
    scheduler.add(make_request("a", num_prompt_tokens=4, max_tokens=8, ignore_eos=True))
    scheduler.schedule()
    scheduler.schedule()
    with pytest.raises(StaleSchedulerOutputError, match="at most one step ahead"):
        scheduler.schedule()


def _random_workload(rng: random.Random):
    """Requests with shared prefixes, eos and stop tokens, mixed lengths."""
    shared = [rng.randrange(1000) for _ in range(rng.choice((0, 4, 9)))]
    requests = []
    for index in range(rng.randint(3, 9)):
        req_id = f"r{index}"
        prompt = shared + [rng.randrange(1000) for _ in range(rng.randint(1, 14))]
        max_tokens = rng.randint(1, 12)
        stop = [fake_token(req_id=req_id, position=len(prompt) + rng.randrange(max_tokens))]
        requests.append(dict(req_id=req_id, prompt_token_ids=prompt, max_tokens=max_tokens,
                             eos_token_id=rng.randrange(32), ignore_eos=rng.random() < 0.3,
                             stop_token_ids=stop if rng.random() < 0.5 else []))
    return requests


@pytest.mark.parametrize("seed", range(40))
def test_pipelined_run_gives_every_request_its_undisturbed_tokens(seed):
    rng = random.Random(seed)
    workload = _random_workload(rng)
    num_blocks = rng.choice((9, 12, 64))  # few blocks: preemption under pressure
    runs = {}
    for pipelined in (False, True):
        scheduler = make_scheduler(num_blocks=num_blocks, block_size=4,
                                   max_num_batched_tokens=rng.choice((5, 16, 64)),
                                   max_num_seqs=4)
        rng_state = rng.getstate()
        for spec in workload:
            scheduler.add(make_request(spec["req_id"], **{k: v for k, v in spec.items()
                                                          if k != "req_id"}))
        runs[pipelined] = run_until_done(scheduler, FakeRunner(block_size=4),
                                         pipelined=pipelined)
        rng.setstate(rng_state)
        assert scheduler.block_manager.num_free_blocks == num_blocks
    assert runs[True] == runs[False]
    for spec in workload:
        assert runs[True][spec["req_id"]][0] == expected_output(
            req_id=spec["req_id"], num_prompt_tokens=len(spec["prompt_token_ids"]),
            max_tokens=spec["max_tokens"], eos_token_id=spec["eos_token_id"],
            ignore_eos=spec["ignore_eos"], stop_token_ids=spec["stop_token_ids"])
