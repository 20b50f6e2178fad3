"""Triton's generate extension: the seeds' curl as it is, generate_stream against generate,
the ensemble's inputs (stop_words, bad_words, exclude_input_in_output, log probs), the
model's names across both APIs, and the requests it refuses."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest

from tests.api.kserve.helpers import MODEL_NAMES, PROMPT, sse_events

SEED_BODY = ('{"text_input": "What is machine learning?", "max_tokens": 20, '
             '"bad_words": "", "stop_words": ""}')


def _generate(v2: httpx.Client, body: dict, *, model: str = "ensemble") -> dict:
    response = v2.post(f"/v2/models/{model}/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _stream(v2: httpx.Client, body: dict) -> list[dict]:
    with v2.stream("POST", "/v2/models/ensemble/generate_stream", json=body) as response:
        raw = response.read()
    assert response.status_code == 200, raw
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_events(raw)


def test_the_seeds_curl_without_a_content_type_returns_text_output(kserve, v2):
    # the body exactly as curl -d sends it: no Content-Type header at all
    response = v2.post("/v2/models/ensemble/generate", content=SEED_BODY.encode(),
                       headers={"Content-Type": ""})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "ensemble" and answer["model_version"] == "1"
    assert isinstance(answer["text_output"], str) and answer["text_output"].strip()
    assert not answer["text_output"].startswith(PROMPT)  # the completion alone
    curl = shutil.which("curl")
    if curl is not None:  # and the seeds' own command line, where curl is installed
        out = subprocess.run([curl, "-s", "-X", "POST",
                              f"{kserve.base_url}/v2/models/ensemble/generate", "-d",
                              SEED_BODY], capture_output=True, timeout=120, check=True)
        assert httpx.Response(200, content=out.stdout).json() == answer  # greedy


def test_generate_stream_events_concatenate_to_the_generated_text(v2):
    body = {"text_input": PROMPT, "max_tokens": 16, "stream": True}
    whole = _generate(v2, body)["text_output"]
    events = _stream(v2, body)
    assert len(events) >= 8  # one per step, not one at the end
    assert all(e["model_name"] == "ensemble" and e["model_version"] == "1" for e in events)
    assert "".join(e["text_output"] for e in events) == whole


def test_generate_stream_with_stream_false_sends_the_whole_answer_once(v2):
    body = {"text_input": PROMPT, "max_tokens": 10}
    whole = _generate(v2, body)["text_output"]
    events = _stream(v2, {**body, "stream": False, "id": "r-7"})
    assert [(e["text_output"], e["id"]) for e in events] == [(whole, "r-7")]


def test_exclude_input_in_output_false_puts_the_prompt_first(v2):
    body = {"text_input": PROMPT, "max_tokens": 8}
    alone = _generate(v2, body)["text_output"]
    assert _generate(v2, {**body, "exclude_input_in_output": False})["text_output"] == \
        PROMPT + alone


def test_stop_words_end_the_text_before_them(v2):
    body = {"text_input": PROMPT, "max_tokens": 20}
    free = _generate(v2, body)["text_output"]
    word = free.split()[2]
    stopped = _generate(v2, {**body, "stop_words": [word]})["text_output"]
    assert stopped == free[:free.index(word)]


def test_bad_words_keep_a_word_out_of_the_text(v2):
    body = {"text_input": PROMPT, "max_tokens": 20}
    free = _generate(v2, body)["text_output"]
    assert "learning" in free
    banned = _generate(v2, {**body, "bad_words": "learning, algorithms"})["text_output"]
    assert "learning" not in banned and " algorithms" not in banned
    assert banned.strip()


def test_return_log_probs_gives_one_per_token_and_their_sum(v2):
    answer = _generate(v2, {"text_input": PROMPT, "max_tokens": 6, "return_log_probs": True})
    logprobs = answer["output_log_probs"]
    assert len(logprobs) == 6 and all(lp <= 0 for lp in logprobs)
    assert answer["cum_log_probs"] == pytest.approx(sum(logprobs), abs=1e-4)


def test_parameters_object_is_read_as_inputs(v2):
    old_style = {"text_input": PROMPT, "parameters": {"max_tokens": 5, "bad_words": [""]}}
    assert _generate(v2, old_style)["text_output"] == \
        _generate(v2, {"text_input": PROMPT, "max_tokens": 5})["text_output"]


def test_every_served_name_reaches_the_model_over_both_apis(v2):
    listed = [m["id"] for m in v2.get("/v1/models").json()["data"]]
    assert listed == list(MODEL_NAMES)
    texts = {_generate(v2, {"text_input": PROMPT, "max_tokens": 4}, model=name)["text_output"]
             for name in MODEL_NAMES}
    assert len(texts) == 1
    completion = v2.post("/v1/completions", json={"model": "tensorrt_llm", "prompt": PROMPT,
                                                 "max_tokens": 3})
    assert completion.status_code == 200 and completion.json()["model"] == "tensorrt_llm"


@pytest.mark.parametrize("path", ["/v2/models/llama/generate", "/v2/models/llama/infer",
                                  "/v2/models/llama/generate_stream"])
def test_an_unknown_model_is_a_kserve_404(v2, path):
    response = v2.post(path, json={"text_input": PROMPT, "max_tokens": 2})
    assert response.status_code == 404
    assert set(response.json()) == {"error"} and "llama" in response.json()["error"]
    assert v2.get("/v2/models/llama").status_code == 404
    openai_shape = v2.post("/v1/completions", json={"model": "llama", "prompt": "x"})
    assert openai_shape.status_code == 404 and "message" in openai_shape.json()["error"]


def test_a_tensorrt_llm_model_name_not_served_says_how_to_serve_it(v2):
    response = v2.post("/v2/models/tensorrt_llm_bls/generate",
                       json={"text_input": PROMPT, "max_tokens": 2})
    assert response.status_code == 404
    assert "--served-model-name tensorrt_llm_bls" in response.json()["error"]


def test_beam_width_above_one_is_a_clear_400(v2):
    response = v2.post("/v2/models/ensemble/generate",
                       json={"text_input": PROMPT, "max_tokens": 4, "beam_width": 2})
    assert response.status_code == 400
    assert "beam" in response.json()["error"]


def test_guided_decoding_inputs_constrain_the_output(v2):
    body = {"text_input": "Is water wet? Answer:", "max_tokens": 8,
            "guided_decoding_guide_type": "regex", "guided_decoding_guide": " (yes|no)"}
    assert _generate(v2, body)["text_output"] in (" yes", " no")
    schema = ('{"type": "object", "properties": {"ok": {"type": "boolean"}}, '
              '"required": ["ok"], "additionalProperties": false}')
    streamed = _stream(v2, {"text_input": "Is water wet? Answer in JSON:", "max_tokens": 40,
                            "stream": True, "guided_decoding_guide_type": "json_schema",
                            "guided_decoding_guide": schema})
    text = "".join(e["text_output"] for e in streamed)
    assert isinstance(json.loads(text)["ok"], bool), text


@pytest.mark.parametrize("fields, message", [
    ({"guided_decoding_guide_type": "regex", "guided_decoding_guide": "(unclosed"}, "regex"),
    ({"guided_decoding_guide_type": "lark"}, "must be one of"),
    ({"guided_decoding_guide_type": "regex"}, "needs input"),
    ({"guided_decoding_guide": "x"}, "needs guided_decoding_guide_type"),
])
def test_bad_guides_are_a_400_also_on_generate_stream(v2, fields, message):
    body = {"text_input": PROMPT, "max_tokens": 4, "stream": True, **fields}
    for path in ("/v2/models/ensemble/generate", "/v2/models/ensemble/generate_stream"):
        response = v2.post(path, json=body)
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]


def test_token_count_outputs_when_asked(v2):
    body = {"text_input": PROMPT, "max_tokens": 9, "return_num_input_tokens": True,
            "return_num_output_tokens": True}
    answer = _generate(v2, body)
    prompt_tokens = v2.post("/tokenize", json={"prompt": PROMPT}).json()["count"]
    assert (answer["num_input_tokens"], answer["num_output_tokens"]) == (prompt_tokens, 9)
    events = _stream(v2, {**body, "stream": True})
    assert sum(e["num_output_tokens"] for e in events) == 9
    assert all(e["num_input_tokens"] == prompt_tokens for e in events)
    assert "num_output_tokens" not in _generate(v2, {"text_input": PROMPT, "max_tokens": 2})
