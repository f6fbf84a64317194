"""The paged KV cache's block manager: allocation, sharing, prefix caching, eviction, sizing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from shaderbay.errors import InvalidOption, KVCacheFull, ModelError
from shaderbay.models.kv_blocks import BlockPool, BlockTable, block_digest, blocks_for, pool_size


def table_with(pool: BlockPool, ids: list[int]) -> BlockTable:
    """A sequence that computed `ids` (after reusing what the cache had) and committed them."""
    table = BlockTable(pool)
    table.match_prefix(ids)
    table.reserve(len(ids))
    table.commit(ids)
    return table


def test_blocks_for_rounds_up():
    assert [blocks_for(n, 4) for n in range(10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]


def test_the_digest_is_the_same_in_every_process():
    code = "from shaderbay.models.kv_blocks import block_digest as d; print(d(d(b'', [1, 2]), [3, 4]).hex())"
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in "ab"
    }
    assert runs == {block_digest(block_digest(b"", [1, 2]), [3, 4]).hex() + "\n"}


def test_the_digest_names_the_whole_prefix():
    assert block_digest(b"", [1, 2]) != block_digest(b"", [2, 1])
    assert block_digest(block_digest(b"", [1, 2]), [3, 4]) != block_digest(block_digest(b"", [9, 2]), [3, 4])


def test_reserve_holds_live_tokens_rounded_up_to_a_block():
    pool = BlockPool(8, 4)
    table = BlockTable(pool)
    for n, blocks in [(1, 1), (4, 1), (5, 2), (5, 2), (3, 2), (12, 3)]:
        table.reserve(n)
        assert len(table.blocks) == blocks
    assert pool.num_used == 3 and table.capacity == 12
    assert len(set(table.blocks)) == 3


def test_a_full_pool_raises_and_allocates_nothing():
    pool = BlockPool(4, 2)
    first = BlockTable(pool)
    first.reserve(4)
    second = BlockTable(pool)
    second.reserve(1)
    with pytest.raises(KVCacheFull) as failed:
        second.reserve(7)  # 4 blocks: 3 more wanted, 1 free
    assert (failed.value.wanted, failed.value.free, failed.value.n_blocks) == (3, 1, 4)
    assert "3 more blocks" in str(failed.value) and "1 of its 4" in str(failed.value)
    assert "fewer or shorter requests" in str(failed.value) and "max_context" in str(failed.value)
    assert isinstance(failed.value, ModelError)
    assert len(second.blocks) == 1 and pool.num_free == 1
    second.reserve(4)  # what does fit still does
    assert pool.num_free == 0


def test_release_gives_every_block_back():
    pool = BlockPool(4, 2)
    table = BlockTable(pool)
    table.reserve(8)
    table.release()
    assert table.blocks == [] and pool.num_free == 4 and pool.refcounts == [0] * 4
    table.release()  # nothing held, nothing freed
    assert pool.num_free == 4


def test_freeing_a_block_more_often_than_it_was_taken_is_refused():
    pool = BlockPool(2, 2)
    block = pool.allocate(1)
    pool.free(block)
    with pytest.raises(ValueError, match="freed more often"):
        pool.free(block)


def test_the_device_row_marks_unused_entries_invalid():
    pool = BlockPool(6, 2)
    BlockTable(pool).reserve(2)  # another sequence takes block 0
    table = BlockTable(pool)
    table.reserve(3)
    row = table.row(4)
    assert row.dtype == np.uint32 and row.tolist() == [*table.blocks, 6, 6]
    assert table.blocks == [1, 2]
    with pytest.raises(ValueError, match="more than a row's 1"):
        table.row(1)


def test_a_prompt_shares_the_cached_full_blocks_of_its_start():
    pool = BlockPool(8, 2)
    first = table_with(pool, [1, 2, 3, 4, 5])
    second = BlockTable(pool)
    assert second.match_prefix([1, 2, 3, 4, 5, 6, 7]) == 4
    assert second.blocks == first.blocks[:2]
    assert [pool.refcounts[b] for b in first.blocks] == [2, 2, 1]
    second.reserve(7)
    assert second.blocks[:2] == first.blocks[:2] and len(set(first.blocks + second.blocks)) == 5


def test_the_match_stops_at_the_first_block_that_differs():
    pool = BlockPool(8, 2)
    table_with(pool, [1, 2, 3, 4, 5, 6, 7])
    assert BlockTable(pool).match_prefix([1, 2, 9, 4, 5, 6, 7]) == 2
    assert BlockTable(pool).match_prefix([3, 4, 5, 6, 7]) == 0  # same blocks, another position


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_the_last_prompt_token_is_always_computed(block_size):
    pool = BlockPool(16, block_size)
    prompt = list(range(2 * block_size))  # an exact multiple of the block size
    first = table_with(pool, prompt)
    second = BlockTable(pool)
    assert second.match_prefix(prompt) == block_size  # not 2 blocks: the one of the last token is computed
    assert pool.refcounts[first.blocks[1]] == 1  # so the block it is written into is never shared
    assert BlockTable(pool).match_prefix(prompt[:1]) == 0
    assert BlockTable(pool).match_prefix([]) == 0


def test_match_prefix_is_for_an_empty_table():
    pool = BlockPool(4, 2)
    table = BlockTable(pool)
    table.reserve(1)
    with pytest.raises(ValueError, match="no blocks yet"):
        table.match_prefix([1, 2, 3])


def test_only_written_full_blocks_are_registered():
    pool = BlockPool(8, 2)
    table = BlockTable(pool)
    table.reserve(5)
    table.commit([1, 2, 3])
    assert pool.num_cached == 1
    assert BlockTable(pool).match_prefix([1, 2, 3, 4, 5]) == 2
    table.commit([1, 2, 3, 4])  # a later commit registers what became full since
    assert BlockTable(pool).match_prefix([1, 2, 3, 4, 5]) == 4
    with pytest.raises(ValueError, match="only 6 are reserved"):
        table.commit([0] * 8)


def test_a_shared_block_is_freed_only_by_its_last_user():
    pool = BlockPool(4, 2)
    first = table_with(pool, [1, 2, 3])
    second = table_with(pool, [1, 2, 4])
    shared = first.blocks[0]
    assert second.blocks[0] == shared and pool.refcounts[shared] == 2
    first.release()
    assert pool.refcounts[shared] == 1 and pool.num_used == 2
    second.release()
    assert pool.refcounts[shared] == 0 and pool.num_free == 4


def test_a_freed_cached_block_is_matched_again_until_it_is_evicted():
    pool = BlockPool(3, 2)
    table_with(pool, [1, 2, 3, 4, 5]).release()
    assert pool.num_free == 3 and pool.num_cached == 2
    again = BlockTable(pool)
    assert again.match_prefix([1, 2, 3, 4, 5]) == 4
    assert pool.num_free == 1  # the matched blocks are in use again
    again.release()
    BlockTable(pool).reserve(6)  # wants all three: the cached blocks are evicted
    assert pool.num_cached == 0
    assert BlockTable(pool).match_prefix([1, 2, 3, 4, 5]) == 0


def test_never_cached_blocks_are_used_before_cached_ones_are_evicted():
    pool = BlockPool(4, 2)
    table_with(pool, [1, 2, 3]).release()  # block 0 cached, block 1 never full
    taken = BlockTable(pool)
    taken.reserve(6)
    assert pool.num_cached == 1 and pool.num_free == 1
    assert BlockTable(pool).match_prefix([1, 2, 3]) == 2


def test_eviction_takes_the_least_recently_freed_first():
    pool = BlockPool(3, 1)
    for token in (7, 8, 9):  # three sequences, one cached block each, freed in this order
        table_with(pool, [token]).release()
    assert pool.num_free == 3 and pool.num_cached == 3
    BlockTable(pool).reserve(1)  # evicts 7's block
    assert [BlockTable(pool).match_prefix([t, 0]) for t in (7, 8, 9)] == [0, 1, 1]


def test_a_match_makes_a_block_recently_used():
    pool = BlockPool(2, 1)
    table_with(pool, [7]).release()
    table_with(pool, [8]).release()
    again = BlockTable(pool)
    assert again.match_prefix([7, 0]) == 1
    again.release()  # 7's block matched and freed again: now 8's is the oldest
    BlockTable(pool).reserve(1)
    assert BlockTable(pool).match_prefix([7, 0]) == 1 and BlockTable(pool).match_prefix([8, 0]) == 0


def test_release_frees_the_end_of_a_prefix_before_its_start():
    pool = BlockPool(3, 1)
    table_with(pool, [1, 2, 3]).release()
    BlockTable(pool).reserve(1)  # evicts the block of [1, 2, 3], not the one of [1]
    assert BlockTable(pool).match_prefix([1, 2, 3, 0]) == 2


def test_a_prefix_computed_twice_at_once_keeps_one_cached_copy():
    pool = BlockPool(8, 2)
    first, second = BlockTable(pool), BlockTable(pool)
    for table in (first, second):  # both matched before either committed: both compute it
        assert table.match_prefix([1, 2, 3]) == 0
        table.reserve(3)
    first.commit([1, 2, 3])
    second.commit([1, 2, 3, 4])  # its copy of [1, 2] stays uncached; [3, 4] chains on as usual
    assert pool.num_cached == 2
    third = BlockTable(pool)
    assert third.match_prefix([1, 2, 3, 4, 5]) == 4 and third.blocks == [first.blocks[0], second.blocks[1]]
    for table in (first, second, third):
        table.release()
    assert pool.num_free == 8 and pool.refcounts == [0] * 8


def test_pool_size_from_streams_and_context():
    shape = dict(block_size=16, kv_dim=64, n_layers=2, cache_dtype="f16")
    assert pool_size(max_context=100, max_streams=3, **shape) == 3 * 7


def test_pool_size_from_a_memory_budget():
    shape = dict(block_size=16, kv_dim=64, n_layers=2, cache_dtype="f32")
    block = 2 * 2 * 16 * 64 * 4  # K and V of both layers
    assert pool_size(max_context=100, max_streams=1, memory_budget=10 * block + block - 1, **shape) == 10
    assert (
        pool_size(max_context=100, max_streams=1, memory_budget=10 * block, max_binding_size=8 * 16 * 64 * 4, **shape)
        == 8
    )


def test_a_pool_too_small_for_one_full_context_is_refused():
    shape = dict(block_size=16, kv_dim=64, n_layers=2, cache_dtype="f32")
    with pytest.raises(InvalidOption) as failed:
        pool_size(max_context=100, max_streams=4, memory_budget=6 * 2 * 2 * 16 * 64 * 4, **shape)
    message = str(failed.value)
    assert "6 blocks of 16 positions" in message and "7 blocks" in message
    assert "max_context <= 96" in message and "memory budget" in message and "f16" in message
    with pytest.raises(InvalidOption, match="max_context <= 32"):
        pool_size(max_context=100, max_streams=4, max_binding_size=2 * 16 * 64 * 4, **shape)


def test_a_pool_needs_a_block():
    with pytest.raises(InvalidOption):
        BlockPool(0, 16)


class Sequences(RuleBasedStateMachine):
    """Sequences start (reusing what the cache holds), decode and finish in any order. A model of
    the device cache records what each row's KV depends on (the tokens up to its position), so
    a shared block must hold exactly what the prompt sharing it would compute, and no shared
    block is ever written."""

    @initialize(n_blocks=st.integers(1, 12), block_size=st.integers(1, 4))
    def make_pool(self, n_blocks, block_size):
        self.pool = BlockPool(n_blocks, block_size)
        self.kv = [[None] * block_size for _ in range(n_blocks)]  # the tokens each row's KV was computed from
        self.live: list[tuple[BlockTable, list[int]]] = []

    def write(self, table: BlockTable, ids: list[int], start: int) -> None:
        size = self.pool.block_size
        for p in range(start, len(ids)):
            block = table.blocks[p // size]
            assert self.pool.refcounts[block] == 1, "a shared block is written"
            self.kv[block][p % size] = tuple(ids[: p + 1])
        table.commit(ids)

    def reserve_or_nothing(self, table: BlockTable, n: int) -> bool:
        before = (list(table.blocks), list(self.pool.refcounts), self.pool.num_free, self.pool.num_cached)
        try:
            table.reserve(n)
        except KVCacheFull as full:
            assert full.wanted > full.free == before[2]
            assert (table.blocks, self.pool.refcounts, self.pool.num_free, self.pool.num_cached) == before
            return False
        return True

    @rule(prompt=st.lists(st.integers(0, 2), min_size=1, max_size=10))
    def start(self, prompt):
        table = BlockTable(self.pool)
        reused = table.match_prefix(prompt)
        size = self.pool.block_size
        assert reused % size == 0 and reused < len(prompt) and len(table.blocks) * size == reused
        for p in range(reused):
            assert self.kv[table.blocks[p // size]][p % size] == tuple(prompt[: p + 1])
        if self.reserve_or_nothing(table, len(prompt)):
            self.write(table, prompt, reused)
            self.live.append((table, prompt))
        else:
            table.release()

    @precondition(lambda self: self.live)
    @rule(data=st.data(), token=st.integers(0, 2))
    def decode(self, data, token):
        table, ids = data.draw(st.sampled_from(self.live))
        if self.reserve_or_nothing(table, len(ids) + 1):
            ids.append(token)
            self.write(table, ids, len(ids) - 1)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish(self, data):
        index = data.draw(st.integers(0, len(self.live) - 1))
        table, _ = self.live.pop(index)
        table.release()

    @invariant()
    def counts_match_the_tables(self):
        if not hasattr(self, "pool"):
            return
        held = [0] * self.pool.n_blocks
        for table, ids in self.live:
            assert len(table.blocks) == blocks_for(len(ids), self.pool.block_size)  # the KV-memory target
            for block in table.blocks:
                held[block] += 1
        assert self.pool.refcounts == held  # never negative, never leaked
        assert self.pool.num_used == sum(1 for n in held if n)
        assert self.pool.num_cached <= self.pool.n_blocks

    @invariant()
    def rows_name_the_blocks(self):
        for table, _ in getattr(self, "live", []):
            row = table.row(len(table.blocks) + 1).tolist()
            assert row == [*table.blocks, self.pool.n_blocks]


TestSequences = Sequences.TestCase
TestSequences.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
