"""Prompt logprobs, computed during prefill from the hidden states the step already has.

The logits at position p predict token p + 1, so a prompt chunk covering positions
[start, end) of a prompt of n tokens yields the logprobs of prompt tokens start + 1 ..
min(end, n - 1). Its last position n - 1 is the row the step samples from (its logits are
computed there anyway), so no position is computed twice and nothing runs a second pass:

    # prompt   t0   t1   t2   t3 | t4   t5   (n = 6, chunk = positions 0..3, then 4..5)
    # step 1   row0 row1 row2 row3             -> logprobs of t1 t2 t3 t4
    # step 2                       row0 row1   -> logprob of t5; row1 is sampled

Only those rows go through the LM head here, a slice at a time (PASS_ELEMENTS logits at
most), so the memory it takes is bounded by the slice, not the prompt. The values are the
model's own distribution (log_softmax of the raw logits, as vLLM reports prompt logprobs):
penalties, biases and grammars shape sampled tokens, not the scoring of a given prompt.

The results stay on the device until the step is read back (async scheduling): copied into
pinned host memory without blocking, turned into PromptLogprobsChunks by resolve().
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from server.engine.step.inputs import host_to_device
from server.scheduler.output import PromptLogprobsChunk, ScheduledRequest, TokenLogprobs

# Logits computed at once for prompt rows: 32M float32 (128 MiB), 682 rows of a 49k
# vocabulary or 256 of a 128k one.
PASS_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class PromptSegment:
    """One request's share of a step's prompt rows."""

    req_id: str
    first_index: int  # the prompt index of the token its first row predicts
    num_rows: int
    num_top: int


@dataclass(frozen=True)
class PromptLogprobsPlan:
    rows: tuple[int, ...]  # rows of the step's packed batch, segment after segment
    target_ids: tuple[int, ...]  # the prompt token each row predicts
    segments: tuple[PromptSegment, ...]
    completed_req_ids: tuple[str, ...]  # requests whose last prompt logprobs are here


def plan_prompt_logprobs(scheduled: Sequence[ScheduledRequest], wanted: Mapping[str, int],
                         prompt_of: Callable[[str], Sequence[int]]) -> PromptLogprobsPlan:
    """The rows of this step that give prompt logprobs, for the requests in `wanted`
    (req_id -> how many top alternatives)."""
    rows: list[int] = []
    target_ids: list[int] = []
    segments: list[PromptSegment] = []
    completed: list[str] = []
    first_row = 0
    for req in scheduled:
        num_top = wanted.get(req.req_id)
        if num_top is not None:
            prompt = prompt_of(req.req_id)
            start = req.start_position
            end = min(start + len(req.token_ids), len(prompt) - 1)
            if end > start:
                rows.extend(range(first_row, first_row + end - start))
                target_ids.extend(prompt[start + 1:end + 1])
                segments.append(PromptSegment(req.req_id, start + 1, end - start, num_top))
            if end >= len(prompt) - 1:
                completed.append(req.req_id)
        first_row += req.num_tokens
    return PromptLogprobsPlan(rows=tuple(rows), target_ids=tuple(target_ids),
                              segments=tuple(segments), completed_req_ids=tuple(completed))


@dataclass(frozen=True)
class PromptLogprobTensors:
    logprobs: torch.Tensor  # float32 [R]: each row's target token
    ranks: torch.Tensor  # int64 [R]: 1 + how many tokens the model finds likelier
    top_logprobs: torch.Tensor  # float32 [R, K], K = the largest num_top of the step
    top_ids: torch.Tensor  # int64 [R, K]


def compute_prompt_logprobs(hidden: torch.Tensor, plan: PromptLogprobsPlan,
                            compute_logits: Callable[[torch.Tensor], torch.Tensor], *,
                            vocab_size: int) -> PromptLogprobTensors:
    """hidden [T, H]: the step's final hidden states; compute_logits: [N, H] -> float32
    [N, V] (the model's LM head; under tensor parallelism a collective, so every rank
    calls this with the same plan)."""
    device = hidden.device
    rows = host_to_device(torch.tensor(plan.rows, dtype=torch.int64), device)
    targets = host_to_device(torch.tensor(plan.target_ids, dtype=torch.int64), device)
    num_rows = len(plan.rows)
    num_top = max(segment.num_top for segment in plan.segments)
    out = PromptLogprobTensors(
        logprobs=torch.empty(num_rows, dtype=torch.float32, device=device),
        ranks=torch.empty(num_rows, dtype=torch.int64, device=device),
        top_logprobs=torch.empty(num_rows, num_top, dtype=torch.float32, device=device),
        top_ids=torch.empty(num_rows, num_top, dtype=torch.int64, device=device))
    step = max(1, PASS_ELEMENTS // vocab_size)
    for start in range(0, num_rows, step):
        part = slice(start, start + step)
        logprobs = compute_logits(hidden[rows[part]]).log_softmax(dim=-1)
        chosen = logprobs.gather(1, targets[part].unsqueeze(1))
        out.logprobs[part] = chosen.squeeze(1)
        out.ranks[part] = (logprobs > chosen).sum(dim=-1) + 1
        if num_top:
            out.top_logprobs[part], out.top_ids[part] = logprobs.topk(num_top, dim=-1)
    return out


class PendingPromptLogprobs:
    """A step's prompt logprobs on their way to the host; resolve() waits for them."""

    def __init__(self, plan: PromptLogprobsPlan, tensors: PromptLogprobTensors) -> None:
        self._plan = plan
        self._ready = None
        if tensors.logprobs.device.type == "cuda":
            tensors = PromptLogprobTensors(*(_to_pinned(t) for t in (
                tensors.logprobs, tensors.ranks, tensors.top_logprobs, tensors.top_ids)))
            self._ready = torch.cuda.Event()
            self._ready.record()
        self._tensors = tensors

    def resolve(self) -> tuple[PromptLogprobsChunk, ...]:
        if self._ready is not None:
            self._ready.synchronize()
        t = self._tensors
        logprobs, ranks = t.logprobs.tolist(), t.ranks.tolist()
        top_logprobs, top_ids = t.top_logprobs.tolist(), t.top_ids.tolist()
        chunks = []
        row = 0
        for segment in self._plan.segments:
            k = segment.num_top
            entries = tuple(
                TokenLogprobs(token_id=self._plan.target_ids[r], logprob=logprobs[r],
                              top_token_ids=tuple(top_ids[r][:k]),
                              top_logprobs=tuple(top_logprobs[r][:k]), rank=ranks[r])
                for r in range(row, row + segment.num_rows))
            chunks.append(PromptLogprobsChunk(req_id=segment.req_id,
                                              first_index=segment.first_index,
                                              entries=entries))
            row += segment.num_rows
        return tuple(chunks)


def _to_pinned(tensor: torch.Tensor) -> torch.Tensor:
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host
