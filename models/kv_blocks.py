"""The paged KV cache's block manager: which device blocks each sequence's keys and values live in.

The device holds one K pool and one V pool per layer, each `n_blocks * block_size` rows; block b
is rows [b * block_size, (b + 1) * block_size). A sequence's logical position p lives in row
`table.blocks[p // block_size] * block_size + p % block_size`. This module decides the block ids
and never touches the device: the engine writes `BlockTable.row(...)` into `block_tables`.

Reading order:
- `BlockPool` owns the ids: a free list, a reference count per block, and the prefix cache
  (a full block's digest -> its id). A block whose count falls to 0 while it holds a cached
  prefix is not wiped: it waits, matchable, in an LRU queue, and is evicted (its digest
  forgotten) only when a fresh block is wanted and no never-cached one is free.
- `BlockTable` is one sequence's list of blocks: `match_prefix` shares the cached blocks of a
  prompt's start, `reserve` allocates what a step needs, `commit` registers the full blocks
  whose KV is now written, `release` gives everything back.
- `pool_size` turns the user's settings (max_context, streams, a memory budget) into a block
  count; `blocks_for` is the one rounding of positions up to blocks.

A sequence's life: `reused = table.match_prefix(prompt)`, `table.reserve(len(prompt))`, compute
positions reused.. of the prompt, `table.commit(ids written so far)`; each decode step
`reserve(position + 1)` then `commit`; `release()` when it finishes. Committing generated tokens
too is what lets a chat's next turn reuse the KV of the earlier ones. KVCacheFull from
`reserve` leaves the table as it was: the engine may release it and wait for blocks instead.

Why it is shaped this way (vLLM's block manager and automatic prefix caching are the anchor):
- Memory follows the live tokens: a sequence holds ceil(positions / block_size) blocks.
- A full block is named by a hash chain, digest(parent digest, its block_size token ids), so a
  digest stands for the whole prefix up to that block's end: equal digests mean the same tokens
  at the same positions, so the same KV. The hash is blake2b, stable across processes (Python's
  hash() is salted per process).
- A shared block is never written: only full blocks are shared, and `match_prefix` always
  leaves at least one prompt token to compute, so the first position a sequence writes lies
  past its shared blocks (the last prompt token's logits are needed to sample anyway).
- `release` frees a sequence's blocks last one first, so the LRU evicts the ends of prefixes
  before their starts (a block is useless without the blocks before it).
- Allocation prefers never-cached free blocks and evicts cached ones only when it must, and
  `reserve` allocates all it needs or nothing (raising KVCacheFull), so a failed request
  leaves the pool as it was and the engine can wait and retry.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from struct import pack

import numpy as np
from shaderbay.dtypes import itemsize
from shaderbay.errors import InvalidOption, KVCacheFull

ROOT = b""  # the parent digest of a sequence's first block


def blocks_for(positions: int, block_size: int) -> int:
    """Blocks that hold `positions` positions (positions rounded up to a whole block)."""
    return -(-positions // block_size)


def block_digest(parent: bytes, ids: Sequence[int]) -> bytes:
    """The name of a full block: its token ids, chained to the digest of the blocks before it."""
    return hashlib.blake2b(parent + pack(f"<{len(ids)}I", *ids), digest_size=16).digest()


class BlockPool:
    """The block ids of one paged KV cache, their reference counts and the prefix cache."""

    def __init__(self, n_blocks: int, block_size: int):
        if n_blocks < 1 or block_size < 1:
            raise InvalidOption(
                f"a KV pool needs at least one block of at least one position, got {n_blocks} x {block_size}"
            )
        self.n_blocks = n_blocks
        self.block_size = block_size
        self.refcounts = [0] * n_blocks
        self._free = list(range(n_blocks - 1, -1, -1))  # never-cached free blocks; pop() gives 0 first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # free blocks holding a cached prefix, LRU first
        self._cached: dict[bytes, int] = {}  # digest -> block
        self._digest_of: dict[int, bytes] = {}  # block -> digest, for the blocks in _cached

    @property
    def num_free(self) -> int:
        """Blocks `allocate` can hand out now (cached ones included: it evicts them)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.n_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        """Blocks holding a matchable prefix, in use or not."""
        return len(self._cached)

    def allocate(self, n: int) -> list[int]:
        """n fresh blocks (count 1 each), never-cached ones first, then the least recently freed."""
        if n > self.num_free:
            raise KVCacheFull(n, self.num_free, self.n_blocks)
        blocks = []
        for _ in range(n):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._cached[self._digest_of.pop(block)]
            self.refcounts[block] = 1
            blocks.append(block)
        return blocks

    def free(self, blocks: Iterable[int]) -> None:
        """Drop one reference to each block; a block at 0 becomes free (matchable still, if cached)."""
        for block in blocks:
            if self.refcounts[block] <= 0:
                raise ValueError(f"block {block} is freed more often than it was taken")
            self.refcounts[block] -= 1
            if self.refcounts[block] == 0:
                if block in self._digest_of:
                    self._evictable[block] = None  # most recently freed: evicted last
                else:
                    self._free.append(block)

    def take_cached(self, digest: bytes) -> int | None:
        """The block holding `digest`'s prefix, with one more reference, or None if none does."""
        block = self._cached.get(digest)
        if block is not None:
            if self.refcounts[block] == 0:
                del self._evictable[block]
            self.refcounts[block] += 1
        return block

    def register(self, block: int, digest: bytes) -> None:
        """Make a full, written block matchable. If another block holds the same prefix already
        (two sequences computed it at once), that one stays the cached copy."""
        if digest not in self._cached and block not in self._digest_of:
            self._cached[digest] = block
            self._digest_of[block] = digest


