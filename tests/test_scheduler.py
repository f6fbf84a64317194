"""The scheduler alone, in pure Python (no device): admission by free KV blocks, waiting when the
pool is full, refusing what can never fit, one prompt prefilled at a time in chunks that depend
only on its own prompt, and slots and blocks given back."""

from __future__ import annotations

import pytest
from shaderbay.errors import ContextLengthExceeded, KVCacheFull
from shaderbay.models.kv_blocks import BlockPool, BlockTable
from shaderbay.models.requests import Request, Sequence
from shaderbay.models.scheduler import Scheduler

BS = 4


def make(pool: BlockPool, ids, max_tokens: int) -> Sequence:
    return Sequence(Request(tuple(ids), max_tokens), BlockTable(pool))


def finish_prompt(sched: Scheduler, seq: Sequence) -> list[tuple[int, int]]:
    """Run the prompt's chunks as the engine does (blocks reserved, KV committed); their bounds."""
    bounds = []
    while (chunk := sched.next_chunk()) is not None:
        s, start, end = chunk
        assert s is seq
        s.table.reserve(end)
        s.computed = end
        s.table.commit(s.request.ids[:end])
        bounds.append((start, end))
    seq.take(7)
    return bounds


def test_a_full_pool_makes_requests_wait_then_serves_them():
    pool = BlockPool(6, BS)
    sched = Scheduler(pool, slots=4, capacity=24, chunk=8)
    a, b = make(pool, range(10), 6), make(pool, range(20, 26), 8)  # 15 positions (4 blocks), 13 (4 blocks)
    sched.add(a)
    sched.add(b)
    assert sched.admit() is a and a.slot == 0
    assert a.table.blocks == []  # blocks come as positions are reached, but are promised now
    assert sched.promised() == 4
    finish_prompt(sched, a)
    assert sched.admit() is None and list(sched.waiting) == [b]  # 6 blocks - 4 promised < 4: b waits
    sched.remove(a)
    assert pool.num_free == 6 and sched.running == []
    assert sched.admit() is b and b.slot == 0  # a's slot again


def test_what_can_never_fit_is_refused_when_added():
    pool = BlockPool(3, BS)
    sched = Scheduler(pool, slots=2, capacity=16, chunk=8)
    with pytest.raises(KVCacheFull, match="needs 4 more blocks but only 3 of its 3"):
        sched.add(make(pool, range(10), 4))  # 13 positions: 4 blocks
    with pytest.raises(ContextLengthExceeded):
        sched.add(make(pool, range(10), 8))  # 17 positions > 16
    assert not sched.waiting


def test_one_prompt_at_a_time_in_chunks_from_its_reused_prefix():
    pool = BlockPool(16, BS)
    sched = Scheduler(pool, slots=4, capacity=32, chunk=5)
    prefix = list(range(100, 109))  # two whole blocks and one more token
    a, b = make(pool, prefix + [1, 2, 3], 2), make(pool, prefix + [4, 5, 6, 7], 2)
    sched.add(a)
    sched.add(b)
    assert sched.admit() is a
    assert sched.admit() is None  # a's prompt first: then b can share its blocks
    assert finish_prompt(sched, a) == [(0, 5), (5, 10), (10, 12)]
    assert sched.admit() is b
    assert b.computed == b.stats.cached_tokens == 8  # a's two whole blocks of the prefix
    assert b.table.blocks[:2] == a.table.blocks[:2]
    assert [pool.refcounts[i] for i in a.table.blocks[:2]] == [2, 2]
    assert finish_prompt(sched, b) == [(8, 13)]  # counted from the reused prefix, not from a's chunks
    assert sched.decoding() == [a, b]


def test_a_removed_sequence_leaves_its_written_blocks_matchable():
    pool = BlockPool(8, BS)
    sched = Scheduler(pool, slots=1, capacity=32, chunk=16)
    a = make(pool, range(6), 6)
    sched.add(a)
    sched.admit()
    finish_prompt(sched, a)  # prompt 0..5, first token 7
    a.table.reserve(a.n_prompt + 3)
    for t in (8, 9):  # two decode steps: 7 and 8 fed back, KV at positions 6 and 7
        a.take(t)
    assert a.written == [0, 1, 2, 3, 4, 5, 7, 8]
    sched.remove(a)
    assert a.slot is None and pool.num_free == 8
    again = make(pool, [0, 1, 2, 3, 4, 5, 7, 8, 1], 2)
    sched.add(again)
    assert sched.admit() is again and again.computed == 8  # both blocks, the reply's included


def test_a_waiting_sequence_that_is_removed_leaves_the_queue():
    pool = BlockPool(4, BS)
    sched = Scheduler(pool, slots=1, capacity=16, chunk=8)
    a, b = make(pool, range(4), 2), make(pool, range(4), 2)
    sched.add(a)
    sched.add(b)
    assert sched.admit() is a
    sched.remove(b)
    assert not sched.waiting
