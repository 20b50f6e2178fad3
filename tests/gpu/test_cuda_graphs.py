"""The runner's decode CUDA graphs on a small random bf16 model: replay against the same padded
step run eagerly, against the plain eager path, padding that writes nothing, and the
fallbacks (steps beyond the largest bucket, non-sampling rows, enforce_eager)."""

from __future__ import annotations

import random

import pytest
import torch

from server.engine.models.config import ModelArchConfig
from server.engine.ops.cuda import CudaOps
from server.engine.step.runner import ModelRunner
from server.engine.loading.weights import ModelSource
from tests.golden.helpers import HandBatcher
from tests.gpu.helpers import relative_error

BLOCK_SIZE, NUM_BLOCKS, MAX_MODEL_LEN = 16, 1024, 4096
SMALL_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
               "hidden_act": "silu", "vocab_size": 4096, "hidden_size": 512,
               "intermediate_size": 1024, "num_hidden_layers": 3, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 128, "max_position_embeddings": MAX_MODEL_LEN,
               "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
               "eos_token_id": 2, "tie_word_embeddings": False}
SAME_STEP_MAX_ERROR = 5e-3  # graph vs the same padded step run eagerly
EAGER_MAX_ERROR = 2e-2  # graph vs the unpadded eager path (other GEMM shapes, other split)


def small_model_source(hf_config: dict = SMALL_LLAMA) -> ModelSource:
    return ModelSource(name="small-llama", arch=ModelArchConfig.from_hf(hf_config),
                       hf_config=hf_config, weights_dir=None, tokenizer_dir=None,
                       dummy_seed=5)


def make_runner(**kwargs) -> ModelRunner:
    options = dict(dtype=torch.bfloat16, device="cuda", block_size=BLOCK_SIZE,
                   num_blocks=NUM_BLOCKS, max_num_seqs=8, max_model_len=MAX_MODEL_LEN)
    return ModelRunner(small_model_source(), **{**options, **kwargs})


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    runner = make_runner()
    runner.capture_graphs()  # at startup, as the engine does
    return runner


def assert_tracks_reference(*, runner: ModelRunner, reference: ModelRunner,
                            baseline: ModelRunner, max_vs_reference: float,
                            max_vs_baseline: float, seed: int) -> None:
    """A prefill of 900, 7 and 130 tokens and three decode steps (replayed graphs on
    `runner`): runner's logits within max_vs_reference of reference's (greedy tokens taken
    from it) and max_vs_baseline of baseline's; then a replay against the same padded step
    run eagerly."""
    rng = random.Random(seed)
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    for req_id, length in {"a": 900, "b": 7, "c": 130}.items():
        batcher.add(req_id=req_id,
                    prompt_token_ids=[rng.randrange(3, 4096) for _ in range(length)])
    out = batcher.step({req_id: None for req_id in "abc"})
    for step in range(3):
        ids, want, _ = reference.forward_logits(out, allow_graph=False)
        got = runner.forward_logits(out)[1]
        assert not torch.isnan(got).any()
        error = relative_error(got, want)
        assert error <= max_vs_reference, (step, error)
        error = relative_error(got, baseline.forward_logits(out)[1])
        assert error <= max_vs_baseline, (step, error)
        batcher.record({r: int(token) for r, token in zip(ids, want.argmax(-1))})
        out = batcher.step({req_id: 1 for req_id in "abc"})
    assert runner.graphs.num_replays >= 2
    # The unpadded eager path splits a long context's keys differently, which FP8 magnifies
    # (0.028 seen on row "a"): compare with the same padded step instead.
    same_step = runner.graphs.run(out.scheduled, replay=False).clone()
    assert relative_error(runner.forward_logits(out)[1], same_step) <= SAME_STEP_MAX_ERROR


def prefilled(runner: ModelRunner, prompt_lens: dict[str, int], *, seed: int) -> HandBatcher:
    rng = random.Random(seed)
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    rng.shuffle(batcher.free_block_ids)  # tables of scattered blocks
    for req_id, length in prompt_lens.items():
        batcher.add(req_id=req_id, prompt_token_ids=[rng.randrange(3, 4096)
                                                     for _ in range(length)])
    result = runner.execute(batcher.step({req_id: None for req_id in prompt_lens}))
    batcher.record(dict(zip(result.req_ids, result.sampled_token_ids)))
    return batcher


