"""Launch plan and checked launch of the paged attention kernels
(csrc/paged_attention_d<head_dim>.cu, which merge their own partitions with
csrc/attention_merge.cuh).

Plan. Each sequence has q_len * group query rows per kv head (group = query heads per kv
head). Sequences with at most 16 rows (decodes, short chunks) run on 1-warp CTAs, up to 32
on 2-warp CTAs, the rest on 4-warp CTAs (64 rows): one launch per class present, each
skipping the other classes' sequences. With decode_key_split=2 the 1-warp class runs on the
"w1k2" kernel instead: 2-warp CTAs whose warps share the same 16 rows and take half of each
K/V tile's keys each (the kernel combines their softmax states); the plan then sizes its
split by that kernel's occupancy. A launch's grid is (grid_x * num_kv_heads, 1,
num_partitions), the kv heads of a row tile neighbouring CTAs (see the kernel). When those
CTAs would leave the last wave of CTAs on the GPU poorly filled (too few sequences, or too
few to divide evenly) and contexts are long enough, every sequence's keys are split into
`num_partitions` parts (flash-decoding): each part's CTA writes float32 partials, counts
itself in on an int32 arrival counter of its (row tile, kv head), and the last to arrive
merges the parts and returns the counter to 0. So there is no second kernel, but the
counters must be 0 before a launch: they are allocated zeroed once
(KernelLibrary.zeroed_int32, or an AttentionWorkspace's own) and every launch leaves them
at 0. The launches of one step, one after another on a stream, share them;
launches running at the same time on two streams must not.

A cache of e4m3 values (--kv-cache-dtype fp8) runs the same kernels built for it
(csrc/paged_attention_fp8_d<head_dim>.cu, names ending "_kvfp8"); everything here applies to both.
Soft-capping, ALiBi and sliding windows run on each kernel's "_extras" build
(ops/cuda_attention_scores.py).

The plan reads only host values (query_lens_host, max_seq_len), never the device, and the
kernels read each sequence's length on the device, so a decode step captured in a CUDA
graph stays right for any lengths at replay. The partition count is fixed at capture: to
keep long contexts fast in a captured graph, capture with metadata.max_seq_len set to the
longest context the graph will see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.gpu.kernel_args import (KernelArgumentError, check_contiguous, check_device,
                                       check_dtype, check_shape, dtype_suffix, kv_cache_suffix)
from server.engine.gpu.kernels import ATTENTION_HEAD_DIMS, KernelLibrary, attention_module
from server.engine.ops.cuda_attention_hopper import (HOPPER_MODULE, HOPPER_SMEM_BYTES,
                                                     hopper_attention_fits, hopper_kernel_name,
                                                     hopper_row_classes, hopper_threads)
from server.engine.ops.cuda_attention_scores import (check_plan_extras, score_args,
                                                     wants_extras)
from server.engine.ops.cuda_attention_smem import dynamic_smem_bytes
from server.engine.ops.cuda_attention_workspace import (MAX_PARTITIONS, AttentionWorkspace,
                                                        partials_args)

ROWS_PER_WARP = 16
TRANSPOSED_ROWS = 8  # rows of a transposed decode tile (csrc/attention_transposed.cuh)


@dataclass(frozen=True)
class RowClass:
    """Sequences with min_rows..max_rows query rows per kv head, and the kernel they run on:
    `warps` row warps of 16 rows, or (transposed) one warp of 8 rows with the keys in M."""
    warps: int
    min_rows: int
    max_rows: int
    transposed: bool = False
    hopper: bool = False  # csrc/paged_attention_hopper.cu (ops/cuda_attention_hopper.py)

    @property
    def rows_per_cta(self) -> int:
        return TRANSPOSED_ROWS if self.transposed else ROWS_PER_WARP * self.warps

    @property
    def key(self) -> int | str:
        """How resident_ctas names it: its warps, or "1t", or "hopper"."""
        return "1t" if self.transposed else "hopper" if self.hopper else self.warps


ROW_CLASSES = (RowClass(1, 1, 16), RowClass(2, 17, 32), RowClass(4, 33, 2**31 - 1))
# With transposed_decode: decode tiles of up to 8 rows (GQA groups of up to 8) on the
# transposed kernels, half the MMAs and accumulator registers of a 16-row tile.
TRANSPOSED_ROW_CLASSES = (RowClass(1, 1, TRANSPOSED_ROWS, transposed=True),
                          RowClass(1, TRANSPOSED_ROWS + 1, 16), *ROW_CLASSES[1:])
MIN_PARTITION_LEN = 64  # keys (two K/V tiles); shorter parts cost more than they gain
DECODE_KEY_SPLITS = (1, 2)  # warps sharing a 1-warp tile's keys: w1, w1k2
# 2: on an H200, 1.3x the bandwidth of 1 at batch 1 and 256, +4-9 % at batch 64 except one
# point (bench/kernels.py; docs/benchmarks.md)
DEFAULT_DECODE_KEY_SPLIT = 2
# Over an e4m3 cache decode tiles of up to 8 rows run transposed (plan_for): 2-20 % faster
# than the 16-row tiles at every batch and context timed but one (within 2 %) on an H200.
# Over bf16 they lose 5 % at batch 256, so a 16-bit cache keeps its 16-row tiles. Both
# caches split the keys at every batch: on an H200 (bench/kernels.py, session 14 in
# docs/benchmarks.md) the transposed key split is 5-12 % faster than the 1-warp transposed
# kernel at batch 256-1,024 from 2k contexts on, and within 6 % either way at 640.
GOOD_WAVE_FILL = 0.85  # fewest partitions whose last wave of CTAs keeps the SMs this busy


@dataclass(frozen=True)
class AttentionLaunch:
    warps: int  # row warps: 16 * warps rows per CTA (8 when transposed)
    min_rows: int
    max_rows: int
    grid_x: int
    key_split: int = 1  # warps sharing each row warp's keys
    transposed: bool = False
    extras: bool = False  # the kernel with soft-capping and ALiBi
    hopper: bool = False  # csrc/paged_attention_hopper.cu (ops/cuda_attention_hopper.py)

    @property
    def threads(self) -> int:
        return 32 * self.warps * self.key_split

    def threads_for(self, suffix: str) -> int:
        """Threads of this launch's CTAs over a cache of this suffix: the Hopper kernel adds
        a producer warpgroup over a 16-bit cache."""
        return hopper_threads(suffix) if self.hopper else self.threads

    def kernel(self, *, suffix: str, head_dim: int) -> str:
        if self.hopper:
            return hopper_kernel_name(suffix)
        return kernel_name(suffix=suffix, head_dim=head_dim, warps=self.warps,
                           key_split=self.key_split, transposed=self.transposed,
                           extras=self.extras)

    def module(self, *, suffix: str, head_dim: int) -> str:
        return HOPPER_MODULE if self.hopper else kernel_module(suffix, head_dim)

    def smem_bytes(self, *, suffix: str, head_dim: int) -> int:
        if self.hopper:
            return HOPPER_SMEM_BYTES
        return launch_smem_bytes(suffix=suffix, head_dim=head_dim, warps=self.warps,
                                 transposed=self.transposed)


def launch_smem_bytes(*, suffix: str, head_dim: int, warps: int,
                      transposed: bool = False) -> int:
    """Dynamic shared memory of this kernel's launches (0 where it is static)."""
    return dynamic_smem_bytes(head_dim=head_dim, e4m3_cache=is_e4m3_cache(suffix),
                              rows=TRANSPOSED_ROWS if transposed else ROWS_PER_WARP * warps,
                              transposed=transposed)


