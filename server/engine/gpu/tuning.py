"""Kernel choices timed on the GPU at build time, stored in an engine's tuning.json, and the
CudaOps that applies them.

What is tuned: the shortest flash-decoding partition (keys per split) for each context-length
bucket; and, where the bulk-copy decode kernel fits the model (ops/cuda_decode_bulk.py),
which decode steps it takes (gpu/tune_decode_bulk.py). The attention plan
(ops/cuda_attention.py) splits a sequence's keys into up to ceil(max_seq_len / 64) parts to
fill the GPU; whether 64-key parts beat longer ones (fewer partial results to merge, longer
runs per CTA) depends on the device and on how much shorter than planned the contexts are,
so each candidate is timed on decode batches of 1, 4 and 16 sequences holding the bucket's
longest context and a quarter of it, the launch planned for the longest (as a decode graph
is planned for max_model_len and serves shorter contexts), each call replayed from a CUDA
graph as decode steps run (timing Python launches would time the host); the candidate with
the lowest time relative to each point's best, summed over the points, wins. Decode graphs
use the last bucket's choice.

    tuning.json: {"format": 1, "arches": {"sm_90": {"device_name": ..., "dtype": ...,
                  "decode_partition_len": [{"max_context": 512, "partition_len": 64,
                                            "timings_us": {"64": 21.0, ...}}, ...],
                  "decode_bulk": [{"kv_dtype": "float8_e4m3fn", "max_context": 512,
                                   "bulk_seqs": [64, 256],
                                   "timings_us": {"64": [30.1, 24.0], ...}}, ...]}}}

"decode_bulk" is optional (an engine built before it plans without the bulk kernel).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.gpu.graph_capture import median_replay_ms
from server.engine.gpu.kernels import KernelLibrary
from server.engine.ops.cuda import CudaOps
from server.engine.ops.cuda_attention import plan_for
from server.engine.ops.torch_ref import to_cache_dtype

TUNING_FORMAT = 1
TUNING_FILE = "tuning.json"
PARTITION_LEN_CANDIDATES = (64, 128, 256, 512, 1024)
TUNING_BATCH_SIZES = (1, 4, 16)  # larger batches fill the GPU without splitting
MIN_TUNED_CONTEXT = 512
MAX_TUNING_KV_TOKENS = 1 << 19  # bounds the synthetic KV cache a timing allocates


class TuningError(ValueError):
    """A tuning.json that cannot be read by this inflightd."""


@dataclass(frozen=True)
class PartitionChoice:
    max_context: int  # this choice serves contexts up to here (the last one: any longer)
    partition_len: int
    timings_us: tuple[tuple[int, float], ...]  # (candidate, summed microseconds)


@dataclass(frozen=True)
class BulkChoice:
    """Which decode steps of one cache dtype and context bucket take the bulk kernel: those
    of at least as many sequences as a timed batch size in bulk_seqs (the largest timed size
    not above the step's decides)."""
    kv_dtype: str  # "bfloat16", "float16" or "float8_e4m3fn"
    max_context: int
    bulk_seqs: tuple[int, ...]
    timings_us: tuple[tuple[int, float, float], ...]  # (sequences, planned kernels, bulk)

    def takes(self, num_seqs: int) -> bool:
        timed = [n for n, _, _ in self.timings_us if n <= num_seqs]
        return bool(timed) and max(timed) in self.bulk_seqs


@dataclass(frozen=True)
class KernelTuning:
    arch: str
    device_name: str
    dtype: str
    decode_partition_len: tuple[PartitionChoice, ...]  # ascending max_context
    decode_bulk: tuple[BulkChoice, ...] = ()  # ascending max_context per kv_dtype

    def bulk_for(self, *, num_seqs: int, max_seq_len: int, kv_dtype: str) -> bool | None:
        """Whether a decode step takes the bulk kernel; None where nothing was tuned for
        this cache dtype."""
        choices = [c for c in self.decode_bulk if c.kv_dtype == kv_dtype]
        if not choices:
            return None
        bucket = next((c for c in choices if max_seq_len <= c.max_context), choices[-1])
        return bucket.takes(num_seqs)

    def partition_len_for(self, max_seq_len: int) -> int | None:
        if not self.decode_partition_len:
            return None
        for choice in self.decode_partition_len:
            if max_seq_len <= choice.max_context:
                return choice.partition_len
        return self.decode_partition_len[-1].partition_len

    def to_json(self) -> dict:
        return {"device_name": self.device_name, "dtype": self.dtype,
                "decode_partition_len": [
                    {"max_context": c.max_context, "partition_len": c.partition_len,
                     "timings_us": {str(k): round(v, 2) for k, v in c.timings_us}}
                    for c in self.decode_partition_len],
                "decode_bulk": [
                    {"kv_dtype": c.kv_dtype, "max_context": c.max_context,
                     "bulk_seqs": list(c.bulk_seqs),
                     "timings_us": {str(n): [round(a, 2), round(b, 2)]
                                    for n, a, b in c.timings_us}}
                    for c in self.decode_bulk]}

    @classmethod
    def from_json(cls, arch: str, data: dict) -> "KernelTuning":
        choices = tuple(PartitionChoice(
            max_context=int(c["max_context"]), partition_len=int(c["partition_len"]),
            timings_us=tuple(sorted((int(k), float(v)) for k, v in c["timings_us"].items())))
            for c in data["decode_partition_len"])
        bulk = tuple(BulkChoice(
            kv_dtype=c["kv_dtype"], max_context=int(c["max_context"]),
            bulk_seqs=tuple(int(n) for n in c["bulk_seqs"]),
            timings_us=tuple(sorted((int(n), float(a), float(b))
                                    for n, (a, b) in c["timings_us"].items())))
            for c in data.get("decode_bulk", ()))
        return cls(arch=arch, device_name=data["device_name"], dtype=data["dtype"],
                   decode_partition_len=tuple(sorted(choices, key=lambda c: c.max_context)),
                   decode_bulk=tuple(sorted(bulk, key=lambda c: (c.kv_dtype, c.max_context))))


def save_tuning(engine_dir: Path, tuning: KernelTuning | None) -> Path:
    """Writes (or merges) one arch's choices; with None, an empty file saying nothing was
    tuned (a build without a GPU), so the engine plans with the built-in heuristics."""
    path = Path(engine_dir) / TUNING_FILE
    data = {"format": TUNING_FORMAT, "arches": {}}
    if path.is_file():
        data = _read(path)
    if tuning is not None:
        data["arches"][tuning.arch] = tuning.to_json()
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def load_tuning(engine_dir: Path, arch: str) -> KernelTuning | None:
    """The choices tuned for `arch`, or None when the engine has none for it."""
    path = Path(engine_dir) / TUNING_FILE
    if not path.is_file():
        return None
    entry = _read(path)["arches"].get(arch)
    return None if entry is None else KernelTuning.from_json(arch, entry)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise TuningError(f"{path} is not valid JSON: {exc}") from exc
    if data.get("format") != TUNING_FORMAT or "arches" not in data:
        raise TuningError(f"{path} has format {data.get('format')!r}; this inflightd reads "
                          f"format {TUNING_FORMAT}; rebuild the engine")
    return data


class TunedCudaOps(CudaOps):
    """CudaOps whose attention caps the flash-decoding split by the tuned partition length,
    and gives the bulk kernel the decode steps the build timed it faster on (unless
    INFLIGHTD_DECODE_BULK says otherwise)."""

    def __init__(self, library: KernelLibrary, tuning: KernelTuning) -> None:
        super().__init__(library)
        self.tuning = tuning
        # the last step's answer: every layer of a step asks the same (only the last is
        # kept, as max_seq_len changes from step to step)
        self._bulk_choice: tuple[tuple[int, int, torch.dtype], bool] | None = None

    def wants_decode_bulk(self, kv_cache: torch.Tensor, metadata: AttentionMetadata) -> bool:
        if self.decode_bulk_forced is not None:
            return self.decode_bulk_forced
        key = (metadata.num_seqs, metadata.max_seq_len, kv_cache.dtype)
        if self._bulk_choice is None or self._bulk_choice[0] != key:
            self._bulk_choice = (key, bool(self.tuning.bulk_for(
                num_seqs=key[0], max_seq_len=key[1],
                kv_dtype=str(kv_cache.dtype).removeprefix("torch."))))
        return self._bulk_choice[1]

    def attention_plan(self, q: torch.Tensor, kv_cache: torch.Tensor,
                       metadata: AttentionMetadata, *, extras: bool = False):
        return capped_plan(self.library, q, kv_cache, metadata, self.tuning, extras=extras)


def capped_plan(library: KernelLibrary, q: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata, tuning: KernelTuning | None, *,
                extras: bool = False):
    plan = plan_for(library, q, kv_cache, metadata, extras=extras)
    part_len = tuning.partition_len_for(metadata.max_seq_len) if tuning else None
    if part_len is None:
        return plan
    most = max(1, -(-metadata.max_seq_len // part_len))
    return replace(plan, num_partitions=min(plan.num_partitions, most))


def context_buckets(max_model_len: int) -> tuple[int, ...]:
    """512, 2048, 8192, ... (x4) below max_model_len, then max_model_len itself."""
    buckets, context = [], MIN_TUNED_CONTEXT
    while context < max_model_len:
        buckets.append(context)
        context *= 4
    return (*buckets, max_model_len)


def tune_decode_partitions(library: KernelLibrary, *, num_heads: int, num_kv_heads: int,
                           head_dim: int, dtype: torch.dtype, block_size: int,
                           max_model_len: int) -> KernelTuning:
    """Times each candidate partition length per context bucket on this GPU."""
    choices = []
    for max_context in context_buckets(max_model_len):
        # A step planned for max_context (as a decode graph is) may hold shorter contexts:
        # time the bucket's longest context and a quarter of it.
        points = [(num_seqs, context) for num_seqs in TUNING_BATCH_SIZES
                  for context in sorted({max_context, max(64, max_context // 4)})]
        times = {}  # (candidate, num_seqs, context) -> microseconds
        for num_seqs, context in points:
            batch = random_decode_batch(library, num_seqs=num_seqs, context=context,
                                        plan_context=max_context, num_heads=num_heads,
                                        num_kv_heads=num_kv_heads, head_dim=head_dim,
                                        dtype=dtype, block_size=block_size)
            for part_len in PARTITION_LEN_CANDIDATES:
                tuning = KernelTuning(library.arch, "", str(dtype), (PartitionChoice(
                    max_context=max_context, partition_len=part_len, timings_us=()),))
                times[part_len, num_seqs, context] = time_decode_attention(
                    library, tuning, *batch, scale=head_dim ** -0.5)
            del batch
        best_at = {p: min(times[(c, *p)] for c in PARTITION_LEN_CANDIDATES) for p in points}
        score = {c: sum(times[(c, *p)] / best_at[p] for p in points)
                 for c in PARTITION_LEN_CANDIDATES}
        totals = {c: sum(times[(c, *p)] for p in points) for c in PARTITION_LEN_CANDIDATES}
        choices.append(PartitionChoice(max_context=max_context,
                                       partition_len=min(score, key=score.__getitem__),
                                       timings_us=tuple(sorted(totals.items()))))
    return KernelTuning(arch=library.arch,
                        device_name=torch.cuda.get_device_name(library.device),
                        dtype=str(dtype).removeprefix("torch."),
                        decode_partition_len=tuple(choices))


def random_decode_batch(library: KernelLibrary, *, num_seqs: int, context: int,
                        plan_context: int, num_heads: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype, block_size: int, kv_dtype: torch.dtype | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """(q, kv_cache, metadata) of one decode step of num_seqs sequences holding `context`
    keys each on shuffled blocks (a cache of kv_dtype, default dtype), planned (host fields)
    for `plan_context`."""
    device = library.device
    context = max(1, min(context, MAX_TUNING_KV_TOKENS // num_seqs))
    blocks_per_seq = -(-context // block_size)
    generator = torch.Generator(device=device).manual_seed(0)
    kv_cache = to_cache_dtype(
        torch.randn((2, num_seqs * blocks_per_seq, block_size, num_kv_heads, head_dim),
                    generator=generator, device=device).to(dtype), kv_dtype or dtype)
    q = torch.randn((num_seqs, num_heads, head_dim), generator=generator,
                    device=device).to(dtype)
    order = torch.randperm(num_seqs * blocks_per_seq, device=device, generator=generator)
    int32 = dict(dtype=torch.int32, device=device)
    plan_context = max(plan_context, context)
    metadata = AttentionMetadata(
        num_tokens=num_seqs, num_seqs=num_seqs,
        query_start_loc=torch.arange(num_seqs + 1, **int32),
        seq_lens=torch.full((num_seqs,), context, **int32),
        context_lens=torch.full((num_seqs,), context - 1, **int32),
        block_tables=order.view(num_seqs, blocks_per_seq).to(torch.int32),
        slot_mapping=torch.zeros(num_seqs, dtype=torch.int64, device=device),
        max_query_len=1, max_seq_len=plan_context, query_lens_host=(1,) * num_seqs,
        seq_lens_host=(plan_context,) * num_seqs)
    return q, kv_cache, metadata


def time_decode_attention(library: KernelLibrary, tuning: KernelTuning, q: torch.Tensor,
                          kv_cache: torch.Tensor, metadata: AttentionMetadata, *,
                          scale: float, calls: int = 10, repeats: int = 5) -> float:
    """Microseconds of one decode attention call under `tuning`: the median over `repeats`
    replays of a graph of `calls` calls, divided by `calls`."""
    ops = TunedCudaOps(library, tuning)
    return 1e3 * median_replay_ms(lambda: ops.attention(q, kv_cache, metadata, scale),
                                  calls=calls, replays=repeats, warmup=1,
                                  device=library.device)
