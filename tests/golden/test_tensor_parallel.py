"""Tensor parallelism on the CPU (gloo): 2 and 4 ranks, each holding its shard of a tiny
model of every supported family, give the logits (to float32 summation order) and the
greedy tokens of one rank holding it all."""

from __future__ import annotations

import pytest
import torch

from server.engine.models.config import ModelArchConfig, UnsupportedModelError
from server.engine.parallel.tensor_parallel import TensorParallel, check_shardable
from tests.golden.helpers import TINY_CONFIGS, make_hf_model, single_torch_thread
from tests.golden.tp_helpers import greedy_logits, make_runner, tensor_parallel_logits

# MPT's 5 heads split over no even number of ranks: refused, below
SPLITTABLE = [name for name in TINY_CONFIGS if name != "mpt-alibi"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    dirs = {}
    for name in SPLITTABLE:
        path = tmp_path_factory.mktemp(name)
        make_hf_model(name).save_pretrained(path)
        dirs[name] = str(path)
    return dirs


def assert_same_as_one_rank(outcomes, model_dirs, names):
    with single_torch_thread():
        for name in names:
            status, logits = outcomes[model_dirs[name]]
            assert status == "ok", (name, logits)
            reference = greedy_logits(make_runner(model_dirs[name]))
            scale = reference.abs().max().item()
            assert (logits - reference).abs().max().item() <= 1e-4 * max(scale, 1.0), name
            assert torch.equal(logits.argmax(-1), reference.argmax(-1)), name


def test_two_ranks_give_one_ranks_logits_for_every_family(model_dirs, tmp_path):
    outcomes = tensor_parallel_logits(list(model_dirs.values()), world_size=2,
                                      tmp_path=tmp_path)
    assert_same_as_one_rank(outcomes, model_dirs, SPLITTABLE)


def test_four_ranks_replicate_kv_heads_when_there_are_fewer(model_dirs, tmp_path):
    # llama-gqa-tied: 2 kv heads over 4 ranks; llama-mqa: 1; falcon-parallel-mqa: 1
    names = ["llama-gqa-tied", "llama-mqa", "qwen2-bias", "falcon-parallel-mqa", "gpt2"]
    outcomes = tensor_parallel_logits([model_dirs[n] for n in names], world_size=4,
                                      tmp_path=tmp_path)
    assert_same_as_one_rank(outcomes, model_dirs, names)


def test_a_split_the_heads_do_not_allow_is_refused_naming_them():
    arch = ModelArchConfig.from_hf(make_hf_model("mpt-alibi").config.to_dict()
                                   | {"architectures": ["MptForCausalLM"]})
    with pytest.raises(UnsupportedModelError, match=r"num_attention_heads \(5\)"):
        check_shardable(arch, 2)
    with pytest.raises(ValueError, match="rank 2 is not in a group of 2"):
        TensorParallel(rank=2, world_size=2)


def test_fp8_split_over_two_ranks_is_as_accurate_as_fp8_on_one(model_dirs, tmp_path):
    """Weights are quantized whole and then cut (one rank's FP8 weights exactly), but each
    rank quantizes its own share of the o and down projections' inputs, with its own row
    scales, as other engines do: the prefill logits are as far from float32's as one
    rank's FP8 logits are, not equal to them."""
    names = ["llama-gqa-tied", "qwen2-bias"]
    outcomes = tensor_parallel_logits([model_dirs[n] for n in names], world_size=2,
                                      tmp_path=tmp_path, quantization="fp8")
    with single_torch_thread():
        for name in names:
            status, logits = outcomes[model_dirs[name]]
            assert status == "ok", (name, logits)
            exact = greedy_logits(make_runner(model_dirs[name]))[:2]  # the prefill rows
            one_rank = greedy_logits(make_runner(model_dirs[name], quantization="fp8"))[:2]
            one_rank_error = (one_rank - exact).abs().max().item()
            assert 0 < (logits[:2] - exact).abs().max().item() <= 2 * one_rank_error, name
