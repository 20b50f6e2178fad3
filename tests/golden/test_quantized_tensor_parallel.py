"""Integer weights split over two ranks (gloo, CPU): a rank holds its rows, or its columns cut
along whole groups (dequantized where its columns would split a group), so weight-only
schemes give one rank's logits to float32 summation order: GPTQ with act-order (its down
projection's permutation moved into gate and up before the cut), AWQ written by `inflightd
quantize`, and int4_wo / int8_wo rounded whole as they load, then cut."""

from __future__ import annotations

import json

import torch

from tests.golden.helpers import make_hf_model, single_torch_thread
from tests.golden.test_quantize_engine import TEXTS, quantize, save_tiny_llama
from tests.golden.test_quantized_checkpoints_engine import write_checkpoint
from tests.golden.tp_helpers import greedy_logits, make_runner, tensor_parallel_logits


def assert_one_ranks_logits(outcomes: dict, models: list[str], quantization: str | None):
    with single_torch_thread():
        for model in models:
            status, logits = outcomes[model]
            assert status == "ok", (model, logits)
            reference = greedy_logits(make_runner(model, quantization=quantization))
            assert (logits - reference).abs().max().item() <= 1e-4 * max(
                reference.abs().max().item(), 1.0), model
            assert torch.equal(logits.argmax(-1), reference.argmax(-1)), model


def test_two_ranks_give_one_ranks_logits_for_quantized_checkpoints(tmp_path):
    gptq = tmp_path / "gptq-act-order"
    write_checkpoint(make_hf_model("llama-gqa-tied"), gptq, method="gptq", bits=4,
                     symmetric=True, desc_act=True)
    calibration = tmp_path / "texts.jsonl"
    calibration.write_text("".join(json.dumps(text) + "\n" for text in TEXTS))
    awq = quantize(save_tiny_llama(tmp_path / "llama"), "awq", tmp_path / "awq",
                   "--calibration", str(calibration))
    models = [str(gptq), str(awq)]
    outcomes = tensor_parallel_logits(models, world_size=2, tmp_path=tmp_path)
    assert_one_ranks_logits(outcomes, models, None)


def test_two_ranks_give_one_ranks_logits_with_integers_rounded_on_load(tmp_path):
    model = tmp_path / "llama"
    make_hf_model("llama-gqa-tied").save_pretrained(model)
    for quantization in ("int4_wo", "int8_wo"):
        outcomes = tensor_parallel_logits([str(model)], world_size=2, tmp_path=tmp_path,
                                          quantization=quantization)
        assert_one_ranks_logits(outcomes, [str(model)], quantization)
