"""POST /v1/chat/completions on the real daemon, through the openai SDK and raw HTTP."""

from __future__ import annotations

import openai
import pytest

from tests.api.helpers import chat_body, finish_reasons, stream_events, streamed_texts
from tests.api.openai_schema import assert_matches

QUESTION = "What is the capital of France?"


def test_chat_completion_matches_openai_schema_and_counts_usage(http, model_name):
    response = http.post("/v1/chat/completions",
                         json=chat_body(QUESTION, model=model_name, max_tokens=8,
                                        temperature=0))
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches(body, "CreateChatCompletionResponse")
    assert body["model"] == model_name and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    tokenized = http.post("/tokenize", json={"messages": [{"role": "user",
                                                           "content": QUESTION}]}).json()
    assert usage["prompt_tokens"] == tokenized["count"]
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_sdk_chat_completion_answers_the_question(client, model_name):
    completion = client.chat.completions.create(
        model=model_name, messages=[{"role": "system", "content": "Answer in one sentence."},
                                    {"role": "user", "content": QUESTION}],
        max_tokens=12, temperature=0)
    assert "Paris" in completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 12


def test_streamed_greedy_chat_text_equals_non_streamed_text(http, model_name):
    body = chat_body("Name three colors.", model=model_name, max_tokens=12, temperature=0)
    whole = http.post("/v1/chat/completions", json=body).json()
    events = stream_events(http, "/v1/chat/completions", body)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("usage" not in event for event in events)  # not asked for
    assert len({event["id"] for event in events}) == 1
    assert streamed_texts(events) == {0: whole["choices"][0]["message"]["content"]}
    assert finish_reasons(events) == {0: whole["choices"][0]["finish_reason"]}
    assert events[-1]["choices"][0]["finish_reason"] is not None


def test_include_usage_adds_a_last_chunk_with_the_whole_usage(client, model_name):
    stream = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(chunk.usage is None for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    whole = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0)
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.total_tokens == whole.usage.total_tokens


def test_n2_gives_two_choices_that_share_the_prompt_blocks(daemon, client, model_name):
    # A prompt no other test sends, longer than two blocks, so its blocks are new here.
    prompt = "Write a short poem about the sea, the wind and the stars. " * 4
    before = daemon.engine_stats()
    completion = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": prompt}], n=2, max_tokens=6,
        temperature=1.0, seed=7)
    after = daemon.engine_stats()
    assert sorted(c.index for c in completion.choices) == [0, 1]
    assert all(c.message.content is not None for c in completion.choices)
    assert completion.usage.prompt_tokens > 2 * 16
    # The second choice found the first one's full prompt blocks in the prefix cache.
    full_block_tokens = completion.usage.prompt_tokens // 16 * 16
    hits = after["prefix_cache_hits"] - before["prefix_cache_hits"]
    assert hits >= full_block_tokens - 16, (hits, full_block_tokens)


def test_same_seed_gives_the_same_sampled_text(client, model_name):
    def sample(seed: int) -> str:
        completion = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=10, temperature=1.0, seed=seed)
        return completion.choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert len({first, sample(1), sample(2)}) > 1


def test_chat_logprobs_report_each_sampled_token_and_its_alternatives(http, model_name):
    body = chat_body(QUESTION, model=model_name, max_tokens=5, temperature=0, logprobs=True,
                     top_logprobs=3, ignore_eos=True)
    response = http.post("/v1/chat/completions", json=body).json()
    assert_matches(response, "CreateChatCompletionResponse")
    content = response["choices"][0]["logprobs"]["content"]
    assert len(content) == response["usage"]["completion_tokens"] == 5
    assert b"".join(bytes(entry["bytes"]) for entry in content).decode() == \
        response["choices"][0]["message"]["content"]
    for entry in content:
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] <= 0
        # Greedy: the sampled token is the most likely one.
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert abs(entry["top_logprobs"][0]["logprob"] - entry["logprob"]) < 1e-4
        assert [t["logprob"] for t in entry["top_logprobs"]] == \
            sorted((t["logprob"] for t in entry["top_logprobs"]), reverse=True)
    streamed = stream_events(http, "/v1/chat/completions", body)
    tokens = [e["token"] for ev in streamed for c in ev["choices"]
              if c.get("logprobs") for e in c["logprobs"]["content"]]
    assert tokens == [entry["token"] for entry in content]


def test_text_content_parts_read_like_a_plain_string(client, model_name):
    def ask(content) -> str:
        completion = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": content}], max_tokens=6,
            temperature=0)
        return completion.choices[0].message.content

    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text",
                                                                 "text": "of France?"}]
    assert ask(parts) == ask(QUESTION)


def test_max_completion_tokens_caps_the_answer_with_finish_reason_length(client, model_name):
    completion = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Count from one to fifty."}],
        max_completion_tokens=4, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 4


def test_unknown_model_is_a_404_through_the_sdk(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-nonexistent",
                                       messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["code"] == "model_not_found"
