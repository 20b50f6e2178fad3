"""The paged model against Hugging Face transformers' own implementation, same weights.

Each tiny config is saved with save_pretrained, loaded through resolve_model and the
ModelRunner, and driven step by step with hand-built SchedulerOutputs. Every sampled row's
logits must match HF's full-sequence forward at the same position, for greedy
continuations of 16 tokens, in each batching situation the scheduler produces.
"""

from __future__ import annotations

import pytest
import torch

from server.engine.models.config import ModelArchConfig
from server.engine.models.llama import LlamaModel
from server.engine.models.rotary import build_cos_sin
from server.engine.models.weight_map import WeightLoadError
from server.engine.step.runner import ModelRunner
from server.engine.loading.weights import resolve_model
from tests.golden.helpers import TINY_CONFIGS, HandBatcher, hf_logits, make_hf_model, \
    single_torch_thread

BLOCK_SIZE = 4
NUM_BLOCKS = 96
NUM_DECODE_STEPS = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module", params=list(TINY_CONFIGS))
def models(request, tmp_path_factory):
    """(HF model, ModelRunner over the same saved weights), shared by a config's tests."""
    hf_model = make_hf_model(request.param)
    model_dir = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(model_dir)
    runner = ModelRunner(resolve_model(str(model_dir)), dtype=torch.float32, device="cpu",
                         block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS)
    return hf_model, runner


