"""A request's prompt logprobs, gathered step by step as its prompt chunks are computed,
and handed out once, with its first sampled token (RequestOutput.prompt_logprobs).

    # prompt:   t0 | t1 t2 t3 | t4 t5 t6 t7 |          (chunks of a chunked prefill)
    # gathered:    | e1 e2 e3 | e4 e5 e6 e7 |          entry i-1 is t_i's logprob
"""

from __future__ import annotations

from server.scheduler.errors import ModelOutputMismatchError
from server.scheduler.output import PromptLogprobsChunk, TokenLogprobs
from server.scheduler.request import Request


def gather_prompt_logprobs(request: Request, chunk: PromptLogprobsChunk | None) -> None:
    """Adds a step's prompt logprobs to those the request has gathered. A chunk that
    starts earlier than the gathered ones is a recomputation after preemption: it
    replaces them from there (same tokens, same positions: the same values)."""
    if chunk is None or request.prompt_logprobs is None:
        return  # nothing computed for it, or already handed out
    gathered = request.prompt_logprobs
    start = chunk.first_index - 1  # entry i is prompt token i + 1's
    if start > len(gathered):
        raise ModelOutputMismatchError(
            f"request {request.req_id!r}: prompt logprobs from token {chunk.first_index} "
            f"follow only {len(gathered)} gathered; a step's were lost")
    del gathered[start:]
    gathered.extend(chunk.entries)


def take_prompt_logprobs(request: Request) -> tuple[TokenLogprobs, ...] | None:
    """The gathered prompt logprobs, handed out once, with the first sampled token."""
    gathered = request.prompt_logprobs
    if gathered is None:
        return None
    if len(gathered) != request.num_prompt_tokens - 1:
        raise ModelOutputMismatchError(
            f"request {request.req_id!r} has {len(gathered)} prompt logprobs for "
            f"{request.num_prompt_tokens} prompt tokens; the runner skipped positions")
    request.prompt_logprobs = None
    return tuple(gathered)
