"""Token bans (TensorRT-LLM's bad_words and min_tokens): which tokens a row may not sample
this step, worked out from its history on the host; the sampler masks them to -inf as a
logit bias (logit_bias.py), in the scatter that adds the request's own biases.

A banned sequence [a, b, c] bans c whenever the row's context (prompt + output) ends with
[a, b], so the whole sequence can never be completed, across steps or not; a one-token
sequence bans its token outright. While a row has fewer than min_tokens output tokens, its
stop tokens are banned, so it cannot end early.
"""

from __future__ import annotations

from collections.abc import Sequence


def bans_tokens(params) -> bool:
    """Whether a request's SamplingParams ban anything (so it needs its history)."""
    return bool(params.bad_words) or params.min_tokens > 0


def banned_token_ids(*, bad_words: Sequence[Sequence[int]], prompt_token_ids: Sequence[int],
                     output_token_ids: Sequence[int], min_tokens: int = 0,
                     stop_token_ids: Sequence[int] = ()) -> set[int]:
    """The tokens one request may not sample next."""
    banned: set[int] = set()
    for word in bad_words:
        if _context_ends_with(prompt_token_ids, output_token_ids, word[:-1]):
            banned.add(word[-1])
    if len(output_token_ids) < min_tokens:
        banned.update(stop_token_ids)
    return banned


def ban_pairs(state, *, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """A RequestSamplingState's bans this step as logit-bias pairs of -inf (the sampler
    adds them with the request's logit_bias, in the same scatter). Ids outside the
    vocabulary are left out (they could never be sampled anyway)."""
    params = state.sampling_params
    if not bans_tokens(params):
        return ()
    banned = banned_token_ids(bad_words=params.bad_words,
                              prompt_token_ids=state.prompt_token_ids,
                              output_token_ids=state.output_token_ids,
                              min_tokens=params.min_tokens, stop_token_ids=params.stop_token_ids)
    return tuple((token_id, float("-inf")) for token_id in sorted(banned)
                 if 0 <= token_id < vocab_size)


def _context_ends_with(prompt: Sequence[int], output: Sequence[int],
                       tail: Sequence[int]) -> bool:
    """Whether prompt + output ends with `tail`, without joining the two lists."""
    size = len(tail)
    if size == 0:
        return True
    if size > len(prompt) + len(output):
        return False
    from_output = min(size, len(output))
    if list(output[len(output) - from_output:]) != list(tail[size - from_output:]):
        return False
    from_prompt = size - from_output
    return from_prompt == 0 or list(prompt[len(prompt) - from_prompt:]) == \
        list(tail[:from_prompt])
