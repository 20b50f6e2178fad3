"""Prompt logprobs below the model: which rows of a packed step give them
(plan_prompt_logprobs), their values against log_softmax of the same logits a slice at a
time, the scheduler gathering them over chunks and handing them out once (max_tokens 0
included), and the no-prefix-hit rule for requests that want them."""

from __future__ import annotations

import pytest
import torch

from server.engine.step import prompt_logprobs as prompt_module
from server.engine.step.prompt_logprobs import (PendingPromptLogprobs, compute_prompt_logprobs,
                                                plan_prompt_logprobs)
from server.kvcache.block_manager import BlockManager
from server.scheduler.errors import ModelOutputMismatchError
from server.scheduler.output import (ModelOutput, PromptLogprobsChunk, ScheduledRequest,
                                     TokenLogprobs)
from server.scheduler.prompt_logprobs import gather_prompt_logprobs, take_prompt_logprobs
from server.scheduler.request import Request, SamplingParams
from tests.unit.scheduler_helpers import FakeRunner, make_scheduler

PROMPTS = {"a": list(range(100, 110)), "b": [7], "c": list(range(200, 206))}


def chunk(req_id: str, start: int, end: int, *, sample: bool = False) -> ScheduledRequest:
    return ScheduledRequest(req_id, tuple(PROMPTS[req_id][start:end]), start, (0, 1, 2),
                            sample)


# ---- which rows ----------------------------------------------------------------------------

def test_plan_takes_each_wanted_chunks_rows_that_predict_a_prompt_token():
    decode = ScheduledRequest("d", (5,), 30, (3,), True)
    scheduled = [decode, chunk("a", 0, 4), chunk("c", 2, 6, sample=True), chunk("b", 0, 1,
                                                                               sample=True)]
    plan = plan_prompt_logprobs(scheduled, {"a": 2, "b": 1, "c": 0}, PROMPTS.__getitem__)
    # a: rows 1..4 predict a[1..4]; c: rows 5..7 predict c[3..5], its row 8 is sampled
    assert plan.rows == (1, 2, 3, 4, 5, 6, 7)
    assert plan.target_ids == (*PROMPTS["a"][1:5], *PROMPTS["c"][3:6])
    assert [(s.req_id, s.first_index, s.num_rows, s.num_top) for s in plan.segments] == \
        [("a", 1, 4, 2), ("c", 3, 3, 0)]
    assert plan.completed_req_ids == ("c", "b")  # b's one token has nothing to predict


def test_plan_skips_requests_not_wanted_but_counts_their_rows():
    plan = plan_prompt_logprobs([chunk("a", 0, 10, sample=True), chunk("c", 0, 3)], {"c": 1},
                                PROMPTS.__getitem__)
    assert plan.rows == (10, 11, 12) and plan.completed_req_ids == ()


# ---- their values ----------------------------------------------------------------------------

@pytest.mark.parametrize("pass_elements", [1 << 25, 3 * 64], ids=["one-pass", "3-row-passes"])
def test_values_are_log_softmax_of_the_rows_logits_with_ranks_and_top_k(monkeypatch,
                                                                        pass_elements):
    monkeypatch.setattr(prompt_module, "PASS_ELEMENTS", pass_elements)
    vocab, generator = 64, torch.Generator().manual_seed(0)
    head = torch.randn(vocab, 8, generator=generator)
    hidden = torch.randn(12, 8, generator=generator)
    scheduled = [ScheduledRequest("x", tuple(range(12)), 0, (0,), True)]
    prompt = [int(t) for t in torch.randint(0, vocab, (12,), generator=generator)]
    plan = plan_prompt_logprobs(scheduled, {"x": 3}, lambda _: prompt)
    tensors = compute_prompt_logprobs(hidden, plan, lambda rows: rows @ head.T,
                                      vocab_size=vocab)
    (got,) = PendingPromptLogprobs(plan, tensors).resolve()
    reference = (hidden[:11] @ head.T).log_softmax(dim=-1)
    assert got.req_id == "x" and got.first_index == 1 and len(got.entries) == 11
    for row, entry in enumerate(got.entries):
        target = prompt[row + 1]
        assert entry.token_id == target
        assert entry.logprob == pytest.approx(reference[row, target].item(), abs=1e-5)
        assert entry.rank == int((reference[row] > reference[row, target]).sum()) + 1
        top = reference[row].topk(3)
        assert entry.top_token_ids == tuple(top.indices.tolist())
        assert entry.top_logprobs == pytest.approx(top.values.tolist(), abs=1e-5)


# ---- the scheduler -------------------------------------------------------------------------

