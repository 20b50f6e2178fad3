"""ModelRunner.execute end to end (inputs, model, sampler, per-request state) against
Hugging Face on a tiny saved model."""

from __future__ import annotations

import pytest
import torch

from server.config import CacheConfig, ModelConfig
from server.engine.step.runner import ModelRunner, UnknownRequestError
from server.engine.loading.weights import resolve_model
from server.scheduler.output import SchedulerOutput
from server.scheduler.request import SamplingParams
from tests.golden.helpers import HandBatcher, hf_logits, saved_hf_model, single_torch_thread

BLOCK_SIZE = 4
NUM_BLOCKS = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return saved_hf_model(tmp_path_factory, "llama-gqa-tied", seed=3)


@pytest.fixture
def runner(saved_model):
    _, model_dir = saved_model
    return ModelRunner(resolve_model(str(model_dir)), dtype=torch.float32, device="cpu",
                       block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS)


def hf_greedy(hf_model, prompt_token_ids: list[int], *, num_tokens: int,
              frequency_penalty: float = 0.0) -> list[int]:
    """HF's own greedy continuation, one full-sequence forward per token."""
    tokens = list(prompt_token_ids)
    outputs: list[int] = []
    for _ in range(num_tokens):
        logits = hf_logits(hf_model, tokens)[-1]
        counts = torch.bincount(torch.tensor(outputs, dtype=torch.int64),
                                minlength=logits.shape[0]).float()
        outputs.append(int((logits - frequency_penalty * counts).argmax()))
        tokens.append(outputs[-1])
    return outputs


def run(runner: ModelRunner, batcher: HandBatcher, plan: dict[str, int | None]) -> dict:
    result = runner.execute(batcher.step(plan))
    sampled = dict(zip(result.req_ids, result.sampled_token_ids))
    batcher.record(sampled)
    return sampled


def empty_output(*, finished: tuple[str, ...] = (),
                 preempted: tuple[str, ...] = ()) -> SchedulerOutput:
    return SchedulerOutput(scheduled=(), new_requests=(), preempted_req_ids=preempted,
                           finished_req_ids=finished, num_batched_tokens=0)


def test_execute_continues_each_request_with_hf_greedy_tokens(saved_model, runner):
    hf_model, _ = saved_model
    prompts = {"a": [5, 9, 14, 3, 77, 120, 8], "b": [200, 3], "c": list(range(30, 48))}
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    for req_id, prompt_token_ids in prompts.items():
        batcher.add(req_id=req_id, prompt_token_ids=prompt_token_ids)
    assert run(runner, batcher, {r: None for r in prompts}).keys() == prompts.keys()
    for _ in range(11):
        run(runner, batcher, {r: 1 for r in prompts})
    for req_id, prompt_token_ids in prompts.items():
        assert batcher.requests[req_id].output_token_ids == hf_greedy(
            hf_model, prompt_token_ids, num_tokens=12), req_id


def test_penalties_count_the_runners_own_tokens_across_preemption(saved_model, runner):
    hf_model, _ = saved_model
    # Unpenalised, this model answers [5, 5, 5, 5] with 147 forever.
    prompt_token_ids = [5, 5, 5, 5]
    params = SamplingParams(temperature=0.0, frequency_penalty=2.0, max_tokens=64)
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    batcher.add(req_id="p", prompt_token_ids=prompt_token_ids, sampling_params=params)
    run(runner, batcher, {"p": None})
    for _ in range(5):
        run(runner, batcher, {"p": 1})
    batcher.preempt("p")  # resumes as new, its history sent along
    run(runner, batcher, {"p": None})
    for _ in range(4):
        run(runner, batcher, {"p": 1})
    expected = hf_greedy(hf_model, prompt_token_ids, num_tokens=11, frequency_penalty=2.0)
    assert expected != hf_greedy(hf_model, prompt_token_ids, num_tokens=11)
    assert batcher.requests["p"].output_token_ids == expected


def test_logprobs_come_back_for_the_requests_that_ask(saved_model, runner):
    hf_model, _ = saved_model
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    batcher.add(req_id="lp", prompt_token_ids=[7, 8, 9, 10, 11, 12],
                sampling_params=SamplingParams(temperature=0.0, logprobs=4))
    batcher.add(req_id="plain", prompt_token_ids=[3, 4])
    out = runner.execute(batcher.step({"lp": None, "plain": None}))
    assert out.req_ids == ("lp", "plain") and out.logprobs is not None
    assert out.logprobs[1] is None
    reference = torch.log_softmax(hf_logits(hf_model, [7, 8, 9, 10, 11, 12])[-1], dim=-1)
    top = reference.topk(4)
    logprobs = out.logprobs[0]
    assert logprobs.token_id == out.sampled_token_ids[0] == int(reference.argmax())
    assert list(logprobs.top_token_ids) == top.indices.tolist()
    assert logprobs.top_logprobs == pytest.approx(top.values.tolist(), abs=1e-4)


def test_a_chunk_that_does_not_sample_returns_no_token(runner):
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    batcher.add(req_id="long", prompt_token_ids=list(range(3, 23)))
    out = runner.execute(batcher.step({"long": 8}))
    assert out.req_ids == () and out.sampled_token_ids == ()


def test_runner_forgets_finished_and_preempted_requests(runner):
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    for req_id in ("x", "y", "z"):
        batcher.add(req_id=req_id, prompt_token_ids=[4, 5, 6])
    run(runner, batcher, {"x": None, "y": None, "z": None})
    assert runner.num_tracked_requests == 3
    batcher.finish("x")
    batcher.preempt("y")
    assert runner.execute(batcher.step({"z": 1})).req_ids == ("z",)
    assert runner.num_tracked_requests == 1
    assert runner.execute(empty_output(finished=("z",))).req_ids == ()
    assert runner.num_tracked_requests == 0


def test_execute_of_an_empty_output_returns_an_empty_model_output(runner):
    out = runner.execute(empty_output())
    assert out.req_ids == () and out.sampled_token_ids == () and out.logprobs is None


def test_sampling_a_request_never_announced_is_an_error(runner):
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    batcher.add(req_id="ghost", prompt_token_ids=[1, 2, 3])
    step = batcher.step({"ghost": None})
    unannounced = SchedulerOutput(step.scheduled, (), (), (), step.num_batched_tokens)
    with pytest.raises(UnknownRequestError, match="ghost"):
        runner.execute(unannounced)


def test_from_config_picks_cpu_float32_and_sizes_the_pool_from_tokens(saved_model):
    _, model_dir = saved_model
    runner = ModelRunner.from_config(ModelConfig(model=str(model_dir), device="auto"),
                                     CacheConfig(block_size=8, kv_cache_tokens=100))
    assert runner.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if runner.device.type == "cpu":
        assert runner.dtype == torch.float32
    assert runner.num_blocks == 12 and runner.block_size == 8
    assert runner.kv_pool.kv_cache.shape == (2, 2, 12, 8, 2, 16)
