"""A Hypothesis state machine over BlockManager: random allocate / append / compute /
release (sliding window) / free with shared prompt prefixes, checking the manager's own
invariants after every step and its answers against a shadow KV cache (a prefix hit must
hand out blocks holding exactly the tokens the new request has at those positions), and
its KV-event records replayed onto a set against the hashes it holds."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from server.kvcache.block_manager import BlockManager, NoFreeBlocksError
from server.kvcache.events import KVEventRecorder, StoredBlock
from server.kvcache.prefix_hash import hash_block_tokens

# a few shared heads so requests often share (and sometimes nearly share) prefixes
PREFIXES = ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [5, 5, 5, 5, 5, 5], [])


@dataclass
class Shadow:
    token_ids: list[int]
    num_covered: int  # positions the block table covers
    num_computed: int  # positions whose KV is written


class BlockManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.manager: BlockManager | None = None
        self.requests: dict[str, Shadow] = {}
        self.kv: dict[int, tuple[int, int]] = {}  # slot -> (position, token)
        self.next_id = 0
        self.seen_token_ids: list[tuple[int, ...]] = []
        self.events = KVEventRecorder()
        self.published: set[bytes] = set()  # the hashes the records so far say are cached

    @initialize(num_blocks=st.integers(1, 12), block_size=st.sampled_from([1, 2, 4]),
                enable_prefix_caching=st.booleans())
    def build(self, num_blocks, block_size, enable_prefix_caching):
        self.manager = BlockManager(num_blocks, block_size,
                                    enable_prefix_caching=enable_prefix_caching,
                                    events=self.events)

    def _slot(self, req_id: str, position: int) -> int:
        table = self.manager.get_block_table(req_id).block_ids
        size = self.manager.block_size
        return table[position // size] * size + position % size

    @rule(prefix=st.sampled_from(PREFIXES), suffix=st.lists(st.integers(0, 3), max_size=10),
          data=st.data())
    def allocate(self, prefix, suffix, data):
        self._allocate(prefix + suffix, data)

    @precondition(lambda self: self.seen_token_ids)
    @rule(data=st.data())
    def allocate_seen_tokens(self, data):
        """A request repeating an earlier one's tokens exactly: full hits, capped."""
        self._allocate(list(data.draw(st.sampled_from(self.seen_token_ids))), data)

    def _allocate(self, token_ids, data):
        if not token_ids:
            return
        self.seen_token_ids.append(tuple(token_ids))
        num_tokens = data.draw(st.integers(1, len(token_ids)), label="num_tokens")
        req_id = f"r{self.next_id}"
        self.next_id += 1
        expected_cached = self.manager.num_cached_prefix_tokens(token_ids)
        if not self.manager.can_allocate(token_ids, num_tokens):
            free_before = self.manager.num_free_blocks
            try:
                self.manager.allocate(req_id, token_ids, num_tokens)
            except NoFreeBlocksError:
                assert self.manager.num_free_blocks == free_before
                return
            raise AssertionError("allocate succeeded although can_allocate said no")
        table = self.manager.allocate(req_id, token_ids, num_tokens)
        size = self.manager.block_size
        assert table.num_cached_tokens == expected_cached
        assert table.num_cached_tokens % size == 0
        assert table.num_cached_tokens <= len(token_ids) - 1
        assert len(table.block_ids) == max(-(-num_tokens // size), table.num_cached_tokens // size)
        self.requests[req_id] = Shadow(token_ids, max(num_tokens, table.num_cached_tokens),
                                       table.num_cached_tokens)
        for position in range(table.num_cached_tokens):
            found = self.kv.get(self._slot(req_id, position))
            assert found == (position, token_ids[position]), \
                f"{req_id} hit a block holding {found} at position {position}"

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), extra_tokens=st.lists(st.integers(0, 3), max_size=6))
    def append(self, data, extra_tokens):
        req_id = data.draw(st.sampled_from(sorted(self.requests)), label="req_id")
        shadow = self.requests[req_id]
        shadow.token_ids += extra_tokens
        num_tokens = data.draw(st.integers(shadow.num_covered, len(shadow.token_ids)),
                               label="num_tokens")
        if self.manager.can_append_slots(req_id, num_tokens):
            table = self.manager.append_slots(req_id, num_tokens)
            assert len(table.block_ids) * self.manager.block_size >= num_tokens
            shadow.num_covered = num_tokens
        else:
            try:
                self.manager.append_slots(req_id, num_tokens)
            except NoFreeBlocksError:
                return
            raise AssertionError("append_slots succeeded although can_append_slots said no")

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def compute(self, data):
        """Play the model: write KV for covered positions, then let the manager cache them."""
        req_id = data.draw(st.sampled_from(sorted(self.requests)), label="req_id")
        shadow = self.requests[req_id]
        upto = data.draw(st.integers(shadow.num_computed, shadow.num_covered), label="upto")
        for position in range(shadow.num_computed, upto):
            self.kv[self._slot(req_id, position)] = (position, shadow.token_ids[position])
        shadow.num_computed = upto
        self.manager.cache_computed_blocks(req_id, shadow.token_ids, upto)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def release_out_of_window(self, data):
        """A sliding window passed some computed positions: their whole blocks go back."""
        req_id = data.draw(st.sampled_from(sorted(self.requests)), label="req_id")
        shadow = self.requests[req_id]
        position = data.draw(st.integers(0, shadow.num_computed), label="position")
        before = self.manager.get_block_table(req_id).block_ids
        self.manager.release_before(req_id, position)
        after = self.manager.get_block_table(req_id).block_ids
        assert len(after) == len(before)  # one entry per block of positions, still
        assert after[position // self.manager.block_size:] == \
            before[position // self.manager.block_size:]

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def free(self, data):
        req_id = data.draw(st.sampled_from(sorted(self.requests)), label="req_id")
        self.seen_token_ids.append(tuple(self.requests.pop(req_id).token_ids))
        self.manager.free(req_id)

    @rule()
    def reset_prefix_cache(self):
        self.manager.reset_prefix_cache()

    @invariant()
    def manager_invariants_hold(self):
        if self.manager is None:
            return
        self.manager.check_invariants()
        owned = {b for r in self.requests for b in self.manager.get_block_table(r).block_ids}
        assert self.manager.num_free_blocks == self.manager.num_blocks - len(owned)
        assert 0.0 <= self.manager.usage <= 1.0
        assert self.manager.num_evictable_blocks <= self.manager.num_free_blocks
        assert self.manager.prefix_cache_hits <= self.manager.prefix_cache_queries

    @invariant()
    def event_records_replay_to_the_cached_hashes(self):
        if self.manager is None:
            return
        for record in self.events.drain():
            if isinstance(record, StoredBlock):
                assert record.block_hash not in self.published, "stored twice"
                assert len(record.token_ids) == self.manager.block_size
                # the record names the block's content and parent truly (no salt here)
                assert hash_block_tokens(record.parent_hash, record.token_ids) == \
                    record.block_hash
                self.published.add(record.block_hash)
            else:
                self.published.remove(record.block_hash)  # KeyError: never stored
        assert self.published == self.manager.cached_block_hashes()


BlockManagerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestBlockManagerStateMachine = BlockManagerMachine.TestCase
