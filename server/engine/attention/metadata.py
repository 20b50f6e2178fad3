"""Per-step attention inputs, built by `server.engine.step.inputs` from a SchedulerOutput.

For sequence i of the packed batch:

    # | context_lens[i] tokens already in the cache | query_lens[i] new tokens |
    #                                               ^ start position          ^ seq_lens[i]

and its new tokens sit at rows query_start_loc[i] : query_start_loc[i + 1] of q.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    num_tokens: int
    num_seqs: int
    query_start_loc: torch.Tensor  # int32 [num_seqs + 1]
    seq_lens: torch.Tensor  # int32 [num_seqs], context + new
    context_lens: torch.Tensor  # int32 [num_seqs]
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks_per_seq], rows padded with 0
    slot_mapping: torch.Tensor  # int64 [num_tokens]
    max_query_len: int
    max_seq_len: int
    # host copies, so the reference path and launch-size choices never sync with the device
    query_lens_host: tuple[int, ...]
    seq_lens_host: tuple[int, ...]
