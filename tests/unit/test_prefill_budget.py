"""The step budget's policy (server/scheduler/budget.py): running decodes are scheduled
before any prefill chunk, so none is ever left out of a step while prompts queue (also when
more requests may run than a step has tokens), and prefill chunks stay under
--max-prefill-tokens."""

from __future__ import annotations

import pytest

from server.config import SchedulerConfig
from tests.unit.scheduler_helpers import (DecodeWatch, FakeRunner, expected_output,
                                          make_request, make_scheduler, run_until_done)


def decoding_batch(watch: DecodeWatch, scheduler, runner, *, count: int,
                   max_tokens: int = 60, priority: int = 0) -> None:
    """`count` short requests, stepped until all of them are decoding."""
    for i in range(count):
        watch.add(scheduler, make_request(f"dec{i}", num_prompt_tokens=3,
                                          max_tokens=max_tokens, priority=priority))
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in watch.requests.values()):
        watch.step(scheduler, runner)


def test_queued_prompts_never_hold_up_a_running_decode_and_chunk_under_the_cap():
    scheduler = make_scheduler(num_blocks=400, max_num_seqs=12, max_num_batched_tokens=64,
                               max_prefill_tokens=16, max_model_len=512)
    runner = FakeRunner(block_size=4)
    watch = DecodeWatch()
    decoding_batch(watch, scheduler, runner, count=8)
    for i in range(4):  # prompts of 100 tokens, prefilled 16 tokens a step
        watch.add(scheduler, make_request(f"long{i}", num_prompt_tokens=100, max_tokens=2))
    first_token_step = {}
    start = len(watch.prefill_tokens)
    for step_index in range(40):
        for out in watch.step(scheduler, runner):
            first_token_step.setdefault(out.req_id, step_index)
        assert watch.max_skips == 0, watch.skips
        assert watch.prefill_tokens[-1] <= 16
    # the cap was the limit, not the budget: 400 prompt tokens in 25 steps, each prompt
    # starting in the step the one before it ends (first tokens at 100, 200, 300, 400)
    assert watch.prefill_tokens[start:start + 25] == [16] * 25
    assert [first_token_step[f"long{i}"] for i in range(4)] == [6, 12, 18, 24]


def test_a_high_priority_prompt_does_not_take_the_running_decodes_slots():
    # Under the priority policy a new, more urgent prompt sorts ahead of the running
    # requests; it used to take the whole budget until its prompt was done.
    scheduler = make_scheduler(num_blocks=400, max_num_seqs=8, max_num_batched_tokens=32,
                               policy="priority", max_model_len=512)
    runner = FakeRunner(block_size=4)
    watch = DecodeWatch()
    decoding_batch(watch, scheduler, runner, count=4, priority=5)
    watch.add(scheduler, make_request("urgent", num_prompt_tokens=200, max_tokens=2,
                                      priority=0))
    for _ in range(5):
        watch.step(scheduler, runner)
        assert watch.max_skips == 0, watch.skips
    # and the prompt still gets the rest of every step
    assert watch.requests["urgent"].num_computed_tokens == 5 * (32 - 4)


def test_more_running_requests_than_step_tokens_still_never_skip_a_decode():
    # max_num_seqs 10 over a budget of 4: a prompt only finishes in a step the decodes left
    # a token to, so at most 4 ever decode at once, and the rest wait for their first token
    scheduler = make_scheduler(num_blocks=400, max_num_seqs=10, max_num_batched_tokens=4,
                               max_model_len=512)
    runner = FakeRunner(block_size=4)
    watch = DecodeWatch()
    for i in range(10):
        watch.add(scheduler, make_request(f"req{i}", num_prompt_tokens=2, max_tokens=12))
    finished = []
    for _ in range(200):
        if not scheduler.has_unfinished():
            break
        finished += [out.req_id for out in watch.step(scheduler, runner) if out.finished]
        assert watch.max_skips == 0, watch.skips
        assert watch.prefill_tokens[-1] + len(watch.decodes) <= 4
    assert sorted(finished) == sorted(watch.requests)


def test_a_decode_scheduled_first_can_still_be_preempted_for_a_prefill_ahead_of_it():
    # Priority policy: "urgent" sorts ahead of "dec" in the running list, so dec is the
    # preemption victim; but dec's decode is scheduled first. When urgent's next chunk
    # needs the blocks dec holds, dec's chunk leaves the step and its tokens come back.
    scheduler = make_scheduler(num_blocks=5, block_size=4, max_num_seqs=2,
                               max_num_batched_tokens=8, max_model_len=64, policy="priority")
    runner = FakeRunner(block_size=4)
    dec = make_request("dec", num_prompt_tokens=3, max_tokens=6, priority=5)
    urgent = make_request("urgent", num_prompt_tokens=14, max_tokens=3, priority=0)
    scheduler.add(dec)
    first = scheduler.schedule()
    scheduler.update(first, runner.execute(first))
    scheduler.add(urgent)
    second = scheduler.schedule()  # dec decodes, urgent gets the other 7 tokens
    scheduler.update(second, runner.execute(second))
    assert [(c.req_id, c.num_tokens) for c in second.scheduled] == [("dec", 1), ("urgent", 7)]
    third = scheduler.schedule()
    assert third.preempted_req_ids == ("dec",)
    assert [(c.req_id, c.num_tokens) for c in third.scheduled] == [("urgent", 7)]
    assert third.num_batched_tokens == 7 and dec.num_pending_tokens == 0
    scheduler.update(third, runner.execute(third))
    run_until_done(scheduler, runner)  # the runner checks every chunk against the KV
    for request in (dec, urgent):
        assert request.output_token_ids == expected_output(
            req_id=request.req_id, num_prompt_tokens=request.num_prompt_tokens,
            max_tokens=request.sampling_params.max_tokens)


def test_the_prefill_cap_must_fit_the_step_budget():
    with pytest.raises(ValueError, match="--max-prefill-tokens must be in 1..2048"):
        SchedulerConfig(max_prefill_tokens=4096)
    with pytest.raises(ValueError, match="--max-prefill-tokens"):
        SchedulerConfig(max_prefill_tokens=0)
    assert SchedulerConfig().prefill_token_cap == 2048
    assert SchedulerConfig(max_prefill_tokens=256).prefill_token_cap == 256
