"""CUDA graphs for decode-only steps (every scheduled request computes exactly one token).

At startup (or at the first decode step) the model's forward pass and lm_head are captured
once per batch-size bucket, largest first, into one shared memory pool. A decode step of n
requests replays the smallest bucket B >= n; mixed and prefill steps run eagerly, as do
decode steps larger than the largest bucket. Sampling stays outside the graph. Every graph
writes its logits into rows 0..B-1 of one float32 buffer [Bmax, vocab] kept outside the
pool: outputs the graphs held themselves would add up to B x vocab floats per bucket (5 GB
over the buckets up to 1,024 for a 128k vocabulary), against one copy of 0.5 GB per step.

The graphs read static inputs from one device buffer, refilled each step from a pinned host
buffer of the same layout by a single non-blocking copy (the block tables last, so the copy
stops after row B):

    # int64:  | input_ids [Bmax] | positions [Bmax] | slot_mapping [Bmax] |
    # int32:  | seq_lens [Bmax] | context_lens [Bmax] | query_start_loc [Bmax + 1] | pad |
    #         | block_tables [Bmax, W], W = ceil(max_model_len / block_size)            |

Under tensor parallelism a graph holds the forward pass with its all-reduces (our kernel,
parallel/ipc_all_reduce.py) and this rank's vocabulary rows of the logits; their gather
over the ranks runs after the replay, on torch.distributed.

Rows n..B-1 are padding: token 0 at position 0 with a one-token context in block 0, writing
its K/V to slot num_slots, one past the pool, which the cache-write kernel skips. They read
valid memory, write nothing, and their logits are dropped.

The attention plan reads only host values, fixed at capture: each graph is captured with
max_seq_len = max_model_len (so its flash-decoding split suits the longest context it will
see) and the kernels read each sequence's true length from seq_lens at replay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.gpu.graph_capture import capturing
from server.engine.gpu.ops_choice import is_cuda_ops
from server.engine.step.inputs import BlockTableTooShortError
from server.scheduler.output import ScheduledRequest

logger = logging.getLogger("inflightd.engine")

# TensorRT-LLM runs up to 4,096 requests a step; an eager decode step of that size costs the
# host more than the GPU's time (issue 15), so graphs go as far.
MAX_GRAPH_BATCH_SIZE = 4096
_SMALL_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128)
LARGE_BUCKET_STEP = 64  # padding rows cost < 1/4 of the step above 256 (TensorRT-LLM's step)


def graph_batch_sizes(max_num_seqs: int) -> tuple[int, ...]:
    """1, 2, 4, 8, 16, 24, 32, 48, ..., 128, then every 32 up to 256 and every 64 above,
    ending at max_num_seqs (capped at MAX_GRAPH_BATCH_SIZE)."""
    top = min(max_num_seqs, MAX_GRAPH_BATCH_SIZE)
    sizes = [b for b in _SMALL_BUCKETS if b < top]
    sizes += [b for b in range(160, 257, 32) if b < top]
    sizes += [b for b in range(256 + LARGE_BUCKET_STEP, top, LARGE_BUCKET_STEP)]
    return (*sizes, top)


def decode_graph_runner(model, kv_cache: torch.Tensor, ops, *, block_size: int,
                        enforce_eager: bool, max_batch_size: int, max_model_len: int | None
                        ) -> "DecodeGraphRunner | None":
    """The decode graphs of a model on our kernels on a GPU, unless enforce_eager; under
    tensor parallelism only with our all-reduce (gloo's cannot be captured), and only up
    to the batch whose all-reduce fits one slot of its buffer."""
    tp = model.tp
    if (enforce_eager or kv_cache.device.type != "cuda" or not is_cuda_ops(ops)
            or (tp.enabled and tp.device_all_reduce is None)):
        return None
    if tp.enabled:
        row_bytes = model.arch.hidden_size * model.dtype.itemsize
        max_batch_size = min(max_batch_size, tp.device_all_reduce.max_rows(row_bytes))
    return DecodeGraphRunner(model, kv_cache, ops, block_size=block_size,
                             max_batch_size=max_batch_size,
                             max_model_len=max_model_len or model.arch.max_position_embeddings)


class DecodeStaging:
    """The host side of the static inputs: numpy views over one int32 buffer (pinned when
    it feeds a GPU). `fill` writes one decode step's rows and padding; pure host work.

    Block tables are the bulk of the rows. A row whose table is the very tuple it got last
    step (the block manager hands out the same BlockTable until the table grows) is left as
    it is; otherwise the request's table is kept as an int32 array, converted again only
    when it grows (a running request's table only ever grows at its end). `forget` drops
    finished and preempted requests (a resumed one gets new blocks)."""

    def __init__(self, *, max_batch_size: int, table_width: int, pin_memory: bool) -> None:
        self.max_batch_size = b = max_batch_size
        self.table_width = table_width
        header = 6 * b + 3 * b + 1  # three int64 fields (two int32 words each), three int32
        self.table_offset = header + (header % 2)  # keep the table 8-byte aligned
        self.num_words = self.table_offset + b * table_width
        self.buffer = torch.zeros(self.num_words, dtype=torch.int32, pin_memory=pin_memory)
        words = self.buffer.numpy()
        int64 = words[:6 * b].view(np.int64)
        self.input_ids, self.positions, self.slot_mapping = int64[:b], int64[b:2 * b], \
            int64[2 * b:]
        self.seq_lens = words[6 * b:7 * b]
        self.context_lens = words[7 * b:8 * b]
        self.query_start_loc = words[8 * b:9 * b + 1]
        self.query_start_loc[:] = np.arange(b + 1, dtype=np.int32)
        self.block_tables = words[self.table_offset:].reshape(b, table_width)
        self._tables: dict[str, np.ndarray] = {}
        self._row_tables: list[tuple[int, ...] | None] = [None] * b  # what each row holds

    def forget(self, req_ids) -> None:
        for req_id in req_ids:
            self._tables.pop(req_id, None)

    def _table(self, s: ScheduledRequest) -> np.ndarray:
        table = self._tables.get(s.req_id)
        ids = s.block_ids
        if (table is None or len(table) != len(ids) or table[-1] != ids[-1]
                or table[0] != ids[0]):
            table = self._tables[s.req_id] = np.array(ids, dtype=np.int32)
        return table

    def num_words_for(self, batch_size: int) -> int:
        """Words to copy so rows 0..batch_size-1 of every field arrive."""
        return self.table_offset + batch_size * self.table_width

    def fits(self, scheduled: Sequence[ScheduledRequest]) -> bool:
        return (len(scheduled) <= self.max_batch_size
                and all(len(s.block_ids) <= self.table_width for s in scheduled))

    def fill(self, scheduled: Sequence[ScheduledRequest], *, batch_size: int, block_size: int,
             num_slots: int, rope_table_rows: int = 0) -> None:
        """Rows 0..n-1: the scheduled decodes in order; rows n..batch_size-1: padding.
        rope_table_rows: as inputs.prepare_inputs (positions are the rotary table's rows)."""
        n = len(scheduled)
        positions = [s.start_position for s in scheduled]
        for s, position in zip(scheduled, positions):
            if len(s.block_ids) * block_size <= position:
                raise BlockTableTooShortError(
                    f"request {s.req_id!r} computes position {position} but its "
                    f"{len(s.block_ids)} blocks of {block_size} do not cover it")
        # a pending input's id is written on the device after the copy (TokenFeedback)
        self.input_ids[:n] = [s.token_ids[0] if s.token_ids else 0 for s in scheduled]
        self.positions[:n] = positions
        if rope_table_rows:  # a LongRoPE request reads its rotary table further on
            self.positions[:n] += np.fromiter((s.rope_table for s in scheduled), np.int64,
                                              n) * rope_table_rows
        self.slot_mapping[:n] = [s.block_ids[p // block_size] * block_size + p % block_size
                                 for s, p in zip(scheduled, positions)]
        self.context_lens[:n] = positions
        self.seq_lens[:n] = self.context_lens[:n] + 1
        row_tables = self._row_tables
        for row, s in enumerate(scheduled):
            if row_tables[row] is not s.block_ids:
                self.block_tables[row, :len(s.block_ids)] = self._table(s)
                row_tables[row] = s.block_ids
        row_tables[n:batch_size] = [None] * (batch_size - n)
        self.input_ids[n:batch_size] = 0
        self.positions[n:batch_size] = 0
        self.slot_mapping[n:batch_size] = num_slots
        self.seq_lens[n:batch_size] = 1
        self.context_lens[n:batch_size] = 0
        self.block_tables[n:batch_size, 0] = 0


class DecodeGraphRunner:
    """Captures and replays the decode graphs of one model, KV pool and Ops on one GPU."""

    def __init__(self, model, kv_cache: torch.Tensor, ops, *, block_size: int,
                 max_batch_size: int, max_model_len: int) -> None:
        """kv_cache: the whole pool [num_layers, 2, num_blocks, block_size, Hkv, D]."""
        self.model = model
        self.kv_cache = kv_cache
        self.ops = ops
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.batch_sizes = graph_batch_sizes(max_batch_size)
        self.num_slots = kv_cache.shape[2] * kv_cache.shape[3]
        self.staging = DecodeStaging(max_batch_size=self.batch_sizes[-1],
                                     table_width=-(-max_model_len // block_size),
                                     pin_memory=True)
        self.device_words = torch.zeros(self.staging.num_words, dtype=torch.int32,
                                        device=kv_cache.device)
        self._copied = torch.cuda.Event()  # the last staging -> device copy
        # the graphs' logits: this rank's vocabulary rows (all of them without tensor
        # parallelism, where they are also what run() returns)
        self.tp = model.tp
        rows = model.shard.vocab_rows
        self.logits = torch.empty((self.batch_sizes[-1], rows[1] - rows[0]),
                                  dtype=torch.float32, device=kv_cache.device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.num_replays = 0
        self.capture_seconds: float | None = None
        self.pool_bytes: int | None = None

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    def bucket_for(self, num_seqs: int) -> int | None:
        return next((b for b in self.batch_sizes if b >= num_seqs), None)

    def can_run(self, scheduled: Sequence[ScheduledRequest]) -> bool:
        return 0 < len(scheduled) and self.staging.fits(scheduled)

    def forget(self, req_ids) -> None:
        self.staging.forget(req_ids)

    def capture(self) -> None:
        """Captures every bucket, largest first, sharing one memory pool."""
        start = time.perf_counter()
        before = torch.cuda.memory_allocated(self.kv_cache.device)
        self._load_padding()  # the warm-up runs write nothing into the KV pool
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.kv_cache.device)
        for batch_size in reversed(self.batch_sizes):
            input_ids, positions, metadata = self._static_inputs(batch_size)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # loads kernels, sizes cuBLAS workspaces
                self._forward(input_ids, positions, metadata)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with capturing(graph, pool=pool):
                self._forward(input_ids, positions, metadata)
            self._graphs[batch_size] = graph
        torch.cuda.synchronize(self.kv_cache.device)
        self.capture_seconds = time.perf_counter() - start
        self.pool_bytes = torch.cuda.memory_allocated(self.kv_cache.device) - before
        logger.info("captured %d decode graphs (batch sizes %s) in %.1f s, %.0f MiB",
                    len(self._graphs), ",".join(map(str, self.batch_sizes)),
                    self.capture_seconds, self.pool_bytes / 2**20)

    def run(self, scheduled: Sequence[ScheduledRequest], *, replay: bool = True,
            before_replay: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """float32 logits [n, vocab] of the n scheduled decodes, in order: a view of the
        graph's output, valid until the next replay. replay=False runs the same padded
        step eagerly on the same static inputs (what the graph must reproduce exactly).
        before_replay gets the step's device input_ids once they are copied (to write
        pending inputs into them)."""
        if not self._graphs:
            self.capture()
        num_seqs = len(scheduled)
        batch_size = self.bucket_for(num_seqs)
        self._copied.synchronize()  # the previous step's copy has left the staging buffer
        self.staging.fill(scheduled, batch_size=batch_size, block_size=self.block_size,
                          num_slots=self.num_slots,
                          rope_table_rows=self.model.arch.rope_table_rows)
        words = self.staging.num_words_for(batch_size)
        self.device_words[:words].copy_(self.staging.buffer[:words], non_blocking=True)
        self._copied.record()
        if before_replay is not None:
            before_replay(self.device_words[:6 * self.staging.max_batch_size]
                          .view(torch.int64)[:num_seqs])
        if replay:
            self._graphs[batch_size].replay()
            self.num_replays += 1
        else:
            self._forward(*self._static_inputs(batch_size))
        if self.tp.enabled:
            return self.model.finish_logits(self.logits[:num_seqs])
        return self.logits[:num_seqs]

    def time_padded_replay(self, batch_size: int, *, repeats: int = 20) -> float:
        """Median milliseconds of one replay of a bucket's graph on an all-padding step
        (one-key contexts, nothing written): the GPU time of a decode step without the
        host's share and without attention over long contexts. For benchmarks."""
        if not self._graphs:
            self.capture()
        self._load_padding()
        graph = self._graphs[batch_size]
        graph.replay()
        times = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]

    def _load_padding(self) -> None:
        self._copied.synchronize()
        self.staging.fill((), batch_size=self.staging.max_batch_size,
                          block_size=self.block_size, num_slots=self.num_slots)
        self.device_words.copy_(self.staging.buffer)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                 metadata: AttentionMetadata) -> None:
        """The padded step, its logits written into self.logits[:batch size]."""
        hidden = self.model.forward(input_ids, positions, self.kv_cache, metadata, self.ops)
        out = self.logits[:input_ids.shape[0]]
        logits = self.model.local_logits(hidden, self.ops, out=out)
        if not self.tp.enabled:
            logits = self.model.finish_logits(logits)  # Gemma 2's soft-capping
        if logits is not out:
            out.copy_(logits)

    def _static_inputs(self, batch_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Views of the device buffer for one bucket, with host fields describing the
        longest step the graph serves (what the attention plan is made for)."""
        b, staging = batch_size, self.staging
        top = staging.max_batch_size
        int64 = self.device_words[:6 * top].view(torch.int64)
        words = self.device_words
        table = words[staging.table_offset:staging.table_offset + b * staging.table_width]
        metadata = AttentionMetadata(
            num_tokens=b, num_seqs=b,
            query_start_loc=words[8 * top:8 * top + b + 1],
            seq_lens=words[6 * top:6 * top + b],
            context_lens=words[7 * top:7 * top + b],
            block_tables=table.view(b, staging.table_width),
            slot_mapping=int64[2 * top:2 * top + b],
            max_query_len=1, max_seq_len=self.max_model_len,
            query_lens_host=(1,) * b, seq_lens_host=(self.max_model_len,) * b)
        return int64[:b], int64[top:top + b], metadata