class GreedyDriver:
    """Runs plans through runner.forward_logits, continues each sampled request with its
    argmax, and keeps every sampled row's logits with the position it predicts from."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
        self.records: list[tuple[str, int, torch.Tensor]] = []
        self.last_output = None

    def step(self, plan: dict[str, int | None]) -> tuple[str, ...]:
        self.last_output = self.batcher.step(plan)
        req_ids, logits, _ = self.runner.forward_logits(self.last_output)
        for req_id, row in zip(req_ids, logits):
            position = self.batcher.requests[req_id].num_computed_tokens - 1
            self.records.append((req_id, position, row.cpu()))
        self.batcher.record({req_id: int(row.argmax()) for req_id, row in zip(req_ids, logits)})
        return req_ids

    def decode(self, req_ids: list[str], *, num_steps: int) -> None:
        for _ in range(num_steps):
            assert self.step({req_id: 1 for req_id in req_ids}) == tuple(req_ids)

    def assert_matches(self, hf_model, *, num_outputs: dict[str, int]) -> None:
        for req_id, expected in num_outputs.items():
            assert len(self.batcher.requests[req_id].output_token_ids) == expected, req_id
        for req_id, request in self.batcher.requests.items():
            reference = hf_logits(hf_model, request.all_token_ids)
            rows = [(pos, row) for rid, pos, row in self.records if rid == req_id]
            assert len(rows) == len(request.output_token_ids)
            for position, row in rows:
                expected = reference[position]
                scale = expected.abs().max().item()
                diff = (row - expected).abs().max().item()
                assert diff <= 1e-4 * max(scale, 1.0), (req_id, position, diff, scale)


def prompt(*, length: int, offset: int) -> list[int]:
    return [(offset + 37 * i) % 250 + 3 for i in range(length)]


def test_requests_of_different_lengths_batched_together(models):
    hf_model, runner = models
    driver = GreedyDriver(runner)
    lengths = {"short": 3, "mid": 9, "long": 22}
    for index, (req_id, length) in enumerate(lengths.items()):
        driver.batcher.add(req_id=req_id, prompt_token_ids=prompt(length=length, offset=index))
    driver.step({req_id: None for req_id in lengths})
    driver.decode(list(lengths), num_steps=NUM_DECODE_STEPS)
    driver.assert_matches(hf_model, num_outputs={r: NUM_DECODE_STEPS + 1 for r in lengths})


def test_request_joining_while_others_decode(models):
    hf_model, runner = models
    driver = GreedyDriver(runner)
    driver.batcher.add(req_id="a", prompt_token_ids=prompt(length=11, offset=1))
    driver.batcher.add(req_id="b", prompt_token_ids=prompt(length=6, offset=2))
    driver.step({"a": None, "b": None})
    driver.decode(["a", "b"], num_steps=5)
    driver.batcher.add(req_id="late", prompt_token_ids=prompt(length=14, offset=3))
    driver.step({"a": 1, "late": None, "b": 1})
    driver.decode(["a", "b", "late"], num_steps=NUM_DECODE_STEPS)
    driver.assert_matches(hf_model, num_outputs={"a": 23, "b": 23, "late": 17})


def test_prompt_split_into_chunks(models):
    hf_model, runner = models
    driver = GreedyDriver(runner)
    driver.batcher.add(req_id="other", prompt_token_ids=prompt(length=5, offset=4))
    driver.step({"other": None})
    driver.batcher.add(req_id="chunked", prompt_token_ids=prompt(length=30, offset=5))
    # Chunks of 7 cross block boundaries (block size 4); only the last chunk samples.
    for chunk in (7, 7, 7):
        assert driver.step({"chunked": chunk, "other": 1}) == ("other",)
    assert driver.step({"chunked": 9, "other": 1}) == ("chunked", "other")
    driver.decode(["chunked", "other"], num_steps=NUM_DECODE_STEPS)
    driver.assert_matches(hf_model, num_outputs={"chunked": 17, "other": 21})


def test_preempted_request_is_recomputed(models):
    hf_model, runner = models
    driver = GreedyDriver(runner)
    driver.batcher.add(req_id="victim", prompt_token_ids=prompt(length=10, offset=6))
    driver.batcher.add(req_id="keeper", prompt_token_ids=prompt(length=7, offset=7))
    driver.step({"victim": None, "keeper": None})
    driver.decode(["victim", "keeper"], num_steps=6)
    freed = list(driver.batcher.requests["victim"].block_ids)
    driver.batcher.preempt("victim")
    # The newcomer takes the victim's freed blocks and overwrites their KV.
    driver.batcher.add(req_id="newcomer", prompt_token_ids=prompt(length=16, offset=8))
    driver.step({"keeper": 1, "newcomer": None})
    assert set(driver.batcher.requests["newcomer"].block_ids) & set(freed)
    driver.decode(["keeper", "newcomer"], num_steps=2)
    # The victim resumes by recomputing its prompt and 7 outputs (17 tokens) in two chunks.
    driver.step({"victim": 9, "keeper": 1, "newcomer": 1})
    driver.step({"victim": None, "keeper": 1, "newcomer": 1})
    driver.decode(["victim", "keeper", "newcomer"], num_steps=NUM_DECODE_STEPS - 7)
    driver.assert_matches(hf_model, num_outputs={"victim": 17, "keeper": 21, "newcomer": 14})


def test_prefix_cache_hit_reuses_the_donors_blocks(models):
    hf_model, runner = models
    driver = GreedyDriver(runner)
    shared_prompt = prompt(length=13, offset=9)
    driver.batcher.add(req_id="donor", prompt_token_ids=shared_prompt)
    driver.step({"donor": None})
    driver.decode(["donor"], num_steps=3)
    # 12 tokens = 3 full blocks are reused; the hit starts computing at position 12.
    driver.batcher.add(req_id="hit3", prompt_token_ids=shared_prompt[:12] + [200, 201, 202],
                       shared_from="donor", num_shared_blocks=3)
    driver.batcher.add(req_id="hit2", prompt_token_ids=shared_prompt[:8] + [17],
                       shared_from="donor", num_shared_blocks=2)
    driver.step({"donor": 1, "hit3": None, "hit2": None})
    assert [s.start_position for s in driver.last_output.scheduled] == [16, 12, 8]
    driver.decode(["donor", "hit3", "hit2"], num_steps=NUM_DECODE_STEPS)
    driver.assert_matches(hf_model, num_outputs={"donor": 21, "hit3": 17, "hit2": 17})


def test_rotary_table_is_bit_identical_to_hf(models):
    hf_model, runner = models
    arch = runner.arch
    if not arch.rotary:  # GPT-2, MPT: the table rotates by nothing
        half = arch.head_dim // 2
        assert torch.equal(runner.model.cos_sin[:, :half], torch.ones_like(
            runner.model.cos_sin[:, :half]))
        assert not runner.model.cos_sin[:, half:].any()
        return
    positions = torch.arange(arch.max_position_embeddings)[None]
    probe = torch.zeros(1, dtype=torch.float32)
    table = build_cos_sin(head_dim=arch.head_dim, rope_theta=arch.rope_theta,
                          rope_scaling=arch.rope_scaling_dict,
                          max_positions=arch.max_position_embeddings, dtype=torch.float32,
                          device="cpu", rotary_dim=arch.rotary_dim)
    half = arch.head_dim // 2
    rotated = (arch.rotary_dim or arch.head_dim) // 2  # GLM: the rest turn by angle 0
    if arch.local_rope_theta is None:
        hf_cos, hf_sin = hf_model.base_model.rotary_emb(probe, positions)
        assert torch.equal(table[:, :rotated], hf_cos[0, :, :rotated])
        assert torch.equal(table[:, half:half + rotated], hf_sin[0, :, :rotated])
        assert torch.equal(table[:, rotated:half], torch.ones_like(table[:, rotated:half]))
        assert not table[:, half + rotated:].any()
        return
    # Gemma 3: one table per layer type, each layer rotating with its own
    for index, layer_type in enumerate(hf_model.config.layer_types):
        hf_cos, hf_sin = hf_model.model.rotary_emb(probe, positions, layer_type)
        used = runner.model.layer_cos_sin[index]
        assert torch.equal(used[:, :half], hf_cos[0, :, :half]), layer_type
        assert torch.equal(used[:, half:], hf_sin[0, :, :half]), layer_type


def _arch_and_weights(name: str) -> tuple[ModelArchConfig, dict[str, torch.Tensor]]:
    hf_model = make_hf_model(name)
    return ModelArchConfig.from_hf(hf_model.config.to_dict()), dict(hf_model.state_dict())


def test_missing_tensor_is_named_in_the_error():
    arch, weights = _arch_and_weights("llama-gqa-tied")
    del weights["model.layers.1.mlp.up_proj.weight"]
    model = LlamaModel(arch, dtype=torch.float32, device="cpu")
    with pytest.raises(WeightLoadError, match="model.layers.1.mlp.up_proj.weight"):
        model.load_weights(weights.items())


def test_unexpected_tensor_is_named_in_the_error():
    arch, weights = _arch_and_weights("llama-mha")
    weights["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    model = LlamaModel(arch, dtype=torch.float32, device="cpu")
    with pytest.raises(WeightLoadError, match="unexpected tensor .*q_norm"):
        model.load_weights(weights.items())


def test_mis_shaped_tensor_is_named_in_the_error():
    arch, weights = _arch_and_weights("qwen2-bias")
    weights["model.layers.0.self_attn.k_proj.bias"] = torch.zeros(7)
    model = LlamaModel(arch, dtype=torch.float32, device="cpu")
    with pytest.raises(WeightLoadError, match=r"k_proj.bias.*\(7,\)"):
        model.load_weights(weights.items())
