"""`suffix` on a model whose vocabulary has fill-in-the-middle tokens: a tiny random Llama
saved with a small word-level tokenizer that has <fim_prefix>, <fim_suffix>, <fim_middle>.
Its text is noise; what is pinned is the prompt the engine gets."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.api.daemon import Daemon, running_daemon
from tests.golden.helpers import make_hf_model

SPECIAL = ["<unk>", "<s>", "</s>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"]
WORDS = ["def", "add", "(", "a", ",", "b", ")", ":", "c", "=", "+", "return"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    path = tmp_path_factory.mktemp("tiny-fim")
    make_hf_model("llama-mha").save_pretrained(path)
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>",
                            additional_special_tokens=SPECIAL[3:]).save_pretrained(path)
    with running_daemon(model=str(path), kv_cache_tokens=1024) as running:
        yield running


def test_suffix_sends_prefix_suffix_middle_to_the_engine(daemon):
    def complete(**fields) -> dict:
        response = httpx.post(f"{daemon.base_url}/v1/completions", timeout=60, json={
            "max_tokens": 6, "temperature": 0, "ignore_eos": True, "logprobs": 0, **fields})
        assert response.status_code == 200, response.text
        return response.json()

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    prefix = ["def", "add", "(", "a", ",", "b", ")", ":"]
    suffix = ["return", "c"]
    by_hand = ([vocab["<fim_prefix>"]] + [vocab[w] for w in prefix] + [vocab["<fim_suffix>"]]
               + [vocab[w] for w in suffix] + [vocab["<fim_middle>"]])
    filled = complete(prompt=" ".join(prefix), suffix=" ".join(suffix))
    assert filled["usage"]["prompt_tokens"] == len(by_hand)
    # the same tokens with the same logprobs: the same prompt reached the model
    got, want = (c["choices"][0]["logprobs"] for c in (filled, complete(prompt=by_hand)))
    assert got["tokens"] == want["tokens"] and len(got["tokens"]) == 6
    assert got["token_logprobs"] == pytest.approx(want["token_logprobs"], abs=1e-4)
