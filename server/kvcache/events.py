"""Plain records of prefix-cache changes, collected by the block manager for a publisher to drain.

The block manager appends a record whenever the set of block hashes it can hand out as a
prefix hit changes:

    StoredBlock    a computed full block's hash was registered (cache_computed_blocks)
    RemovedBlock   an evictable block's hash was forgotten: evicted for reuse, or dropped
                   by reset_prefix_cache

so that replaying the records in order onto an empty set gives exactly the hashes the
manager holds. Whoever publishes them (server/engine/service/kv_events.py, vLLM's KV-event wire
format) drains the recorder after each engine step; nothing here knows about sockets.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.kvcache.prefix_hash import BlockHash


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """parent_hash: the hash of the block before it in its chain; None for a chain's first
    block (a salted chain's too: its salt is part of the hash, not a parent block)."""

    block_hash: BlockHash
    parent_hash: BlockHash | None
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RemovedBlock:
    block_hash: BlockHash


KVCacheRecord = StoredBlock | RemovedBlock


class KVEventRecorder:
    """The records since the last drain(), oldest first."""

    def __init__(self) -> None:
        self._records: list[KVCacheRecord] = []

    def stored(self, block_hash: BlockHash, parent_hash: BlockHash | None,
               token_ids: tuple[int, ...]) -> None:
        self._records.append(StoredBlock(block_hash, parent_hash, token_ids))

    def removed(self, block_hash: BlockHash) -> None:
        self._records.append(RemovedBlock(block_hash))

    def drain(self) -> list[KVCacheRecord]:
        records, self._records = self._records, []
        return records
