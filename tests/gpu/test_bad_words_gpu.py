"""bad_words on the GPU path: decode steps replay CUDA graphs (async scheduling on), rows
with bans take the sampler's full path, and a banned sequence never appears, while rows
without bans in the same batches keep the tokens of a run with no bans at all."""

from __future__ import annotations

import pytest

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams
from tests.gpu.test_engine_gpu import default_model_path  # noqa: F401 (a fixture)

PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,",
           "The best way to learn a language is"]


def _greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, **kwargs)


def _contains(tokens, word) -> bool:
    size = len(word)
    return any(tuple(tokens[i:i + size]) == tuple(word) for i in range(len(tokens) - size + 1))


@pytest.fixture(scope="module")
def llm(default_model_path):  # noqa: F811
    llm = LLM(str(default_model_path), device="cuda", dtype="float16",
              kv_cache_tokens=16384, async_scheduling=True)
    assert llm.engine.runner.graphs is not None and llm.engine.async_scheduling
    return llm


def test_banned_pairs_never_appear_under_graphs_in_mixed_batches(llm):
    free = llm.generate(PROMPTS, _greedy())
    replays = llm.engine.runner.graphs.num_replays
    pairs = [tuple(c.token_ids[4:6]) for c in free]
    params = [_greedy(bad_words=(pairs[i],)) if i % 2 == 0 else _greedy()
              for i in range(len(PROMPTS))]
    got = llm.generate(PROMPTS, params)
    assert llm.engine.runner.graphs.num_replays > replays  # the decode steps were graphs
    for i, completion in enumerate(got):
        if i % 2 == 0:
            assert not _contains(completion.token_ids, pairs[i]), i
            assert completion.token_ids != free[i].token_ids, i
        else:
            assert completion.token_ids == free[i].token_ids, i


def test_sampled_rows_with_bans_beside_device_sampled_rows(llm):
    """Random rows without history go to the device-sampling fast path; one with a ban in
    the same steps forces the full path for the batch, and its ban holds."""
    free = llm.generate(PROMPTS[:1], _greedy())[0].token_ids
    word = tuple(free[2:5])
    params = [_greedy(bad_words=(word,)),
              SamplingParams(temperature=0.8, top_k=20, max_tokens=32, ignore_eos=True),
              SamplingParams(temperature=0.8, top_p=0.9, max_tokens=32, ignore_eos=True)]
    got = llm.generate([PROMPTS[0]] * 3, params)
    assert not _contains(got[0].token_ids, word)
    assert all(len(c.token_ids) == 32 for c in got)
