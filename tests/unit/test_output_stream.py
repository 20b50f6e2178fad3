"""OutputStream: outputs that arrive while the request's task is busy merge into one per
engine request (tokens and logprobs joined, the finish reason kept), so what waits stays
bounded however far the client falls behind; failures come after what was waiting."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from server.engine.service.client import EngineDeadError
from server.engine.service.output_stream import OutputStream, merge_outputs
from server.scheduler.output import RequestOutput, TokenLogprobs


def output(req_id: str, token_id: int, *, finish: str | None = None,
           logprob: bool = False, cached: int = 0) -> RequestOutput:
    logprobs = ((TokenLogprobs(token_id=token_id, logprob=-0.5, top_token_ids=(token_id,),
                               top_logprobs=(-0.5,)),) if logprob else None)
    return RequestOutput(req_id=req_id, new_token_ids=(token_id,), finish_reason=finish,
                         num_prompt_tokens=7, num_cached_tokens=cached, logprobs=logprobs)


def test_a_lagging_consumer_gets_one_merged_output_per_request():
    async def run():
        stream = OutputStream()
        for step in range(1000):  # the engine ran 1000 steps while the client slept
            stream._put([output("a", step, logprob=True), output("b", 10_000 + step)])
            assert stream.num_pending == 2  # bounded by the requests, not the steps
        stream._put([output("a", 1000, finish="length", logprob=True, cached=3)])
        batch = await stream.next_batch()
        return stream, {o.req_id: o for o in batch}

    stream, by_id = asyncio.run(run())
    assert by_id["a"].new_token_ids == tuple(range(1001))
    assert [lp.token_id for lp in by_id["a"].logprobs] == list(range(1001))
    assert by_id["a"].finish_reason == "length"
    assert by_id["a"].num_cached_tokens == 3
    assert by_id["b"].new_token_ids == tuple(range(10_000, 11_000))
    assert by_id["b"].logprobs is None and by_id["b"].finish_reason is None
    assert stream.num_merged == 1000 + 999
    assert stream.num_pending == 0


def test_a_consumer_that_keeps_up_sees_every_step_on_its_own():
    async def run():
        stream = OutputStream()
        seen = []

        async def consume():
            for _ in range(3):
                seen.append([o.new_token_ids for o in await stream.next_batch()])

        task = asyncio.create_task(consume())
        for step in range(3):
            await asyncio.sleep(0)  # the consumer waits on the stream again
            stream._put([output("a", step)])
            await asyncio.sleep(0)
        await task
        return stream, seen

    stream, seen = asyncio.run(run())
    assert seen == [[(0,)], [(1,)], [(2,)]]
    assert stream.num_merged == 0


def test_a_failure_is_raised_after_the_outputs_that_came_before_it():
    async def run():
        stream = OutputStream()
        stream._put([output("a", 1)])
        stream._fail(EngineDeadError("gone"))
        stream._fail(EngineDeadError("later failures do not replace the first"))
        first = await stream.next_batch()
        with pytest.raises(EngineDeadError, match="^gone$"):
            await stream.next_batch()
        return first

    assert [o.new_token_ids for o in asyncio.run(run())] == [(1,)]


def test_merging_keeps_an_earlier_finish_reason_and_joins_missing_logprobs():
    merged = merge_outputs(output("a", 1, finish="stop"), output("a", 2))
    assert merged.finish_reason == "stop" and merged.new_token_ids == (1, 2)
    with_lp = merge_outputs(output("a", 1), output("a", 2, logprob=True))
    assert [lp.token_id for lp in with_lp.logprobs] == [2]


def test_the_prompt_logprobs_of_a_first_output_survive_merging():
    prompt = (TokenLogprobs(token_id=5, logprob=-1.0, top_token_ids=(), top_logprobs=(),
                            rank=3),)
    first = replace(output("a", 1), prompt_logprobs=prompt)
    merged = merge_outputs(merge_outputs(first, output("a", 2)), output("a", 3))
    assert merged.prompt_logprobs == prompt and merged.new_token_ids == (1, 2, 3)


def test_merged_tokens_keep_one_gap_per_token_after_the_first():
    from server.api.request_timing import ChoiceTiming

    timing = ChoiceTiming(arrival_at=0.0)
    timing.on_tokens(1.0, 3)  # the first three arrived together
    timing.on_tokens(2.0, 2)  # two more, one second later
    assert timing.token_gaps == [0.0, 0.0, 0.5, 0.5]
    assert timing.num_tokens == 5 and timing.time_to_first_token == 1.0
