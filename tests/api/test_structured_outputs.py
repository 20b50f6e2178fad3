"""response_format and the guided_* fields on the real daemon (default model, CPU), through
the official openai SDK and raw HTTP: outputs always parse and validate, streamed or not,
and bad or hostile schemas get a 400 in OpenAI's shape within a second."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest
from pydantic import BaseModel

from tests.api.helpers import chat_body, stream_events, streamed_texts
from tests.api.openai_schema import assert_matches

PERSON = {
    "type": "object",
    "$defs": {"address": {"type": "object",
                          "properties": {"city": {"type": "string", "maxLength": 24},
                                         "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                          "required": ["city", "zip"], "additionalProperties": False}},
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                 "maxItems": 3},
        "address": {"anyOf": [{"$ref": "#/$defs/address"}, {"type": "null"}]},
    },
    "required": ["name", "age", "score", "role", "tags", "address"],
    "additionalProperties": False,
}
PERSON_FORMAT = {"type": "json_schema",
                 "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
ASK = "Describe a made-up person as JSON."


@pytest.mark.parametrize("temperature,seed", [(0, None), (0.9, 1), (1.0, 7)])
def test_json_schema_output_parses_and_validates(client, model_name, temperature, seed):
    completion = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": ASK}],
        response_format=PERSON_FORMAT, max_tokens=300, temperature=temperature, seed=seed)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_streamed_json_schema_output_parses_validates_and_matches_the_schema(http, model_name):
    events = stream_events(http, "/v1/chat/completions",
                           chat_body(ASK, model=model_name, response_format=PERSON_FORMAT,
                                     max_tokens=300, temperature=0.8, seed=3, n=2,
                                     stream=True))
    for event in events:
        assert_matches(event, "CreateChatCompletionStreamResponse")
    texts = streamed_texts(events)
    assert set(texts) == {0, 1}
    for text in texts.values():
        jsonschema.validate(json.loads(text), PERSON)


def test_sdk_parse_with_a_pydantic_model_returns_the_parsed_object(client, model_name):
    class Pet(BaseModel):
        name: str
        species: str
        legs: int

    completion = client.beta.chat.completions.parse(
        model=model_name, messages=[{"role": "user", "content": "Invent a pet."}],
        response_format=Pet, max_tokens=120, temperature=0)
    pet = completion.choices[0].message.parsed
    assert isinstance(pet, Pet) and isinstance(pet.legs, int)


def test_json_object_output_is_a_json_object(http, model_name):
    body = chat_body("Give me a JSON object about cats.", model=model_name,
                     response_format={"type": "json_object"}, max_tokens=200, temperature=0)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert_matches(response.json(), "CreateChatCompletionResponse")
    choice = response.json()["choices"][0]
    text = choice["message"]["content"]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut at max_tokens: still the start of an object
        assert choice["finish_reason"] == "length" and text.lstrip().startswith("{")


@pytest.mark.parametrize("field,value,check", [
    ("guided_choice", ["red", "green", "blue"], lambda t: t in ("red", "green", "blue")),
    ("guided_regex", "[0-9]{3}-[a-z]{2}", lambda t: len(t) == 6 and t[3] == "-"),
    ("guided_json", {"type": "object", "properties": {"ok": {"type": "boolean"}},
                     "required": ["ok"]}, lambda t: isinstance(json.loads(t)["ok"], bool)),
    ("guided_grammar", 'root ::= "yes" | "no"', lambda t: t in ("yes", "no")),
    ("structured_outputs", {"choice": ["up", "down"]}, lambda t: t in ("up", "down")),
])
def test_vllm_guided_fields_constrain_completions_and_chat(http, model_name, field, value,
                                                           check):
    for path, body in (("/v1/completions", {"prompt": "The answer:", "max_tokens": 40}),
                       ("/v1/chat/completions", chat_body("Answer.", max_tokens=40))):
        response = http.post(path, json={**body, "model": model_name, "temperature": 0.7,
                                         "seed": 2, field: value})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        text = choice["text"] if "text" in choice else choice["message"]["content"]
        assert choice["finish_reason"] == "stop" and check(text), text


def _deep(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


HOSTILE = {
    "invalid JSON Schema": {"type": "foo"},
    "deep nesting": _deep(40),
    "very deep nesting": _deep(300),
    "huge enum": {"enum": [f"value_{i}" for i in range(100_000)]},
    "self ref": {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    "mutual refs": {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                    "$ref": "#/$defs/a"},
    "remote ref": {"$ref": "https://example.com/schema.json"},
    "1 MB schema": {"type": "object", "properties": {f"p{i}": {"type": "string",
                                                              "description": "x" * 100}
                                                     for i in range(9000)}},
    "unsupported keyword": {"type": "string", "not": {"const": "x"}},
    "bad pattern": {"type": "string", "pattern": "(("},
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_schemas_get_a_fast_400_and_the_daemon_stays_healthy(http, model_name, name):
    body = chat_body("x", model=model_name, max_tokens=4, stream=name == "deep nesting",
                     response_format={"type": "json_schema",
                                      "json_schema": {"name": "h", "schema": HOSTILE[name]}})
    started = time.monotonic()
    response = http.post("/v1/chat/completions", json=body)
    assert time.monotonic() - started < 1.0
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if name == "very deep nesting":  # the JSON parser refuses the body before any schema check
        assert error["code"] == "invalid_json"
    else:
        assert error["param"].startswith("response_format")
    assert http.get("/health").status_code == 200


def test_ignore_eos_with_a_grammar_is_a_400(http, model_name):
    response = http.post("/v1/completions", json={"model": model_name, "prompt": "x",
                                                  "guided_choice": ["a"], "ignore_eos": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "ignore_eos"


def test_invalid_guided_regex_and_two_grammars_at_once_are_400s(http, model_name):
    bad = http.post("/v1/completions", json={"model": model_name, "prompt": "x",
                                             "guided_regex": "(("})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "guided_regex"
    both = http.post("/v1/completions", json={"model": model_name, "prompt": "x",
                                              "guided_regex": "a+",
                                              "guided_choice": ["a"]})
    assert both.status_code == 400 and "one grammar" in both.json()["error"]["message"]


def test_grammar_metrics_and_request_counter(http, model_name):
    http.post("/v1/completions", json={"model": model_name, "prompt": "x", "max_tokens": 3,
                                       "guided_choice": ["metric-probe-a", "metric-probe-b"]})
    text = http.get("/metrics").text
    assert "inflightd:grammar_compile_seconds_count" in text
    assert 'inflightd:structured_output_requests_total{kind="choice"' in text \
        or 'kind="choice",model_name' in text


def test_grammar_with_stop_strings_and_n_choices(http, model_name):
    body = {"model": model_name, "prompt": "Colours:", "max_tokens": 40, "n": 3,
            "temperature": 1.0, "seed": 5, "stop": ["green"],
            "guided_regex": "(red|green|blue)(, (red|green|blue)){0,6}"}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert len(choices) == 3
    for choice in choices:
        text = choice["text"]
        assert "green" not in text
        assert all(part in ("red", "blue", "") for part in text.split(", ")), text
        if choice["finish_reason"] == "stop" and not text.endswith(("red", "blue")):
            assert text == "" or text.endswith(", ")  # cut by the stop string "green"
