"""Shared memory of a paged attention CTA (csrc/paged_attention.cuh's SmemLayout), which the
launch must pass where it is past the static limit: the kernels at head_dim 256 over a 16-bit
cache, and the 2- and 4-warp ones over an e4m3 cache, declare theirs `extern __shared__`.
tests/unit/test_kernels_compile.py checks these sizes against ptxas for every kernel that
declares its shared memory statically.

    # | K/V stage 0 | K/V stage 1 |            Q tile in stage 1 (or after stage 0 if larger)
    # | K/V stage 0 | K/V stage 1 | Q tile |   Q kept: 16-row tiles at head_dim 256
"""

from __future__ import annotations

KEY_TILE = 32  # keys per K/V tile (kBlockN, csrc/attention_common.cuh)
STATIC_SMEM_LIMIT = 48 * 1024  # kStaticSmemLimit: past it a kernel's shared memory is dynamic
Q_KEPT_HEAD_DIM = 256  # from here 16-row tiles read Q from shared memory all along


def cta_smem_bytes(*, head_dim: int, e4m3_cache: bool, rows: int, transposed: bool) -> int:
    """A stage is KEY_TILE K rows and as many V rows, each padded to an odd count of 16
    bytes (attention_fragments.cuh's KvRowPad); a Q row is padded by 16 bytes (QRow).
    Transposed tiles keep Q in registers at every head_dim."""
    row = head_dim * (1 if e4m3_cache else 2)
    stage = 2 * KEY_TILE * (row + (16 if row // 16 % 2 == 0 else 32))
    q_tile = rows * (head_dim + 8) * 2
    if not transposed and head_dim >= Q_KEPT_HEAD_DIM:
        return 2 * stage + q_tile
    return stage + max(stage, q_tile)


def dynamic_smem_bytes(*, head_dim: int, e4m3_cache: bool, rows: int, transposed: bool) -> int:
    """What a launch passes as dynamic shared memory: the CTA's where it is past the static
    limit, else 0 (the kernel declares it statically)."""
    size = cta_smem_bytes(head_dim=head_dim, e4m3_cache=e4m3_cache, rows=rows,
                          transposed=transposed)
    return size if size > STATIC_SMEM_LIMIT else 0
