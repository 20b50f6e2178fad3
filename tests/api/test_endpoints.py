"""The daemon's other endpoints: models, health, readiness, tokenizer, engine stats."""

from __future__ import annotations

from server.config import DEFAULT_MODEL
from tests.api.openai_schema import assert_matches


def test_models_lists_the_served_model(http, client):
    body = http.get("/v1/models").json()
    assert_matches(body, "ListModelsResponse")
    assert [m["id"] for m in body["data"]] == [DEFAULT_MODEL]
    assert body["data"][0]["max_model_len"] > 0
    assert [m.id for m in client.models.list()] == [DEFAULT_MODEL]
    retrieved = http.get(f"/v1/models/{DEFAULT_MODEL}")
    assert retrieved.status_code == 200
    assert_matches(retrieved.json(), "Model")
    assert http.get("/v1/models/other").status_code == 404


def test_health_and_ready_answer_200_while_the_engine_runs(http):
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready")
    assert ready.status_code == 200 and ready.json()["model"] == DEFAULT_MODEL


def test_tokenize_and_detokenize_round_trip_unicode(http):
    text = "Hello 你好 🎉 world"
    tokens = http.post("/tokenize", json={"prompt": text}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    assert http.post("/detokenize", json={"tokens": tokens["tokens"]}).json() == \
        {"prompt": text}


def test_tokenize_messages_applies_the_chat_template(http):
    messages = [{"role": "user", "content": "Hi there"}]
    chat = http.post("/tokenize", json={"messages": messages}).json()["tokens"]
    text = http.post("/detokenize", json={"tokens": chat}).json()["prompt"]
    assert "Hi there" in text
    plain = http.post("/tokenize", json={"prompt": "Hi there"}).json()["tokens"]
    assert len(chat) > len(plain)  # the template's roles and markers


def test_engine_stats_reports_the_kv_cache_and_token_totals(http, model_name):
    before = http.get("/v1/engine/stats").json()
    assert before["num_blocks"] * before["block_size"] == before["kv_cache_tokens"]
    assert 0 <= before["kv_cache_usage"] <= 1
    http.post("/v1/completions", json={"model": model_name, "prompt": "Hi", "max_tokens": 3,
                                       "ignore_eos": True})
    after = http.get("/v1/engine/stats").json()
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == 3
    assert after["prompt_tokens_total"] > before["prompt_tokens_total"]