class BlockTable:
    """One sequence's blocks, in logical order."""

    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.blocks: list[int] = []
        self._digests: list[bytes] = []  # the hash chain of blocks[0 : len(_digests)], all full and written

    @property
    def capacity(self) -> int:
        """Positions the reserved blocks hold."""
        return len(self.blocks) * self.pool.block_size

    def match_prefix(self, ids: Sequence[int]) -> int:
        """Share the cached blocks of the prompt `ids`' start; return how many tokens they hold.
        Their KV need not be computed; at least the last token always is. Call on an empty table."""
        if self.blocks:
            raise ValueError("match_prefix is for a table that holds no blocks yet")
        size = self.pool.block_size
        parent = ROOT
        for start in range(0, (len(ids) - 1) // size * size, size):
            digest = block_digest(parent, ids[start : start + size])
            block = self.pool.take_cached(digest)
            if block is None:
                break
            self.blocks.append(block)
            self._digests.append(digest)
            parent = digest
        return self.capacity

    def needed(self, n_positions: int) -> int:
        """Blocks `reserve(n_positions)` would allocate."""
        return max(0, blocks_for(n_positions, self.pool.block_size) - len(self.blocks))

    def reserve(self, n_positions: int) -> None:
        """Hold blocks for positions 0..n_positions-1: all that are missing, or none (KVCacheFull)."""
        self.blocks += self.pool.allocate(self.needed(n_positions))

    def commit(self, ids: Sequence[int]) -> None:
        """Register the full blocks of `ids`, the tokens whose KV is written at positions
        0..len(ids)-1, so that later prompts starting with them can share them."""
        size = self.pool.block_size
        full = len(ids) // size
        if full > len(self.blocks):
            raise ValueError(f"commit of {len(ids)} positions, but only {self.capacity} are reserved")
        parent = self._digests[-1] if self._digests else ROOT
        for k in range(len(self._digests), full):
            parent = block_digest(parent, ids[k * size : (k + 1) * size])
            self.pool.register(self.blocks[k], parent)
            self._digests.append(parent)

    def release(self) -> None:
        """Give every block back, the last first (so the LRU evicts prefixes from their end)."""
        self.pool.free(reversed(self.blocks))
        self.blocks = []
        self._digests = []

    def row(self, blocks_per_seq: int) -> np.ndarray:
        """This table as a row of the device's `block_tables` (u32); unused entries = n_blocks (invalid)."""
        if len(self.blocks) > blocks_per_seq:
            raise ValueError(f"the table holds {len(self.blocks)} blocks, more than a row's {blocks_per_seq}")
        row = np.full(blocks_per_seq, self.pool.n_blocks, dtype=np.uint32)
        row[: len(self.blocks)] = self.blocks
        return row


def pool_size(
    *,
    block_size: int,
    max_context: int,
    max_streams: int,
    kv_dim: int,
    n_layers: int,
    cache_dtype: str,
    memory_budget: int | None = None,
    max_binding_size: int | None = None,
) -> int:
    """Blocks in each layer's K and V pools: max_streams sequences of max_context positions, or,
    given `memory_budget` (bytes for all the pools together), as many as it holds. No more than
    one pool binding holds (`max_binding_size`), and never fewer than one max_context sequence
    needs, since a request the context admits must be servable (InvalidOption otherwise)."""
    row_bytes = kv_dim * itemsize(cache_dtype)
    pool_block_bytes = block_size * row_bytes  # one block of one layer's K (or V) pool
    per_seq = blocks_for(max_context, block_size)
    if memory_budget is None:
        n = max_streams * per_seq
    else:
        n = memory_budget // (2 * n_layers * pool_block_bytes)
    if max_binding_size is not None:
        n = min(n, max_binding_size // pool_block_bytes)
    if n < per_seq:
        fits = n * block_size
        raise InvalidOption(
            f"the KV pool holds {n} blocks of {block_size} positions ({fits} positions), fewer than one sequence of "
            f"max_context={max_context} needs ({per_seq} blocks): load with max_context <= {fits}"
            + (", or a larger KV memory budget" if memory_budget is not None else "")
            + (" or cache_dtype='f16'" if cache_dtype == "f32" else "")
        )
    return n
