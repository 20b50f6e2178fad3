"""Paged KV block tables with reference counts and automatic prefix caching.

Every block is in exactly one of three places:

    owned      ref_count > 0, listed in the tables of ref_count requests
    evictable  ref_count == 0 but still holds a cached hash: reusable by a prefix hit
               until evicted, least recently freed first, when a fresh block is needed
    empty      ref_count == 0, no hash: handed out before any evictable block

num_free_blocks counts evictable and empty blocks alike: both can be given to a request.

A request's table, with its prefix-cache bookkeeping:

    # | hit blocks (shared) | blocks this request computed | last block, maybe partial |
    # |<-- num_hashed_blocks: full and registered -->|

When every layer attends within a sliding window, the blocks whose keys slid out of it go
back to the pool (release_before); the table keeps one entry per block of positions, the
released ones aliasing the first block still held (attention masks those keys, and so
reads only the request's own memory there):

    # | released: alias of block h | h (first held) | ... | last block |
    # |<-- num_released_blocks -->|

Given a KVEventRecorder, the manager records each hash it registers or forgets
(server/kvcache/events.py), for publishing as KV-cache events.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from server.kvcache.events import KVEventRecorder
from server.kvcache.invariants import check_block_invariants
from server.kvcache.prefix_hash import BlockHash, hash_block_tokens, hash_full_blocks


@dataclass(frozen=True)
class BlockTable:
    """A read-only view of one request's blocks; num_cached_tokens were prefix-cache hits."""

    block_ids: tuple[int, ...]
    num_cached_tokens: int

    @property
    def num_blocks(self) -> int:
        return len(self.block_ids)


class NoFreeBlocksError(RuntimeError):
    """Not enough free blocks; ask can_allocate / can_append_slots first."""

    def __init__(self, num_needed: int, num_free: int) -> None:
        super().__init__(f"need {num_needed} free KV blocks, only {num_free} free")
        self.num_needed = num_needed
        self.num_free = num_free


class UnknownRequestError(LookupError):
    """The block manager holds no blocks for this req_id."""


class DuplicateRequestError(ValueError):
    """allocate() for a req_id that already holds blocks."""


@dataclass
class _RequestBlocks:
    block_ids: list[int]  # grows at its end; leading entries may be released
    num_cached_tokens: int
    num_hashed_blocks: int  # leading full blocks whose hash is known (hit or registered)
    last_hash: BlockHash | None  # hash of block num_hashed_blocks - 1
    num_released_blocks: int = 0  # leading entries given back (out of the sliding window)
    _view: BlockTable | None = None

    @property
    def held_block_ids(self) -> list[int]:
        return self.block_ids[self.num_released_blocks:]

    def view(self) -> BlockTable:
        """The same BlockTable object until the table grows or releases blocks: a decode
        step's tables are built once per block, and consumers can tell an unchanged table
        by identity."""
        if self._view is None or len(self._view.block_ids) != len(self.block_ids):
            self._view = BlockTable(tuple(self.block_ids), self.num_cached_tokens)
        return self._view


