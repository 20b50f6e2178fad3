"""Fill-in-the-middle prompts for completions' `suffix`: the model's FIM tokens found in
its vocabulary, the prefix-suffix-middle order, and a 400 for models without them."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from server.api.errors import APIError
from server.api.fim import FimTokens, fim_prompts, find_fim_tokens
from server.api.tokenizer import Tokenizer
from tests.unit.tokenizer_helpers import byte_level_tokenizer


@pytest.mark.parametrize("names", [("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
                                   ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")])
def test_each_known_spelling_of_the_fim_tokens_is_found(names):
    vocab = {"a": 0, names[0]: 7, names[1]: 8, names[2]: 9}
    assert find_fim_tokens(vocab) == FimTokens(prefix=7, suffix=8, middle=9)


def test_a_partial_set_of_fim_tokens_is_no_set():
    assert find_fim_tokens({"<fim_prefix>": 1, "<fim_middle>": 2}) is None


def test_the_prompt_is_prefix_then_suffix_then_middle():
    fim = FimTokens(prefix=7, suffix=8, middle=9)
    prompts = fim_prompts([[1, 2], [3]], "tail", fim=fim, encode=lambda text: [5, 6])
    assert prompts == [[7, 1, 2, 8, 5, 6, 9], [7, 3, 8, 5, 6, 9]]


def test_a_bos_the_tokenizer_put_first_stays_first():
    fim = FimTokens(prefix=7, suffix=8, middle=9)
    assert fim_prompts([[1, 2]], "t", fim=fim, encode=lambda text: [5],
                       bos_token_id=1) == [[1, 7, 2, 8, 5, 9]]


def test_deepseek_coder_spelling_with_full_width_bars_is_found():
    names = ("<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>",
             "<\uff5cfim\u2581end\uff5c>")
    assert find_fim_tokens(dict(zip(names, (3, 4, 5)))) == FimTokens(3, 4, 5)


def test_a_model_without_fim_tokens_gets_a_400_naming_suffix():
    with pytest.raises(APIError) as error:
        fim_prompts([[1]], "tail", fim=None, encode=lambda text: [])
    assert error.value.status_code == 400 and error.value.param == "suffix"
    assert "fill-in-the-middle" in error.value.message


def test_the_tokenizer_reports_fim_tokens_added_as_special_tokens():
    hf = PreTrainedTokenizerFast(tokenizer_object=byte_level_tokenizer(vocab_size=300).tokenizer)
    assert Tokenizer(hf).fim_tokens is None
    hf.add_special_tokens({"additional_special_tokens": ["<fim_prefix>", "<fim_suffix>",
                                                          "<fim_middle>"]})
    fim = Tokenizer(hf).fim_tokens
    assert fim is not None
    assert hf.convert_ids_to_tokens([fim.prefix, fim.suffix, fim.middle]) == [
        "<fim_prefix>", "<fim_suffix>", "<fim_middle>"]