def run_with_prompt_logprobs(scheduler, runner: FakeRunner, wanted: dict[str, int]):
    """Steps until done; the fake runner's prompt logprobs are -index for each token."""
    outputs, prompts = [], {}
    while scheduler.has_unfinished():
        out = scheduler.schedule()
        prompts.update({new.req_id: new.prompt_token_ids for new in out.new_requests})
        model_output = runner.execute(out)
        plan = plan_prompt_logprobs(out.scheduled, wanted, prompts.__getitem__)
        chunks, row = [], 0
        for segment in plan.segments:
            entries = tuple(TokenLogprobs(t, -float(segment.first_index + i), (), ())
                            for i, t in enumerate(plan.target_ids[row:row + segment.num_rows]))
            chunks.append(PromptLogprobsChunk(segment.req_id, segment.first_index, entries))
            row += segment.num_rows
        outputs += scheduler.update(out, ModelOutput(
            model_output.req_ids, model_output.sampled_token_ids, prompt_logprobs=tuple(chunks)))
    return outputs


def request(req_id: str, prompt: list[int], **params) -> Request:
    return Request(req_id=req_id, prompt_token_ids=prompt,
                   sampling_params=SamplingParams(ignore_eos=True, **params))


def test_chunked_prompt_logprobs_come_whole_with_the_first_token_and_only_then():
    scheduler = make_scheduler(max_num_batched_tokens=4, block_size=4)
    prompt = list(range(50, 61))
    scheduler.add(request("p", prompt, max_tokens=3, prompt_logprobs=1))
    outputs = run_with_prompt_logprobs(scheduler, FakeRunner(block_size=4), {"p": 1})
    assert [len(o.new_token_ids) for o in outputs] == [1, 1, 1]
    first = outputs[0].prompt_logprobs
    assert [e.token_id for e in first] == prompt[1:]
    assert [e.logprob for e in first] == [-float(i) for i in range(1, len(prompt))]
    assert outputs[1].prompt_logprobs is None and outputs[2].prompt_logprobs is None


def test_max_tokens_zero_ends_with_the_prompt_logprobs_and_no_token():
    scheduler = make_scheduler(max_num_batched_tokens=5, block_size=4)
    scheduler.add(request("z", list(range(9)), max_tokens=0, prompt_logprobs=0))
    (output,) = run_with_prompt_logprobs(scheduler, FakeRunner(block_size=4), {"z": 0})
    assert output.new_token_ids == () and output.finish_reason == "length"
    assert len(output.prompt_logprobs) == 8
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks


def test_a_request_owed_prompt_logprobs_takes_no_prefix_hit_but_others_hit_its_blocks():
    scheduler = make_scheduler(block_size=4)
    prompt = list(range(300, 313))
    scheduler.add(request("warm", prompt, max_tokens=1))
    runner = FakeRunner(block_size=4)
    run_with_prompt_logprobs(scheduler, runner, {})
    scheduler.add(request("scored", prompt, max_tokens=1, prompt_logprobs=0))
    scheduler.add(request("plain", prompt, max_tokens=1))
    outputs = {o.req_id: o for o in run_with_prompt_logprobs(scheduler, runner,
                                                             {"scored": 0})}
    assert outputs["scored"].num_cached_tokens == 0
    assert len(outputs["scored"].prompt_logprobs) == len(prompt) - 1
    assert outputs["plain"].num_cached_tokens == 12


def test_a_recomputed_chunk_replaces_the_entries_from_its_start():
    req = request("r", list(range(7)), prompt_logprobs=0)

    def entries(first: int, count: int, value: float) -> PromptLogprobsChunk:
        return PromptLogprobsChunk("r", first, tuple(
            TokenLogprobs(first + i, value, (), ()) for i in range(count)))

    gather_prompt_logprobs(req, entries(1, 3, -1.0))
    gather_prompt_logprobs(req, entries(1, 4, -2.0))  # preempted, recomputed from 0
    with pytest.raises(ModelOutputMismatchError):
        take_prompt_logprobs(req)  # token 5 and 6 missing
    gather_prompt_logprobs(req, entries(5, 2, -2.0))
    assert [e.logprob for e in take_prompt_logprobs(req)] == [-2.0] * 6
    assert req.prompt_logprobs is None
    with pytest.raises(ModelOutputMismatchError):
        gather_prompt_logprobs(request("s", [1, 2, 3, 4], prompt_logprobs=0),
                               PromptLogprobsChunk("s", 3, ()))  # entries 1..2 lost


def test_block_manager_without_prefix_reuse_allocates_fresh_blocks_and_caches_them():
    blocks = BlockManager(16, 4)
    tokens = list(range(40, 49))
    blocks.allocate("a", tokens, 9)
    blocks.cache_computed_blocks("a", tokens, 9)
    assert blocks.num_cached_prefix_tokens(tokens) == 8
    assert blocks.num_cached_prefix_tokens(tokens, reuse_prefix=False) == 0
    table = blocks.allocate("b", tokens, 9, reuse_prefix=False)
    assert table.num_cached_tokens == 0
    assert not set(table.block_ids) & set(blocks.get_block_table("a").block_ids)
    blocks.free("a")
    blocks.cache_computed_blocks("b", tokens, 9)  # same content: "a"'s blocks keep the hash
    assert blocks.allocate("c", tokens, 9).num_cached_tokens == 8
    blocks.check_invariants()
