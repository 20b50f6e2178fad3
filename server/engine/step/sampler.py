"""Picks the next token of every sampled request in one batched pass.

Per step, for logits [S, V] (float32, one row per request that samples):

    penalties (presence, frequency, repetition), then logit_bias and the bans
    (bad_words, min_tokens: bad_words.py, as biases of -inf)
                                                  -> the distribution logprobs report
    greedy rows: argmax
    other rows:  / temperature -> min_p -> top_k -> top_p -> softmax
                 token = argmax(probs / noise), noise ~ Exponential(1)

argmax(probs / noise) with exponential noise draws from probs exactly (the exponential-race
form of the Gumbel trick) and lets each seeded request own its noise: its row is drawn
from a generator seeded by (seed, tokens generated so far), so a seeded request gets the
same tokens whatever else is in the batch. Unseeded rows share the sampler's generator.

Logprobs are log_softmax of the logits after penalties and logit_bias and before
temperature or any cut, i.e. the model's own distribution as adjusted by the request's
penalties and biases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from server.engine.step.bad_words import ban_pairs
from server.engine.step.inputs import host_to_device
from server.engine.step.logit_bias import LogitBiasTensors, apply_logit_bias
from server.engine.step.penalties import PenaltyTensors, apply_penalties
from server.scheduler.output import TokenLogprobs
from server.scheduler.request import SamplingParams

_MASK64 = (1 << 64) - 1
# Below this, logits / temperature can overflow float32; such rows are sampled greedily.
MIN_TEMPERATURE = 1e-5


@dataclass
class RequestSamplingState:
    """What the sampler needs about one request across steps; the runner keeps one per
    running request and appends each token it samples."""

    sampling_params: SamplingParams
    prompt_token_ids: tuple[int, ...]
    output_token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SamplerOutput:
    sampled_token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs | None, ...] | None  # None when no row asked for them


@dataclass(frozen=True)
class SamplingBatch:
    """The step's sampling parameters as tensors (device) and host lists, built once."""

    greedy: torch.Tensor  # bool [S]
    temperatures: torch.Tensor  # float32 [S, 1]; 1 on greedy rows
    min_ps: torch.Tensor | None  # float32 [S, 1]; None when no row uses min_p
    top_ks: torch.Tensor | None  # int64 [S]; vocab size where unset; None when no row cuts
    top_ps: torch.Tensor | None  # float32 [S]; None when every top_p is 1
    penalties: PenaltyTensors | None  # None when no row is penalised
    # the rows' logit_bias and this step's bans (-inf); None when no row has either
    logit_bias: LogitBiasTensors | None
    all_greedy: bool
    random_rows: tuple[int, ...]  # rows that draw noise (not greedy)
    row_seeds: tuple[int | None, ...]  # per row: the noise seed for this step, or None
    num_logprobs: tuple[int | None, ...]

    @classmethod
    def build(cls, states: Sequence[RequestSamplingState], *, vocab_size: int,
              device: torch.device | str) -> "SamplingBatch":
        params = [state.sampling_params for state in states]
        greedy = [p.temperature < MIN_TEMPERATURE for p in params]

        def tensor(values: list, dtype: torch.dtype) -> torch.Tensor:
            # through pinned memory: a pageable copy would wait for the GPU's queued work
            return host_to_device(torch.tensor(values, dtype=dtype), torch.device(device))

        def column(values: list[float]) -> torch.Tensor:
            return tensor(values, torch.float32).unsqueeze(1)

        random_params = [p for p, g in zip(params, greedy) if not g]
        uses_top_k = any(p.top_k is not None and p.top_k < vocab_size for p in random_params)
        return cls(
            greedy=tensor(greedy, torch.bool),
            temperatures=column([1.0 if g else p.temperature for p, g in zip(params, greedy)]),
            min_ps=(column([p.min_p for p in params])
                    if any(p.min_p > 0 for p in random_params) else None),
            top_ks=(tensor([min(p.top_k or vocab_size, vocab_size) for p in params],
                           torch.int64) if uses_top_k else None),
            top_ps=(tensor([p.top_p for p in params], torch.float32)
                    if any(p.top_p < 1 for p in random_params) else None),
            penalties=_build_penalties(states, vocab_size=vocab_size, device=device),
            logit_bias=LogitBiasTensors.build(
                [state.sampling_params.logit_bias + ban_pairs(state, vocab_size=vocab_size)
                 for state in states], device=device),
            all_greedy=all(greedy),
            random_rows=tuple(row for row, g in enumerate(greedy) if not g),
            row_seeds=tuple(None if p.seed is None else
                            step_seed(p.seed, len(state.output_token_ids))
                            for p, state in zip(params, states)),
            num_logprobs=tuple(p.logprobs for p in params),
        )


def _build_penalties(states: Sequence[RequestSamplingState], *, vocab_size: int,
                     device: torch.device | str) -> PenaltyTensors | None:
    params = [state.sampling_params for state in states]
    if not any(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
               for p in params):
        return None
    return PenaltyTensors.build(
        presence=[p.presence_penalty for p in params],
        frequency=[p.frequency_penalty for p in params],
        repetition=[p.repetition_penalty for p in params],
        prompt_token_ids=[state.prompt_token_ids for state in states],
        output_token_ids=[state.output_token_ids for state in states],
        vocab_size=vocab_size, device=device)


