"""BlockManager: block tables, reference counts, prefix caching, eviction, invariants."""

from __future__ import annotations

import pytest

from server.kvcache.block_manager import (BlockManager, BlockTable, DuplicateRequestError,
                                          NoFreeBlocksError, UnknownRequestError)
from server.kvcache.invariants import BlockInvariantError
from server.kvcache.prefix_hash import hash_block_tokens


def make_manager(*, num_blocks: int = 8, block_size: int = 4,
                 enable_prefix_caching: bool = True) -> BlockManager:
    return BlockManager(num_blocks, block_size, enable_prefix_caching=enable_prefix_caching)


def computed(manager: BlockManager, req_id: str, token_ids: list[int]) -> BlockTable:
    """Allocate a request for all its tokens and mark them computed (prefix-cacheable)."""
    table = manager.allocate(req_id, token_ids, len(token_ids))
    manager.cache_computed_blocks(req_id, token_ids, len(token_ids))
    return table


def test_allocate_covers_the_requested_positions_and_append_grows_the_table():
    manager = make_manager()
    table = manager.allocate("r", list(range(6)), 6)
    assert table == BlockTable(block_ids=(0, 1), num_cached_tokens=0)
    assert manager.append_slots("r", 8).block_ids == (0, 1)  # still two blocks
    assert manager.append_slots("r", 9).block_ids == (0, 1, 2)
    assert manager.num_free_blocks == 5 and manager.usage == pytest.approx(3 / 8)
    manager.free("r")
    assert manager.num_free_blocks == 8 and manager.usage == 0.0
    manager.check_invariants()


def test_block_table_is_read_only():
    table = make_manager().allocate("r", [1, 2, 3], 3)
    with pytest.raises(AttributeError):
        table.block_ids = (7,)  # type: ignore[misc]


def test_shared_block_returns_to_the_pool_only_when_its_last_owner_frees_it():
    manager = make_manager(num_blocks=4)
    prompt = list(range(9))
    computed(manager, "a", prompt)
    table_b = manager.allocate("b", prompt, 9)
    shared = set(table_b.block_ids[:2])
    assert shared == set(manager.get_block_table("a").block_ids[:2])
    manager.free("a")
    assert manager.num_free_blocks == 1  # a's private third block only
    manager.free("b")
    assert manager.num_free_blocks == 4
    manager.check_invariants()


