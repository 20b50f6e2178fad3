"""`inflightd serve DIR` on a directory `inflightd quantize` wrote: the daemon loads it with no
options, reports its quantization, and answers a completion with the in-process engine's
greedy tokens."""

from __future__ import annotations

import json

import httpx

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams
from tests.api.daemon import running_daemon
from tests.golden.helpers import single_torch_thread
from tests.golden.test_quantize_engine import TEXTS, quantize, save_tiny_llama

PROMPT_IDS = [80, 97, 114, 105, 115, 32, 105, 115]  # "Paris is", one byte a token


def test_serve_dir_answers_from_an_awq_checkpoint_written_by_quantize(tmp_path):
    model = save_tiny_llama(tmp_path / "llama")
    (model / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    calibration = tmp_path / "texts.jsonl"
    calibration.write_text("".join(json.dumps(text) + "\n" for text in TEXTS))
    directory = quantize(model, "awq", tmp_path / "awq", "--calibration", str(calibration))
    with single_torch_thread():
        expected = LLM(str(directory), device="cpu", kv_cache_tokens=256).generate(
            [PROMPT_IDS], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    with running_daemon(kv_cache_tokens=256, extra_args=(str(directory), "--device", "cpu"),
                        log_level="info", startup_timeout_s=120) as daemon:
        response = httpx.post(f"{daemon.base_url}/v1/completions", timeout=60, json={
            "model": str(directory), "prompt": PROMPT_IDS, "max_tokens": 4, "temperature": 0,
            "ignore_eos": True, "logprobs": 0})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert response.json()["usage"]["completion_tokens"] == 4
        assert choice["text"] == expected[0].text
        assert "awq" in daemon.log()
