"""SchedulerOutput -> the tensors of one model step. Pure: no state, no model.

The batch is packed, with no padding: each scheduled request's new tokens follow the
previous request's. For example, with block_size 4,
    A: a prompt chunk of 5 tokens from position 0, sampling
    B: a decode of 1 token at position 9
    C: a prefix-cache hit, 8 tokens cached, 3 new, sampling

    # row            0  1  2  3  4 | 5 | 6  7  8
    # request        A  A  A  A  A | B | C  C  C
    # position       0  1  2  3  4 | 9 | 8  9  10
    # query_start_loc [0, 5, 6, 9];  context_lens [0, 9, 8];  seq_lens [5, 10, 11]
    # slot of row r  block_tables[req(r), pos // 4] * 4 + pos % 4
    # sample_indices [4, 5, 8]: the last row of each request with sample=True

A decode with pending_input (async scheduling) gets token 0 in its row, listed in
pending_rows: the runner overwrites it on the device with the id the previous step sampled.

Lists are built in Python (extend, range), then each field becomes one tensor; the
per-token slot arithmetic is done by torch on the host. Host tensors reach a GPU through
pinned memory without blocking, so the host can prepare a step while the GPU still runs the
previous one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from server.engine.attention.metadata import AttentionMetadata
from server.scheduler.output import SchedulerOutput


class BlockTableTooShortError(ValueError):
    """A scheduled request's block table does not cover the positions it computes."""


@dataclass(frozen=True)
class StepInputs:
    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    attn: AttentionMetadata
    sample_indices: torch.Tensor  # int64 [num sampled]: rows whose logits are sampled
    sampled_req_ids: tuple[str, ...]  # same order as sample_indices
    pending_rows: tuple[int, ...] = ()  # rows whose token the previous step sampled
    pending_req_ids: tuple[str, ...] = ()  # same order as pending_rows

    @property
    def num_tokens(self) -> int:
        return self.attn.num_tokens


def prepare_inputs(scheduler_output: SchedulerOutput, *, block_size: int,
                   device: torch.device | str, rope_table_rows: int = 0) -> StepInputs:
    """rope_table_rows: the height of one of the model's rotary tables; a request on its
    second (ScheduledRequest.rope_table, LongRoPE) reads rows that much further on."""
    scheduled = scheduler_output.scheduled
    input_ids: list[int] = []
    positions: list[int] = []
    rope_offsets: list[tuple[int, int, int]] = []  # (start row, end row, offset): LongRoPE
    context_lens: list[int] = []
    query_lens: list[int] = []
    block_table_rows: list[tuple[int, ...]] = []
    sampled_req_ids: list[str] = []
    sample_rows: list[int] = []
    pending_rows: list[int] = []
    pending_req_ids: list[str] = []
    for req in scheduled:
        end = req.start_position + req.num_tokens
        if len(req.block_ids) * block_size < end:
            raise BlockTableTooShortError(
                f"request {req.req_id!r} computes positions up to {end} but its "
                f"{len(req.block_ids)} blocks of {block_size} cover only "
                f"{len(req.block_ids) * block_size}")
        input_ids.extend(req.token_ids)
        if req.pending_input:
            pending_rows.append(len(input_ids))
            pending_req_ids.append(req.req_id)
            input_ids.append(0)
        positions.extend(range(req.start_position, end))
        if req.rope_table:
            rope_offsets.append((len(positions) - req.num_tokens, len(positions),
                                 req.rope_table * rope_table_rows))
        context_lens.append(req.start_position)
        query_lens.append(req.num_tokens)
        block_table_rows.append(req.block_ids)
        if req.sample:
            sampled_req_ids.append(req.req_id)
            sample_rows.append(len(input_ids) - 1)

    seq_lens = [ctx + new for ctx, new in zip(context_lens, query_lens)]
    query_start_loc = list(itertools.accumulate(query_lens, initial=0))
    width = max((len(row) for row in block_table_rows), default=0)
    padded_tables = [list(row) + [0] * (width - len(row)) for row in block_table_rows]

    positions_t = torch.tensor(positions, dtype=torch.int64)
    block_tables_t = torch.tensor(padded_tables, dtype=torch.int32).reshape(len(scheduled), width)
    slot_mapping = _slot_mapping(positions_t, block_tables_t, query_lens, block_size)

    device = torch.device(device)
    attn = AttentionMetadata(
        num_tokens=len(input_ids),
        num_seqs=len(scheduled),
        query_start_loc=host_to_device(torch.tensor(query_start_loc, dtype=torch.int32), device),
        seq_lens=host_to_device(torch.tensor(seq_lens, dtype=torch.int32), device),
        context_lens=host_to_device(torch.tensor(context_lens, dtype=torch.int32), device),
        block_tables=host_to_device(block_tables_t, device),
        slot_mapping=host_to_device(slot_mapping, device),
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        query_lens_host=tuple(query_lens),
        seq_lens_host=tuple(seq_lens),
    )
    return StepInputs(
        input_ids=host_to_device(torch.tensor(input_ids, dtype=torch.int64), device),
        positions=host_to_device(_rope_rows(positions_t, rope_offsets), device),
        attn=attn,
        sample_indices=host_to_device(torch.tensor(sample_rows, dtype=torch.int64), device),
        sampled_req_ids=tuple(sampled_req_ids),
        pending_rows=tuple(pending_rows),
        pending_req_ids=tuple(pending_req_ids),
    )


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy on device that does not make the host wait for the GPU's queued work (a
    pageable copy would): staged through pinned memory, which torch's caching host
    allocator keeps until the copy has read it."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _rope_rows(positions: torch.Tensor, offsets: list[tuple[int, int, int]]) -> torch.Tensor:
    """The rows of the rotary table the model reads: the positions, moved on by a LongRoPE
    request's offset (the KV slots were taken from the positions themselves)."""
    if not offsets:
        return positions
    rows = positions.clone()
    for start, end, offset in offsets:
        rows[start:end] += offset
    return rows


def _slot_mapping(positions: torch.Tensor, block_tables: torch.Tensor, query_lens: list[int],
                  block_size: int) -> torch.Tensor:
    """int64 [T]: block_tables[seq of row, pos // block_size] * block_size + pos % block_size."""
    seq_of_row = torch.repeat_interleave(torch.arange(len(query_lens)),
                                         torch.tensor(query_lens, dtype=torch.int64))
    block_ids = block_tables[seq_of_row, positions // block_size].to(torch.int64)
    return block_ids * block_size + positions % block_size
