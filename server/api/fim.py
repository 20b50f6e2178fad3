"""Fill-in-the-middle for /v1/completions' `suffix`: the prompt and the suffix wrapped in
the model's FIM tokens (prefix-suffix-middle order), where its vocabulary has them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from server.api.errors import invalid_param

# The spellings code models' vocabularies use: StarCoder / SantaCoder without bars,
# Qwen2.5-Coder / CodeGemma-style with them, DeepSeek-Coder's with full-width bars.
FIM_SPELLINGS = (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
                 ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
                 ("<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>",
                  "<\uff5cfim\u2581end\uff5c>"))


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    suffix: int
    middle: int

    def prompt(self, prefix_ids: list[int], suffix_ids: list[int]) -> list[int]:
        """PSM order: the model writes the middle after <fim_middle>."""
        return [self.prefix, *prefix_ids, self.suffix, *suffix_ids, self.middle]


def find_fim_tokens(vocab: Mapping[str, int]) -> FimTokens | None:
    """The model's FIM tokens when its vocabulary has a full set of one spelling."""
    for names in FIM_SPELLINGS:
        if all(name in vocab for name in names):
            return FimTokens(*(vocab[name] for name in names))
    return None


def fim_prompts(token_lists: list[list[int]], suffix: str, *, fim: FimTokens | None,
                encode: Callable[[str], list[int]],
                bos_token_id: int | None = None) -> list[list[int]]:
    """Each prompt wrapped with the suffix (a BOS the tokenizer put first stays first); a
    400 naming why when the model cannot."""
    if fim is None:
        raise invalid_param("suffix", "suffix needs a fill-in-the-middle model: this model's "
                                      "vocabulary has no FIM tokens (such as <fim_prefix>, "
                                      "<fim_suffix>, <fim_middle>), so it was not trained to "
                                      "write text that ends in a given suffix")
    suffix_ids = encode(suffix)
    prompts = []
    for tokens in token_lists:
        if bos_token_id is not None and tokens[:1] == [bos_token_id]:
            prompts.append([bos_token_id, *fim.prompt(tokens[1:], suffix_ids)])
        else:
            prompts.append(fim.prompt(tokens, suffix_ids))
    return prompts