def kernel_name(*, suffix: str, head_dim: int, warps: int, key_split: int,
                transposed: bool = False, extras: bool = False) -> str:
    """suffix: the model dtype's ("bf16"), plus "_kvfp8" for an e4m3 cache; extras: the
    build that soft-caps and adds ALiBi biases."""
    split = f"k{key_split}" if key_split > 1 else ""
    return (f"paged_attention_{suffix}_d{head_dim}_w{warps}{'t' if transposed else ''}{split}"
            f"{'_extras' if extras else ''}")


def is_e4m3_cache(suffix: str) -> bool:
    """Whether a kernel_suffix names an e4m3 cache."""
    return suffix.endswith("_kvfp8")


def kernel_module(suffix: str, head_dim: int) -> str:
    """The csrc/ module defining the kernels of this suffix and head_dim."""
    return attention_module(head_dim, e4m3_cache=is_e4m3_cache(suffix))


def kernel_suffix(q: torch.Tensor, kv_cache: torch.Tensor) -> str:
    return dtype_suffix("q", q) + kv_cache_suffix(kv_cache, q.dtype)


def class_key_split(warps: int, decode_key_split: int) -> int:
    """Key split of a row class's kernel: only the 1-warp (decode) class splits keys."""
    return decode_key_split if warps == 1 else 1


