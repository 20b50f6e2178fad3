"""The batch-1 decode stack (csrc/decode_stack.cu through server/engine/fused/decode_stack.py)
on the GPU: one sequence's decode steps through it, eagerly and in the replayed batch-1
graph, against the per-op kernels and the torch reference on the same random weights."""

from __future__ import annotations

import random

import pytest
import torch

from server.engine.fused.decode_stack import DECODE_STACK_ENV, DecodeStack
from server.engine.ops.torch_ref import TorchOps
from server.engine.step.runner import ModelRunner
from tests.golden.helpers import HandBatcher
from tests.gpu.helpers import relative_error
from tests.gpu.test_cuda_graphs import (BLOCK_SIZE, MAX_MODEL_LEN, NUM_BLOCKS,
                                        SAME_STEP_MAX_ERROR, small_model_source)

VS_REFERENCE_MAX_ERROR = 2e-2  # bf16 roundings against the torch reference's
VS_PER_OP_MAX_ERROR = 2e-2  # the same roundings, other summation orders and attention splits
_SMALL = {"vocab_size": 4096, "bos_token_id": 1, "eos_token_id": 2,
          "tie_word_embeddings": False}
FAMILIES = {
    # head_dim 64, GELU tanh
    "gpt2": {**_SMALL, "architectures": ["GPT2LMHeadModel"], "n_embd": 512, "n_layer": 3,
             "n_head": 8, "n_positions": MAX_MODEL_LEN, "activation_function": "gelu_new",
             "layer_norm_epsilon": 1e-5},
    # exact GELU; gpt2-xl's width and heads (25 of 64: a row count no SM count divides)
    "gpt2-xl-wide-erf": {**_SMALL, "architectures": ["GPT2LMHeadModel"], "n_embd": 1600,
                         "n_layer": 2, "n_head": 25, "n_positions": MAX_MODEL_LEN,
                         "activation_function": "gelu", "layer_norm_epsilon": 1e-5},
    # multi-query, head_dim 128 (Starcoder 1)
    "gpt-bigcode": {**_SMALL, "architectures": ["GPTBigCodeForCausalLM"], "n_embd": 512,
                    "n_layer": 3, "n_head": 4, "n_positions": MAX_MODEL_LEN,
                    "multi_query": True, "activation_function": "gelu_pytorch_tanh",
                    "layer_norm_epsilon": 1e-5},
}


def make_runner(hf_config: dict, **kwargs) -> ModelRunner:
    options = dict(dtype=torch.bfloat16, device="cuda", block_size=BLOCK_SIZE,
                   num_blocks=NUM_BLOCKS, max_num_seqs=8, max_model_len=MAX_MODEL_LEN)
    return ModelRunner(small_model_source(hf_config), **{**options, **kwargs})


@pytest.mark.parametrize("prompt_len", [1, 16, 333, 1500])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_decode_steps_through_the_stack_track_the_per_op_kernels_and_the_reference(
        family, prompt_len, monkeypatch):
    hf_config = FAMILIES[family]
    stacked = make_runner(hf_config)
    assert isinstance(stacked.model.decode_stack, DecodeStack)
    monkeypatch.setenv(DECODE_STACK_ENV, "0")
    per_op = make_runner(hf_config, enforce_eager=True)
    assert per_op.model.decode_stack is None
    reference = make_runner(hf_config, ops=TorchOps(), enforce_eager=True)
    stacked.capture_graphs()

    rng = random.Random(prompt_len)
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    rng.shuffle(batcher.free_block_ids)  # a table of scattered blocks
    batcher.add(req_id="a", prompt_token_ids=[rng.randrange(3, 4096) for _ in range(prompt_len)])
    out = batcher.step({"a": None})
    for step in range(20):
        ids, want, _ = reference.forward_logits(out, allow_graph=False)
        eager = stacked.forward_logits(out, allow_graph=False)[1].clone()
        graph = stacked.forward_logits(out)[1]
        assert not torch.isnan(graph).any()
        assert relative_error(graph, want) <= VS_REFERENCE_MAX_ERROR, step
        assert relative_error(eager, per_op.forward_logits(out)[1]) <= VS_PER_OP_MAX_ERROR, step
        assert relative_error(graph, eager) <= SAME_STEP_MAX_ERROR, step
        batcher.record({"a": int(want.argmax(-1)[0])})
        out = batcher.step({"a": 1})
    assert stacked.graphs.num_replays >= 19


def test_a_step_of_two_sequences_takes_the_per_op_kernels(monkeypatch):
    stacked = make_runner(FAMILIES["gpt2"], enforce_eager=True)
    calls = []
    monkeypatch.setattr(stacked.model.decode_stack, "run",
                        lambda *args: calls.append(args) or pytest.fail("stack ran"))
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    for req_id in "ab":
        batcher.add(req_id=req_id, prompt_token_ids=list(range(3, 40)))
    out = batcher.step({"a": None, "b": None})
    stacked.forward_logits(out)
    batcher.record({"a": 5, "b": 6})
    stacked.forward_logits(batcher.step({"a": 1, "b": 1}))
    assert calls == []


def test_the_producers_ways_of_copying_and_paces_give_bit_identical_steps():
    """The producer's three ways of filling a stage (DecodeStack.copies) and its paces
    (DecodeStack.pacing) move the same bytes: a step's logits are the same bits every way."""
    stacked = make_runner(FAMILIES["gpt2-xl-wide-erf"], enforce_eager=True)
    stack = stacked.model.decode_stack
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    batcher.add(req_id="a", prompt_token_ids=[(7 * i) % 4093 + 3 for i in range(333)])
    stacked.forward_logits(batcher.step({"a": None}))
    batcher.record({"a": 5})
    out = batcher.step({"a": 1})
    logits = []
    for copies, pacing in (("bulk", 0), ("cp_async", 0), ("cp_async", 1), ("cp_async", 2),
                           ("bulk", 3), ("cp_async", 12), ("plain", 0), ("plain", 2)):
        stack.copies, stack.pacing = copies, pacing
        logits.append(stacked.forward_logits(out)[1].clone())
    assert all(torch.equal(logits[0], other) for other in logits[1:])
