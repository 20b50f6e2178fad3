"""IncrementalDetokenizer against real `tokenizers` tokenizers built in memory: Chinese and
emoji split over byte tokens, spacing, special tokens."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from server.api.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer
from tests.unit.tokenizer_helpers import RustDecoder, byte_level_tokenizer, metaspace_tokenizer


def stream(decoder: RustDecoder, token_ids: list[int], *, prompt_token_ids=()) -> list[str]:
    detok = IncrementalDetokenizer(decoder, prompt_token_ids=prompt_token_ids)
    pieces = [detok.push([token_id]) for token_id in token_ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == detok.text
    return pieces


def test_chinese_split_across_byte_tokens_is_never_emitted_broken():
    decoder = byte_level_tokenizer(vocab_size=257)
    text = "你好世界，今天天气很好。"
    token_ids = decoder.encode(text)
    assert len(token_ids) == len(text.encode("utf-8"))  # one token per byte
    pieces = stream(decoder, token_ids)
    assert "".join(pieces) == text
    assert all(REPLACEMENT_CHAR not in piece for piece in pieces)
    # Each character appears whole, at the token holding its last byte.
    assert [p for p in pieces if p] == list(text)


def test_emoji_spanning_four_tokens_arrives_whole():
    decoder = byte_level_tokenizer(vocab_size=257)
    text = "party 🎉🎉 time 👩‍💻"
    pieces = stream(decoder, decoder.encode(text))
    assert "".join(pieces) == text
    assert all(REPLACEMENT_CHAR not in piece for piece in pieces)
    assert "🎉" in pieces


def test_spacing_between_words_is_kept_with_merged_tokens():
    decoder = byte_level_tokenizer(vocab_size=400)
    text = "Hello world, hello there. The quick brown fox"
    token_ids = decoder.encode(text)
    assert len(token_ids) < len(text)  # real merges, words carry their leading space
    assert "".join(stream(decoder, token_ids)) == text


def test_first_generated_word_keeps_its_space_after_the_prompt():
    # A SentencePiece-style decoder drops the leading space of a decode's first word; the
    # prompt tokens seeded into the window keep it.
    decoder = metaspace_tokenizer()
    assert decoder.decode([2]) == "world"
    assert stream(decoder, [2, 3], prompt_token_ids=[1]) == [" world", " again", ""]


def test_token_ends_give_each_token_the_text_it_completed():
    decoder = byte_level_tokenizer(vocab_size=257)
    detok = IncrementalDetokenizer(decoder)
    detok.push(decoder.encode("a你"))  # 1 + 3 bytes
    assert detok.token_ends == [1, 1, 1, 2]


def test_flush_releases_an_incomplete_character_at_the_end():
    decoder = byte_level_tokenizer(vocab_size=257)
    token_ids = decoder.encode("ok你")[:-1]  # the last character is cut short
    detok = IncrementalDetokenizer(decoder)
    assert detok.push(token_ids) == "ok"
    assert detok.flush() == REPLACEMENT_CHAR


def test_skipped_special_tokens_add_no_text():
    decoder = byte_level_tokenizer(vocab_size=400)
    eos = decoder.tokenizer.token_to_id("<eos>")
    detok = IncrementalDetokenizer(decoder)
    assert detok.push(decoder.encode("Hello") + [eos]) == "Hello"
    assert detok.flush() == ""


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=4))
def test_streamed_pieces_join_to_the_full_decode(text, step):
    decoder = byte_level_tokenizer(vocab_size=300)
    token_ids = decoder.encode(text)
    detok = IncrementalDetokenizer(decoder)
    pieces = [detok.push(token_ids[i:i + step]) for i in range(0, len(token_ids), step)]
    pieces.append(detok.flush())
    assert "".join(pieces) == decoder.decode(token_ids)
    if REPLACEMENT_CHAR not in text:
        assert all(REPLACEMENT_CHAR not in piece for piece in pieces)