class AttentionKeySplitError(KernelArgumentError):
    """decode_key_split is not one the kernels have, or not the one the plan was made for."""


@dataclass(frozen=True)
class AttentionPlan:
    launches: tuple[AttentionLaunch, ...]
    num_partitions: int

    def num_counters(self, num_kv_heads: int) -> int:
        """Arrival counters a split launch uses: one per (grid x, kv head) of the widest."""
        return max((launch.grid_x for launch in self.launches), default=0) * num_kv_heads


def row_classes(*, transposed_decode: bool, hopper: bool) -> tuple[RowClass, ...]:
    classes = TRANSPOSED_ROW_CLASSES if transposed_decode else ROW_CLASSES
    return hopper_row_classes(classes) if hopper else classes


def plan_attention(*, query_lens: Sequence[int], max_seq_len: int, num_heads: int,
                   num_kv_heads: int, num_sms: int, resident_ctas: Mapping[int | str, int],
                   decode_key_split: int = DEFAULT_DECODE_KEY_SPLIT,
                   transposed_decode: bool = False, extras: bool = False,
                   hopper: bool = False) -> AttentionPlan:
    """resident_ctas: by RowClass.key (row warps, "1t" or "hopper"), how many CTAs of the
    kernel that class launches (with decode_key_split for the 1-warp classes, the _extras
    build with extras) one SM holds at once. hopper: the longest sequences' rows run on the
    Hopper kernel (ops/cuda_attention_hopper.py)."""
    check_decode_key_split(decode_key_split)
    classes = row_classes(transposed_decode=transposed_decode, hopper=hopper)
    group = num_heads // num_kv_heads
    num_tokens = sum(query_lens)
    tiles = {row_class.key: 0 for row_class in classes}
    for query_len in query_lens:
        rows = query_len * group
        for row_class in classes:
            if row_class.min_rows <= rows <= row_class.max_rows:
                tiles[row_class.key] += -(-rows // row_class.rows_per_cta)
    launches = tuple(
        AttentionLaunch(warps=c.warps, min_rows=c.min_rows, max_rows=c.max_rows,
                        grid_x=num_tokens * group // c.rows_per_cta + len(query_lens),
                        key_split=class_key_split(c.warps, decode_key_split),
                        transposed=c.transposed, extras=extras, hopper=c.hopper)
        for c in classes if tiles[c.key])
    if not launches:
        return AttentionPlan(launches=(), num_partitions=1)
    busiest = max(tiles, key=tiles.__getitem__)
    slots = num_sms * resident_ctas[busiest]
    most = max(1, min(MAX_PARTITIONS, -(-max_seq_len // MIN_PARTITION_LEN)))
    return AttentionPlan(launches=launches, num_partitions=_partitions_for(
        tiles[busiest] * num_kv_heads, slots=slots, most=most))


def _partitions_for(ctas: int, *, slots: int, most: int) -> int:
    """Fewest partitions (up to `most`) whose CTAs fill their last wave well; else the
    count with the best fill. A wave is `slots` CTAs running at once on the whole GPU."""
    best, best_fill = 1, 0.0
    for parts in range(1, most + 1):
        total = ctas * parts
        fill = total / (-(-total // slots) * slots)
        if fill >= GOOD_WAVE_FILL:
            return parts
        if fill > best_fill + 1e-9:
            best, best_fill = parts, fill
    return best


def check_decode_key_split(decode_key_split: int) -> None:
    if decode_key_split not in DECODE_KEY_SPLITS:
        raise AttentionKeySplitError(f"decode_key_split must be one of {DECODE_KEY_SPLITS}, "
                                     f"got {decode_key_split!r}")


def plan_for(lib: KernelLibrary, q: torch.Tensor, kv_cache: torch.Tensor,
             metadata: AttentionMetadata, *, decode_key_split: int | None = None,
             transposed_decode: bool | None = None, extras: bool = False) -> AttentionPlan:
    """The plan paged_attention_into makes for these inputs on this GPU (decode_key_split
    None: DEFAULT_DECODE_KEY_SPLIT; transposed_decode None: on for an e4m3 cache; extras: for
    the kernels that soft-cap and add ALiBi biases)."""
    num_heads, head_dim = q.shape[1:]
    suffix = kernel_suffix(q, kv_cache)
    if transposed_decode is None:
        transposed_decode = is_e4m3_cache(suffix)
    if decode_key_split is None:
        decode_key_split = DEFAULT_DECODE_KEY_SPLIT
    check_decode_key_split(decode_key_split)
    hopper = hopper_attention_fits(lib.arch, suffix=suffix, head_dim=head_dim,
                                   block_size=kv_cache.shape[2], extras=extras)
    resident = {}
    for c in row_classes(transposed_decode=transposed_decode, hopper=hopper):
        launch = AttentionLaunch(warps=c.warps, min_rows=c.min_rows, max_rows=c.max_rows,
                                 grid_x=0, key_split=class_key_split(c.warps, decode_key_split),
                                 transposed=c.transposed, extras=extras, hopper=c.hopper)
        resident[c.key] = lib.max_active_ctas(
            launch.module(suffix=suffix, head_dim=head_dim),
            launch.kernel(suffix=suffix, head_dim=head_dim), launch.threads_for(suffix),
            launch.smem_bytes(suffix=suffix, head_dim=head_dim))
    return plan_attention(query_lens=metadata.query_lens_host, max_seq_len=metadata.max_seq_len,
                          num_heads=num_heads, num_kv_heads=kv_cache.shape[3],
                          num_sms=lib.num_sms, resident_ctas=resident,
                          decode_key_split=decode_key_split, transposed_decode=transposed_decode,
                          extras=extras, hopper=hopper)


def check_attention_args(lib: KernelLibrary, out: torch.Tensor, q: torch.Tensor,
                         kv_cache: torch.Tensor, metadata: AttentionMetadata) -> None:
    check_device(lib.device, q=q, kv_cache=kv_cache, out=out,
                 query_start_loc=metadata.query_start_loc, seq_lens=metadata.seq_lens,
                 block_tables=metadata.block_tables)
    kernel_suffix(q, kv_cache)
    check_dtype(q.dtype, out=out)
    check_dtype(torch.int32, query_start_loc=metadata.query_start_loc,
                seq_lens=metadata.seq_lens, block_tables=metadata.block_tables)
    check_shape("q", q, (metadata.num_tokens, None, None))
    num_heads, head_dim = q.shape[1:]
    if head_dim not in ATTENTION_HEAD_DIMS:
        raise KernelArgumentError(f"attention supports head_dim {ATTENTION_HEAD_DIMS}, "
                                  f"got {head_dim}")
    check_shape("kv_cache", kv_cache, (2, None, None, None, head_dim))
    num_kv_heads = kv_cache.shape[3]
    if num_heads % num_kv_heads:
        raise KernelArgumentError(f"{num_heads} query heads cannot share {num_kv_heads} kv heads")
    check_shape("out", out, tuple(q.shape))
    num_seqs = metadata.num_seqs
    check_shape("query_start_loc", metadata.query_start_loc, (num_seqs + 1,))
    check_shape("seq_lens", metadata.seq_lens, (num_seqs,))
    check_shape("block_tables", metadata.block_tables, (num_seqs, None))
    if len(metadata.query_lens_host) != num_seqs or sum(metadata.query_lens_host) != q.shape[0]:
        raise KernelArgumentError("metadata.query_lens_host must list one length per sequence "
                                  f"summing to {q.shape[0]} tokens")
    check_contiguous(q=q, kv_cache=kv_cache, out=out, query_start_loc=metadata.query_start_loc,
                     seq_lens=metadata.seq_lens, block_tables=metadata.block_tables)


def paged_attention_into(lib: KernelLibrary, out: torch.Tensor, q: torch.Tensor,
                         kv_cache: torch.Tensor, metadata: AttentionMetadata, scale: float, *,
                         workspace: AttentionWorkspace | None = None,
                         plan: AttentionPlan | None = None,
                         decode_key_split: int | None = None,
                         transposed_decode: bool | None = None, softcap: float | None = None,
                         alibi_slopes: torch.Tensor | None = None,
                         window: int | None = None) -> AttentionPlan:
    """Causal attention of q [T, H, D] over the paged cache into out; returns the plan used.
    decode_key_split=2 runs the 1-warp (decode) row class on the w1k2 kernel, 1 on w1, None
    as plan_for picks; a given plan must have been made with the value given. softcap,
    alibi_slopes (float32 [H], on the device) and window as in Ops.attention: they run the
    _extras kernels, so a given plan must come from plan_for(..., extras=True)."""
    check_attention_args(lib, out, q, kv_cache, metadata)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[3]
    suffix = kernel_suffix(q, kv_cache)
    scores = score_args(lib.device, num_heads=num_heads, scale=scale, softcap=softcap,
                        alibi_slopes=alibi_slopes, window=window)
    extras = wants_extras(softcap, alibi_slopes, window)
    if plan is None:
        plan = plan_for(lib, q, kv_cache, metadata, decode_key_split=decode_key_split,
                        transposed_decode=transposed_decode, extras=extras)
    check_plan_extras(plan.launches, extras)
    if decode_key_split is not None:
        check_decode_key_split(decode_key_split)
        check_plan_key_split(plan, decode_key_split)
    if num_tokens == 0:
        return plan
    parts = partials_args(lib, plan, workspace, num_tokens=num_tokens, num_heads=num_heads,
                           num_kv_heads=num_kv_heads, head_dim=head_dim, device=q.device)
    common = (q.data_ptr(), kv_cache.data_ptr(), metadata.query_start_loc.data_ptr(),
              metadata.seq_lens.data_ptr(), metadata.block_tables.data_ptr(),
              np.int32(metadata.num_seqs), np.int32(num_tokens), np.int32(num_heads),
              np.int32(num_kv_heads), np.int32(kv_cache.shape[2]),
              np.int32(metadata.block_tables.shape[1]),
              np.int64(kv_cache.shape[1] * kv_cache.shape[2]), *scores,
              np.int32(plan.num_partitions))
    for launch in plan.launches:
        lib.launch(launch.module(suffix=suffix, head_dim=head_dim),
                   launch.kernel(suffix=suffix, head_dim=head_dim),
                   grid=(launch.grid_x * num_kv_heads, 1, plan.num_partitions),
                   block=(launch.threads_for(suffix),),
                   args=(out.data_ptr(), *parts, *common, np.int32(launch.min_rows),
                         np.int32(launch.max_rows)),
                   shared_bytes=launch.smem_bytes(suffix=suffix, head_dim=head_dim))
    return plan


def check_plan_key_split(plan: AttentionPlan, decode_key_split: int) -> None:
    """A plan sized for one kernel's occupancy must not launch another."""
    for launch in plan.launches:
        expected = class_key_split(launch.warps, decode_key_split)
        if launch.key_split != expected:
            raise AttentionKeySplitError(
                f"the plan runs {launch.warps}-warp rows with key_split {launch.key_split}, "
                f"but decode_key_split={decode_key_split} was asked for; make the plan with "
                f"plan_for(..., decode_key_split={decode_key_split})")
