"""Small real tokenizers built in memory, for detokenization tests: a byte-level BPE
(GPT-2 / Llama-3 / SmolLM style) and a SentencePiece-style one that drops the leading space
at the start of a decode."""

from __future__ import annotations

import functools

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

CORPUS = ["Hello world, hello there. The quick brown fox jumps over the lazy dog.",
          "你好世界，你好！今天天气很好。", "party 🎉 time 🎉🎉 café naïve"]


class RustDecoder:
    """The Decoder protocol over a raw `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer: RustTokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, token_ids, *, skip_special_tokens=True) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)


@functools.cache
def byte_level_tokenizer(*, vocab_size: int) -> RustDecoder:
    """vocab_size 257 leaves only the 256 byte tokens (+ <eos>): every non-ASCII character
    then spans several tokens."""
    tokenizer = RustTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 10, trainer=trainer)
    return RustDecoder(tokenizer)


def metaspace_tokenizer() -> RustDecoder:
    vocab = {"<unk>": 0, "\u2581Hello": 1, "\u2581world": 2, "\u2581again": 3}
    tokenizer = RustTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    return RustDecoder(tokenizer)