def test_runner_on_gpu_uses_our_kernels_and_captures_every_bucket(runner):
    assert isinstance(runner.ops, CudaOps)
    assert runner.graphs.batch_sizes == (1, 2, 4, 8) and runner.graphs.captured


def test_replay_equals_the_same_step_run_eagerly_and_the_eager_path(runner):
    # Contexts from 6 to ~3000 keys in one step: the graph was planned for 4096.
    batcher = prefilled(runner, {"a": 3000, "b": 5, "c": 700, "d": 64}, seed=1)
    for step in range(3):
        out = batcher.step({req_id: 1 for req_id in "abcd"})
        eager = runner.forward_logits(out, allow_graph=False)[1].clone()
        same_step = runner.graphs.run(out.scheduled, replay=False).clone()
        replays = runner.graphs.num_replays
        req_ids, graph, _ = runner.forward_logits(out)
        assert runner.graphs.num_replays == replays + 1 and req_ids == tuple("abcd")
        assert not torch.isnan(graph).any()
        assert relative_error(graph, same_step) <= SAME_STEP_MAX_ERROR, step
        assert relative_error(graph, eager) <= EAGER_MAX_ERROR, step
        batcher.record({r: int(token) for r, token in zip(req_ids, graph.argmax(-1))})


def test_padded_rows_write_nothing_into_the_kv_pool(runner):
    batcher = prefilled(runner, {"x": 40, "y": 17, "z": 333}, seed=2)
    out = batcher.step({"x": 1, "y": 1, "z": 1})  # 3 rows in the bucket of 4
    expected_slots = {s.block_ids[s.start_position // BLOCK_SIZE] * BLOCK_SIZE
                      + s.start_position % BLOCK_SIZE for s in out.scheduled}
    kv = runner.kv_pool.kv_cache
    before = kv.clone()
    runner.forward_logits(out)
    torch.cuda.synchronize()
    changed = (kv != before).flatten(start_dim=4).any(dim=-1)  # [L, 2, blocks, block_size]
    changed_slots = changed.any(dim=0).any(dim=0).flatten().nonzero().flatten().tolist()
    assert set(changed_slots) == expected_slots


def test_steps_larger_than_the_largest_bucket_run_eagerly():
    runner = make_runner(max_num_seqs=2)
    batcher = prefilled(runner, {"p": 30, "q": 31, "r": 32}, seed=3)
    out = batcher.step({"p": 1, "q": 1, "r": 1})
    ids, logits, _ = runner.forward_logits(out)
    assert runner.graphs.num_replays == 0 and ids == ("p", "q", "r")
    assert torch.equal(logits, runner.forward_logits(out, allow_graph=False)[1])


def test_decode_only_step_with_a_non_sampling_chunk_returns_only_sampled_rows(runner):
    batcher = prefilled(runner, {"m": 50, "n": 70}, seed=4)
    batcher.add(req_id="chunked", prompt_token_ids=list(range(10, 20)))
    runner.execute(batcher.step({"chunked": 8}))  # 8 of 10 prompt tokens, nothing sampled
    out = batcher.step({"m": 1, "chunked": 1, "n": 1})  # token 9 of 10: not sampled yet
    assert out.is_decode_only and [s.sample for s in out.scheduled] == [True, False, True]
    eager = runner.forward_logits(out, allow_graph=False)[1].clone()
    req_ids, graph, _ = runner.forward_logits(out)
    assert req_ids == ("m", "n") and graph.shape[0] == 2
    assert relative_error(graph, eager) <= EAGER_MAX_ERROR


def test_enforce_eager_runs_decode_steps_without_graphs():
    runner = make_runner(enforce_eager=True)
    assert runner.graphs is None and isinstance(runner.ops, CudaOps)
    batcher = prefilled(runner, {"e": 12}, seed=5)
    result = runner.execute(batcher.step({"e": 1}))
    assert result.req_ids == ("e",) and len(result.sampled_token_ids) == 1