def adjusted_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """The logits with the batch's penalties, biases and bans applied (a new tensor when
    any)."""
    if batch.penalties is not None:
        logits = apply_penalties(logits, batch.penalties)
    if batch.logit_bias is not None:
        logits = apply_logit_bias(logits, batch.logit_bias)
    return logits


def step_seed(seed: int, num_generated: int) -> int:
    """A 64-bit generator seed for a seeded request's next token (splitmix64 of both)."""
    z = (seed * 0x9E3779B97F4A7C15 + num_generated + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class Sampler:
    def __init__(self, *, device: torch.device | str, seed: int = 0) -> None:
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor,
               states: Sequence[RequestSamplingState]) -> SamplerOutput:
        """logits [S, V] float32, one row per state, in the same order."""
        batch = SamplingBatch.build(states, vocab_size=logits.shape[-1], device=logits.device)
        return self.sample_batch(logits, batch)

    def sample_batch(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        logits = adjusted_logits(logits, batch)
        tokens = self.sample_tokens(logits, batch)
        token_list = tokens.tolist()
        logprobs = None
        if any(k is not None for k in batch.num_logprobs):
            logprobs = gather_logprobs(logits, tokens, batch.num_logprobs)
        return SamplerOutput(sampled_token_ids=tuple(token_list), logprobs=logprobs)

    def sample_tokens(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """int64 [S] token ids, left on logits' device (nothing here waits for the GPU).
        logits already carry the batch's penalties, biases and bans (adjusted_logits)."""
        if batch.all_greedy:
            return logits.argmax(dim=-1)
        probs = self._filtered_probs(logits, batch)
        drawn = (probs / self._noise(probs, batch)).argmax(dim=-1)
        return torch.where(batch.greedy, logits.argmax(dim=-1), drawn)

    def _filtered_probs(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        scaled = logits / batch.temperatures
        if batch.min_ps is not None:
            probs = scaled.softmax(dim=-1)
            too_unlikely = probs < batch.min_ps * probs.amax(dim=-1, keepdim=True)
            scaled = scaled.masked_fill(too_unlikely, float("-inf"))
        if batch.top_ks is not None or batch.top_ps is not None:
            scaled = apply_top_k_top_p(scaled, batch.top_ks, batch.top_ps)
        return scaled.softmax(dim=-1)

    def _noise(self, probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Exponential(1) noise for the rows that draw; greedy rows get ones (unused)."""
        noise = torch.ones_like(probs)
        shared_rows = [row for row in batch.random_rows if batch.row_seeds[row] is None]
        if shared_rows:
            draws = torch.empty((len(shared_rows), probs.shape[-1]), dtype=probs.dtype,
                                device=probs.device)
            draws.exponential_(generator=self.generator)
            rows = host_to_device(torch.tensor(shared_rows), probs.device)
            noise[rows] = draws
        for row in batch.random_rows:
            seed = batch.row_seeds[row]
            if seed is not None:
                generator = torch.Generator(device=probs.device)
                generator.manual_seed(seed)
                noise[row].exponential_(generator=generator)
        return noise


def apply_top_k_top_p(logits: torch.Tensor, top_ks: torch.Tensor | None,
                      top_ps: torch.Tensor | None) -> torch.Tensor:
    """Masks to -inf every token outside each row's top_k and top_p nucleus.

    # sorted ascending:  | masked by top_k | tail with mass <= 1 - top_p | kept, at least 1 |
    #                    0                 V - top_k                                       V
    """
    ascending, order = logits.sort(dim=-1)
    vocab_size = logits.shape[-1]
    if top_ks is not None:
        kth_largest = ascending.gather(1, (vocab_size - top_ks).clamp(min=0).unsqueeze(1))
        ascending = ascending.masked_fill(ascending < kth_largest, float("-inf"))
    if top_ps is not None:
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        outside = cumulative <= (1 - top_ps).unsqueeze(1)
        outside[:, -1] = False  # the most likely token always stays
        ascending = ascending.masked_fill(outside, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, ascending)


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor,
                    num_logprobs: Sequence[int | None]) -> tuple[TokenLogprobs | None, ...]:
    """The sampled token's logprob and the top-k alternatives for rows that asked."""
    rows = [row for row, k in enumerate(num_logprobs) if k is not None]
    row_index = torch.tensor(rows, device=logits.device)
    logprobs = logits[row_index].log_softmax(dim=-1)
    sampled = logprobs.gather(1, tokens[row_index].unsqueeze(1)).squeeze(1).tolist()
    max_k = max(num_logprobs[row] for row in rows)
    top_values, top_ids = logprobs.topk(max_k, dim=-1)
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    sampled_ids = tokens[row_index].tolist()
    result: list[TokenLogprobs | None] = [None] * len(num_logprobs)
    for i, row in enumerate(rows):
        k = num_logprobs[row]
        result[row] = TokenLogprobs(token_id=sampled_ids[i], logprob=sampled[i],
                                    top_token_ids=tuple(top_ids[i][:k]),
                                    top_logprobs=tuple(top_values[i][:k]))
    return tuple(result)
