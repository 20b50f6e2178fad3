"""The block manager's bookkeeping rules, checked from its raw state.

Kept apart from block_manager.py so the checks read as a list of rules, and so they run on
plain containers (tests and the state machine call them after every operation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence

from server.kvcache.prefix_hash import BlockHash


class BlockInvariantError(RuntimeError):
    """The block manager's state broke one of its rules (a bug, never a user error)."""


def _require(ok: bool, message: str) -> None:
    # not `assert`: these checks must also run under python -O
    if not ok:
        raise BlockInvariantError(message)


def check_block_invariants(*, num_blocks: int, ref_counts: Sequence[int],
                           block_hashes: Sequence[BlockHash | None],
                           cached: Mapping[BlockHash, int], empty: Collection[int],
                           evictable: Collection[int], tables: Mapping[str, Sequence[int]],
                           enable_prefix_caching: bool) -> None:
    _check_tables(num_blocks, ref_counts, tables)
    _check_free_lists(num_blocks, ref_counts, block_hashes, empty, evictable)
    _check_hash_index(ref_counts, block_hashes, cached, evictable)
    if not enable_prefix_caching:
        _require(not cached and not evictable and not any(h is not None for h in block_hashes),
                 "prefix caching is off but blocks hold hashes")


def _check_tables(num_blocks: int, ref_counts: Sequence[int],
                  tables: Mapping[str, Sequence[int]]) -> None:
    _require(len(ref_counts) == num_blocks, "one ref count per block")
    owners: Counter[int] = Counter()
    for req_id, block_ids in tables.items():
        _require(len(set(block_ids)) == len(block_ids),
                 f"request {req_id!r} lists a block twice: {list(block_ids)}")
        for block_id in block_ids:
            _require(0 <= block_id < num_blocks, f"request {req_id!r} holds bad block {block_id}")
        owners.update(block_ids)
    for block_id in range(num_blocks):
        _require(ref_counts[block_id] == owners[block_id],
                 f"block {block_id}: ref count {ref_counts[block_id]} but "
                 f"{owners[block_id]} owners")


def _check_free_lists(num_blocks: int, ref_counts: Sequence[int],
                      block_hashes: Sequence[BlockHash | None], empty: Collection[int],
                      evictable: Collection[int]) -> None:
    empty_set, evictable_set = set(empty), set(evictable)
    _require(len(empty_set) == len(empty), "a block is twice in the empty list")
    _require(len(evictable_set) == len(evictable), "a block is twice in the evictable list")
    _require(not empty_set & evictable_set, "a block is both empty and evictable")
    free = empty_set | evictable_set
    num_used = 0
    for block_id in range(num_blocks):
        owned = ref_counts[block_id] > 0
        _require(owned != (block_id in free),
                 f"block {block_id} must be free xor owned (ref count {ref_counts[block_id]})")
        num_used += owned
    _require(len(free) + num_used == num_blocks,
             f"free {len(free)} + used {num_used} != total {num_blocks}")
    for block_id in empty_set:
        _require(block_hashes[block_id] is None, f"empty block {block_id} still has a hash")
    for block_id in evictable_set:
        _require(block_hashes[block_id] is not None, f"evictable block {block_id} has no hash")


def _check_hash_index(ref_counts: Sequence[int], block_hashes: Sequence[BlockHash | None],
                      cached: Mapping[BlockHash, int], evictable: Collection[int]) -> None:
    evictable_set = set(evictable)
    for block_hash, block_id in cached.items():
        _require(block_hashes[block_id] == block_hash,
                 f"the hash index points at block {block_id}, which holds other content")
        _require(ref_counts[block_id] > 0 or block_id in evictable_set,
                 f"the hash index points at block {block_id}, which is neither owned "
                 f"nor evictable")
    for block_id, block_hash in enumerate(block_hashes):
        if block_hash is not None:
            _require(cached.get(block_hash) == block_id,
                     f"block {block_id} has a hash the index does not map back to it")