def test_new_request_reuses_the_longest_run_of_cached_full_blocks():
    manager = make_manager()
    computed(manager, "a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    table = manager.allocate("b", [1, 2, 3, 4, 5, 6, 7, 0, 9, 10], 10)
    assert table.num_cached_tokens == 4  # the second block differs in one token
    assert table.block_ids[0] == manager.get_block_table("a").block_ids[0]
    assert table.block_ids[1] != manager.get_block_table("a").block_ids[1]


def test_a_block_matches_only_after_the_same_prefix():
    manager = make_manager()
    computed(manager, "a", [1, 1, 1, 1, 2, 2, 2, 2, 0])
    assert manager.num_cached_prefix_tokens([9, 9, 9, 9, 2, 2, 2, 2, 0]) == 0
    assert hash_block_tokens(None, [2, 2, 2, 2]) != hash_block_tokens(
        hash_block_tokens(None, [1, 1, 1, 1]), [2, 2, 2, 2])


def test_fully_cached_prompt_leaves_its_last_block_to_compute():
    manager = make_manager()
    prompt = list(range(12))
    computed(manager, "a", prompt)
    assert manager.num_cached_prefix_tokens(prompt) == 8  # capped at 11 tokens -> 2 blocks
    assert manager.num_cached_prefix_tokens(prompt + [99]) == 12
    table = manager.allocate("b", prompt, 12)
    assert table.num_cached_tokens == 8 and len(table.block_ids) == 3


def test_only_computed_full_blocks_are_cached():
    manager = make_manager()
    prompt = list(range(10))
    manager.allocate("a", prompt, 10)
    assert manager.num_cached_prefix_tokens(prompt + [0]) == 0  # nothing computed yet
    manager.cache_computed_blocks("a", prompt, 6)
    assert manager.num_cached_prefix_tokens(prompt + [0]) == 4
    manager.cache_computed_blocks("a", prompt, 10)
    assert manager.num_cached_prefix_tokens(prompt + [0]) == 8


def test_freed_cached_blocks_stay_reusable_and_count_as_free_and_evictable():
    manager = make_manager()
    prompt = list(range(9))
    computed(manager, "a", prompt)
    manager.free("a")
    assert (manager.num_free_blocks, manager.num_evictable_blocks) == (8, 2)
    table = manager.allocate("b", prompt, 9)
    assert table.num_cached_tokens == 8
    assert (manager.num_free_blocks, manager.num_evictable_blocks) == (5, 0)
    manager.check_invariants()


def test_evictable_blocks_are_evicted_least_recently_freed_first_and_only_when_needed():
    manager = make_manager(num_blocks=4, block_size=2)
    computed(manager, "old", [1, 1, 0])  # one full block cached
    computed(manager, "new", [2, 2, 0])
    manager.free("old")
    manager.free("new")
    assert manager.num_evictable_blocks == 2
    manager.allocate("filler", [5, 6, 7, 8], 4)  # the two empty blocks: nothing evicted
    assert manager.num_cached_prefix_tokens([1, 1, 0]) == 2
    manager.free("filler")
    manager.allocate("big", [5, 6, 7, 8, 9, 10], 6)  # 2 empty + 1 evicted: the older one
    assert manager.num_cached_prefix_tokens([1, 1, 0]) == 0
    assert manager.num_cached_prefix_tokens([2, 2, 0]) == 2
    manager.check_invariants()


def test_tail_blocks_of_a_freed_request_are_evicted_before_its_head():
    manager = make_manager(num_blocks=3, block_size=2)
    computed(manager, "a", [1, 2, 3, 4, 5, 6])
    manager.free("a")
    manager.allocate("b", [9, 9], 2)  # evicts one block: it must be the tail
    assert manager.num_cached_prefix_tokens([1, 2, 3, 4, 0]) == 4


def test_reviving_an_evictable_hit_counts_against_free_blocks():
    manager = make_manager(num_blocks=3, block_size=2)
    computed(manager, "a", [1, 2, 3, 4, 0])  # two cached blocks, one private
    manager.free("a")
    # the hit takes 2 evictable blocks, one more is needed for position 4: 3 in all
    assert manager.can_allocate([1, 2, 3, 4, 0], 5)
    assert not manager.can_allocate([1, 2, 3, 4, 0, 0, 0], 7)
    with pytest.raises(NoFreeBlocksError):
        manager.allocate("b", [1, 2, 3, 4, 0, 0, 0], 7)
    manager.check_invariants()


def test_running_out_of_blocks_raises_a_typed_error_and_changes_nothing():
    manager = make_manager(num_blocks=2)
    manager.allocate("a", list(range(5)), 5)
    assert not manager.can_append_slots("a", 9)
    with pytest.raises(NoFreeBlocksError) as raised:
        manager.append_slots("a", 9)
    assert (raised.value.num_needed, raised.value.num_free) == (1, 0)
    assert not manager.can_allocate([1], 1)
    with pytest.raises(NoFreeBlocksError):
        manager.allocate("b", [1], 1)
    assert not manager.has_request("b")
    manager.check_invariants()


def test_prefix_cache_counters_count_tokens():
    manager = make_manager()
    computed(manager, "a", list(range(10)))
    manager.allocate("b", list(range(10)), 10)
    assert (manager.prefix_cache_queries, manager.prefix_cache_hits) == (20, 8)
    manager.can_allocate(list(range(10)), 10)  # a query that allocates nothing
    assert manager.prefix_cache_queries == 20


def test_prefix_caching_off_never_shares_or_keeps_blocks():
    manager = make_manager(enable_prefix_caching=False)
    prompt = list(range(9))
    computed(manager, "a", prompt)
    assert manager.allocate("b", prompt, 9).num_cached_tokens == 0
    manager.free("a")
    assert manager.num_evictable_blocks == 0
    assert (manager.prefix_cache_queries, manager.prefix_cache_hits) == (0, 0)
    manager.check_invariants()


def test_identical_blocks_computed_twice_keep_one_cache_entry():
    manager = make_manager()
    prompt = list(range(9))
    manager.allocate("a", prompt, 9)
    manager.allocate("b", prompt, 9)  # same step: neither is cached yet
    manager.cache_computed_blocks("a", prompt, 9)
    manager.cache_computed_blocks("b", prompt, 9)
    manager.free("a")
    manager.free("b")
    assert manager.num_evictable_blocks == 2
    manager.check_invariants()


def test_reset_prefix_cache_forgets_evictable_blocks():
    manager = make_manager()
    computed(manager, "a", list(range(9)))
    manager.free("a")
    assert manager.reset_prefix_cache() == 2
    assert manager.num_cached_prefix_tokens(list(range(9))) == 0
    manager.check_invariants()


def test_misuse_of_req_ids_raises_typed_errors():
    manager = make_manager()
    manager.allocate("a", [1], 1)
    with pytest.raises(DuplicateRequestError):
        manager.allocate("a", [1], 1)
    with pytest.raises(UnknownRequestError):
        manager.free("ghost")
    with pytest.raises(UnknownRequestError):
        manager.append_slots("ghost", 3)


def _corrupt_ref_count(m):
    m._ref_counts[0] += 1


def _corrupt_twice_in_table(m):
    m._requests["a"].block_ids.append(m._requests["a"].block_ids[0])
    m._ref_counts[m._requests["a"].block_ids[0]] += 1


def _corrupt_free_and_owned(m):
    m._empty.append(m._requests["a"].block_ids[0])


def _corrupt_lost_block(m):
    m._empty.pop()


def _corrupt_hash_index_to_free_block(m):
    m.free("a")
    m.reset_prefix_cache()
    block_id = m._empty[0]
    m._cached[b"x" * 32] = block_id
    m._block_hashes[block_id] = b"x" * 32


def _corrupt_hash_index_to_other_content(m):
    block_hash = next(iter(m._cached))
    m._block_hashes[m._cached[block_hash]] = b"y" * 32


@pytest.mark.parametrize("corrupt", [
    _corrupt_ref_count, _corrupt_twice_in_table, _corrupt_free_and_owned, _corrupt_lost_block,
    _corrupt_hash_index_to_free_block, _corrupt_hash_index_to_other_content,
])
def test_check_invariants_catches_corrupted_state(corrupt):
    manager = make_manager()
    computed(manager, "a", list(range(9)))
    manager.check_invariants()
    corrupt(manager)
    with pytest.raises(BlockInvariantError):
        manager.check_invariants()


def test_released_blocks_return_to_the_pool_and_their_entries_alias_the_first_held():
    manager = make_manager()
    tokens = list(range(14))
    assert computed(manager, "r", tokens).block_ids == (0, 1, 2, 3)
    manager.release_before("r", 9)  # positions 0..7 (blocks 0 and 1) slid out
    assert manager.get_block_table("r").block_ids == (2, 2, 2, 3)
    assert manager.num_free_blocks == 6 and manager.num_evictable_blocks == 2
    manager.check_invariants()
    manager.release_before("r", 5)  # never un-releases
    assert manager.get_block_table("r").block_ids == (2, 2, 2, 3)
    manager.release_before("r", 100)  # the last block is always kept
    assert manager.get_block_table("r").block_ids == (3, 3, 3, 3)
    manager.free("r")
    assert manager.num_free_blocks == 8
    manager.check_invariants()


def test_released_blocks_stay_prefix_cache_hits_for_the_next_request():
    manager = make_manager()
    tokens = list(range(14))
    computed(manager, "r", tokens)
    manager.release_before("r", 9)
    assert manager.allocate("s", tokens[:9], 9).block_ids[:2] == (0, 1)
    manager.check_invariants()


def test_a_block_released_before_it_was_registered_is_not_cached():
    """Async scheduling gives blocks back one step before update() registers them."""
    manager = make_manager()
    tokens = list(range(12))
    manager.allocate("r", tokens, 12)
    manager.release_before("r", 9)
    manager.cache_computed_blocks("r", tokens, 12)
    assert manager.num_evictable_blocks == 0  # blocks 0 and 1 came back unregistered
    assert manager.num_cached_prefix_tokens(tokens + [99]) == 0
    manager.check_invariants()


def test_blocks_cached_under_one_salt_are_no_hits_under_another():
    """KV of the same tokens computed another way (Phi-3's long rotary table)."""
    manager = make_manager()
    tokens = list(range(9))
    manager.allocate("long", tokens, 9, salt=1)
    manager.cache_computed_blocks("long", tokens, 9)
    manager.free("long")
    assert manager.num_cached_prefix_tokens(tokens, salt=1) == 8
    assert manager.num_cached_prefix_tokens(tokens) == 0
    assert manager.allocate("short", tokens, 9).num_cached_tokens == 0
    manager.check_invariants()