@dataclass(frozen=True)
class _PrefixMatch:
    block_ids: list[int]
    last_hash: BlockHash | None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *,
                 enable_prefix_caching: bool = True,
                 events: KVEventRecorder | None = None) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, "
                             f"got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._block_hashes: list[BlockHash | None] = [None] * num_blocks
        self._cached: dict[BlockHash, int] = {}  # hash -> block holding that content
        self._empty: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._requests: dict[str, _RequestBlocks] = {}
        self._events = events  # told of every hash registered or forgotten
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

    # ---- figures -------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._empty) + len(self._evictable)

    @property
    def num_evictable_blocks(self) -> int:
        """Free blocks that still hold a cached prefix (reusable until evicted)."""
        return len(self._evictable)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def has_request(self, req_id: str) -> bool:
        return req_id in self._requests

    def get_block_table(self, req_id: str) -> BlockTable:
        return self._get(req_id).view()

    def cached_block_hashes(self) -> set[BlockHash]:
        """The hashes a new request can hit now (in use or evictable)."""
        return set(self._cached)

    # ---- new requests ----------------------------------------------------------------------

    def num_cached_prefix_tokens(self, token_ids: Sequence[int], *, salt: int = 0,
                                 reuse_prefix: bool = True) -> int:
        """How many leading tokens a new request with these tokens would find cached.
        salt: KV computed differently from the same tokens (Phi-3's long rotary table)
        is cached apart, under its own salt. reuse_prefix=False: the request takes no hit
        (it needs every position computed, e.g. for its prompt logprobs); 0."""
        return len(self._match_prefix(token_ids, salt, reuse_prefix).block_ids) \
            * self.block_size

    def can_allocate(self, token_ids: Sequence[int], num_tokens: int, *,
                     salt: int = 0, reuse_prefix: bool = True) -> bool:
        """Whether allocate(req_id, token_ids, num_tokens, ...) would succeed now."""
        match = self._match_prefix(token_ids, salt, reuse_prefix)
        return self._num_blocks_to_take(match, num_tokens) <= self.num_free_blocks

    def allocate(self, req_id: str, token_ids: Sequence[int], num_tokens: int, *,
                 salt: int = 0, reuse_prefix: bool = True) -> BlockTable:
        """Give a new request blocks covering its first num_tokens positions, reusing the
        longest cached prefix of token_ids (under the same salt) unless not reuse_prefix.
        Either way its full blocks join the prefix cache once computed. Raises
        NoFreeBlocksError when they do not fit."""
        if req_id in self._requests:
            raise DuplicateRequestError(f"request {req_id!r} already holds KV blocks")
        match = self._match_prefix(token_ids, salt, reuse_prefix)
        num_to_take = self._num_blocks_to_take(match, num_tokens)
        if num_to_take > self.num_free_blocks:
            raise NoFreeBlocksError(num_to_take, self.num_free_blocks)
        # take the hits first, so making room for the new blocks cannot evict them
        for block_id in match.block_ids:
            self._ref_counts[block_id] += 1
            self._evictable.pop(block_id, None)
        num_new = max(self.num_blocks_for(num_tokens) - len(match.block_ids), 0)
        block_ids = match.block_ids + [self._take_free_block() for _ in range(num_new)]
        num_cached_tokens = len(match.block_ids) * self.block_size
        if self.enable_prefix_caching and reuse_prefix:  # else it asked the cache nothing
            self.prefix_cache_queries += len(token_ids)
            self.prefix_cache_hits += num_cached_tokens
        blocks = _RequestBlocks(block_ids, num_cached_tokens, len(match.block_ids),
                                match.last_hash)
        self._requests[req_id] = blocks
        return blocks.view()

    # ---- growing, caching and freeing ------------------------------------------------------

    def can_append_slots(self, req_id: str, num_tokens: int) -> bool:
        """Whether the request's table can grow to cover num_tokens positions now."""
        return self._num_blocks_to_append(req_id, num_tokens) <= self.num_free_blocks

    def append_slots(self, req_id: str, num_tokens: int) -> BlockTable:
        """Grow the request's table to cover num_tokens positions (never shrinks it)."""
        table = self.try_append_slots(req_id, num_tokens)
        if table is None:
            num_new = self._num_blocks_to_append(req_id, num_tokens)
            raise NoFreeBlocksError(num_new, self.num_free_blocks)
        return table

    def try_append_slots(self, req_id: str, num_tokens: int) -> BlockTable | None:
        """append_slots, or None (nothing changed) when the free blocks do not suffice:
        the scheduler's per-request call each step, so the common case (no new block)
        costs one lookup."""
        blocks = self._get(req_id)
        num_new = -(-num_tokens // self.block_size) - len(blocks.block_ids)
        if num_new > 0:
            if num_new > len(self._empty) + len(self._evictable):
                return None
            blocks.block_ids.extend([self._take_free_block() for _ in range(num_new)])
        return blocks.view()

    def release_before(self, req_id: str, position: int) -> None:
        """Give back the request's leading blocks that hold only positions before
        `position` (keys no layer's window reaches any more); the last block is always
        kept."""
        blocks = self._get(req_id)
        num_release = min(position // self.block_size, len(blocks.block_ids) - 1)
        if num_release <= blocks.num_released_blocks:
            return
        for block_id in blocks.block_ids[blocks.num_released_blocks:num_release]:
            self._drop_owner(block_id)
        blocks.block_ids[:num_release] = [blocks.block_ids[num_release]] * num_release
        blocks.num_released_blocks = num_release
        blocks._view = None

    def cache_computed_blocks(self, req_id: str, token_ids: Sequence[int],
                              num_computed_tokens: int) -> None:
        """Register the request's full blocks whose KV is now computed in the prefix cache.
        token_ids are the request's tokens (at least num_computed_tokens of them)."""
        blocks = self._get(req_id)
        if not self.enable_prefix_caching:
            return
        num_full = min(num_computed_tokens // self.block_size, len(blocks.block_ids))
        new_hashes = hash_full_blocks(token_ids, self.block_size,
                                      start_block=blocks.num_hashed_blocks,
                                      num_blocks=num_full - blocks.num_hashed_blocks,
                                      parent_hash=blocks.last_hash)
        parent_hash = blocks.last_hash
        for index, block_hash in enumerate(new_hashes, start=blocks.num_hashed_blocks):
            # a block already given back (async scheduling runs a step ahead) is skipped;
            # identical content computed twice (two requests in one step) stays uncached
            # in the second block: the index keeps one block per hash
            block_id = blocks.block_ids[index]
            if (index >= blocks.num_released_blocks and block_hash not in self._cached
                    and self._block_hashes[block_id] is None):
                self._cached[block_hash] = block_id
                self._block_hashes[block_id] = block_hash
                if self._events is not None:
                    self._events.stored(
                        block_hash, None if index == 0 else parent_hash,
                        tuple(token_ids[index * self.block_size:(index + 1) * self.block_size]))
            parent_hash = block_hash
        if new_hashes:
            blocks.num_hashed_blocks = num_full
            blocks.last_hash = new_hashes[-1]

    def free(self, req_id: str) -> None:
        """Drop the request's table. A block returns to the pool when its last owner frees
        it; cached blocks stay reusable. The tail goes first, so it is evicted first: a
        prefix is useless without its head."""
        blocks = self._requests.pop(req_id, None)
        if blocks is None:
            raise UnknownRequestError(f"request {req_id!r} holds no KV blocks")
        for block_id in reversed(blocks.held_block_ids):
            self._drop_owner(block_id)

    def reset_prefix_cache(self) -> int:
        """Forget every evictable cached block (e.g. after weights change); blocks in use
        keep their hashes. Returns how many blocks were forgotten."""
        forgotten = list(self._evictable)
        for block_id in forgotten:
            self._forget_hash(block_id)
            self._empty.append(block_id)
        self._evictable.clear()
        return len(forgotten)

    def check_invariants(self) -> None:
        """Raise BlockInvariantError if the bookkeeping is inconsistent."""
        check_block_invariants(
            num_blocks=self.num_blocks, ref_counts=self._ref_counts,
            block_hashes=self._block_hashes, cached=self._cached, empty=self._empty,
            evictable=self._evictable,
            tables={req_id: b.held_block_ids for req_id, b in self._requests.items()},
            enable_prefix_caching=self.enable_prefix_caching)

    # ---- internals -------------------------------------------------------------------------

    def _get(self, req_id: str) -> _RequestBlocks:
        blocks = self._requests.get(req_id)
        if blocks is None:
            raise UnknownRequestError(f"request {req_id!r} holds no KV blocks")
        return blocks

    def _match_prefix(self, token_ids: Sequence[int], salt: int,
                      reuse_prefix: bool = True) -> _PrefixMatch:
        """The longest run of cached full blocks at the head of token_ids (none unless
        reuse_prefix). At least one token is always left to compute, so the model has a
        position to produce logits at: the hit is capped at num_tokens - 1, rounded down
        to whole blocks."""
        block_ids: list[int] = []
        # a salted chain starts from a pseudo block no real block can equal (one negative
        # token), so it shares no hash with the unsalted chains
        last_hash = None if salt == 0 else hash_block_tokens(None, (-1 - salt,))
        if not self.enable_prefix_caching or not reuse_prefix:
            return _PrefixMatch(block_ids, last_hash)
        for index in range((len(token_ids) - 1) // self.block_size):
            block_hash = hash_block_tokens(
                last_hash, token_ids[index * self.block_size:(index + 1) * self.block_size])
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            block_ids.append(block_id)
            last_hash = block_hash
        return _PrefixMatch(block_ids, last_hash)

    def _num_blocks_to_take(self, match: _PrefixMatch, num_tokens: int) -> int:
        """Free blocks an allocation consumes: new ones, plus hits that are now evictable."""
        num_new = max(self.num_blocks_for(num_tokens) - len(match.block_ids), 0)
        num_revived = sum(1 for b in match.block_ids if self._ref_counts[b] == 0)
        return num_new + num_revived

    def _num_blocks_to_append(self, req_id: str, num_tokens: int) -> int:
        return max(self.num_blocks_for(num_tokens) - len(self._get(req_id).block_ids), 0)

    def _drop_owner(self, block_id: int) -> None:
        """One owner fewer; with none left the block is free (evictable while cached)."""
        self._ref_counts[block_id] -= 1
        if self._ref_counts[block_id] > 0:
            return
        if self._block_hashes[block_id] is not None:
            self._evictable[block_id] = None
        else:
            self._empty.append(block_id)

    def _take_free_block(self) -> int:
        if self._empty:
            block_id = self._empty.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)  # least recently freed
            self._forget_hash(block_id)
        self._ref_counts[block_id] = 1
        return block_id

    def _forget_hash(self, block_id: int) -> None:
        block_hash = self._block_hashes[block_id]
        self._block_hashes[block_id] = None
        if block_hash is not None and self._cached.get(block_hash) == block_id:
            del self._cached[block_hash]
            if self._events is not None:
                self._events.removed(block_hash)
