"""OpenAI's logit_bias: a fixed number added to chosen tokens' logits, for a batch at once.

A request's bias is a tuple of (token_id, bias) pairs (SamplingParams.logit_bias). The batch's
pairs become three flat device tensors (row, token id, bias), so one scatter-add applies every
row's biases, whatever the mix of rows with and without them. It reads nothing but the
logits, so it runs on the device without waiting for earlier steps (async scheduling), and
after a CUDA graph's replay like any other step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from server.engine.step.inputs import host_to_device


@dataclass(frozen=True)
class LogitBiasTensors:
    rows: torch.Tensor  # int64 [N]: the logits row of each pair
    token_ids: torch.Tensor  # int64 [N]
    biases: torch.Tensor  # float32 [N]

    @classmethod
    def build(cls, biases: Sequence[tuple[tuple[int, float], ...]], *,
              device: torch.device | str) -> "LogitBiasTensors | None":
        """One entry per logits row (empty: no bias); None when no row has any."""
        rows, token_ids, values = [], [], []
        for row, pairs in enumerate(biases):
            for token_id, bias in pairs:
                rows.append(row)
                token_ids.append(token_id)
                values.append(bias)
        if not rows:
            return None
        device = torch.device(device)
        # through pinned memory: a pageable copy would wait for the GPU's queued work
        return cls(rows=host_to_device(torch.tensor(rows, dtype=torch.int64), device),
                   token_ids=host_to_device(torch.tensor(token_ids, dtype=torch.int64), device),
                   biases=host_to_device(torch.tensor(values, dtype=torch.float32), device))


def apply_logit_bias(logits: torch.Tensor, bias: LogitBiasTensors) -> torch.Tensor:
    """Returns float32 logits [S, V] with the biases added; the input is left as it was (it
    may be a CUDA graph's output buffer)."""
    return logits.index_put((bias.rows, bias.token_ids), bias.biases.to(logits.dtype),
                            accumulate=True)
