"""Presence, frequency and repetition penalties, applied to a batch of logits at once.

- presence / frequency (OpenAI): over the tokens generated so far,
      logit[t] -= frequency * count[t] + presence * (count[t] > 0)
- repetition (HF / vLLM): over every token seen (prompt and generated),
      logit[t] = logit[t] / r  if logit[t] > 0  else  logit[t] * r
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PenaltyTensors:
    presence: torch.Tensor  # float32 [S, 1]
    frequency: torch.Tensor  # float32 [S, 1]
    repetition: torch.Tensor  # float32 [S, 1]
    output_counts: torch.Tensor  # float32 [S, V]: times each token was generated
    seen: torch.Tensor  # bool [S, V]: token occurs in the prompt or the output

    @classmethod
    def build(cls, *, presence: Sequence[float], frequency: Sequence[float],
              repetition: Sequence[float], prompt_token_ids: Sequence[Sequence[int]],
              output_token_ids: Sequence[Sequence[int]], vocab_size: int,
              device: torch.device | str) -> "PenaltyTensors":
        output_counts = token_counts(output_token_ids, vocab_size=vocab_size, device=device)
        prompt_counts = token_counts(prompt_token_ids, vocab_size=vocab_size, device=device)

        def column(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

        return cls(presence=column(presence), frequency=column(frequency),
                   repetition=column(repetition), output_counts=output_counts,
                   seen=(output_counts > 0) | (prompt_counts > 0))


def token_counts(token_ids: Sequence[Sequence[int]], *, vocab_size: int,
                 device: torch.device | str) -> torch.Tensor:
    """float32 [len(token_ids), vocab_size]: occurrences of each token id in each row."""
    width = max((len(row) for row in token_ids), default=0)
    # Pad with an extra id, vocab_size, that lands in a column dropped afterwards.
    padded = [list(row) + [vocab_size] * (width - len(row)) for row in token_ids]
    index = torch.tensor(padded, dtype=torch.int64).reshape(len(token_ids), width).to(device)
    counts = torch.zeros(len(token_ids), vocab_size + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))
    return counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, penalties: PenaltyTensors) -> torch.Tensor:
    """Returns penalised float32 logits [S, V]; the input is left as it was."""
    repetition = torch.where(penalties.seen, penalties.repetition, 1.0)
    logits = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = logits - penalties.frequency * penalties.output_counts
    return logits - penalties.presence * (penalties.output_counts > 0).to(logits.dtype)
