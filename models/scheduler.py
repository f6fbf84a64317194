"""Which sequences the engine serves, and in what order (read requests.py first).

Sequences wait in arrival order, then run: each running one holds a slot (its row of the
device's block tables and sampler state) and KV blocks. The rules:

- Admission by free blocks: a sequence joins when a slot is free and the pool can hold every
  position it may write (n_prompt + max_tokens - 1), counting what the running sequences may
  still take. Blocks are allocated as positions are reached (memory follows the live tokens),
  but never promised twice, so a running sequence never finds the pool empty: no preemption,
  whose recomputation through prefill would change a sequence's answer. When the pool is full
  a request waits; one that could never fit is refused when it is added (KVCacheFull).
- One prompt at a time is prefilled, in chunks of `chunk` positions counted from the end of
  its reused prefix, so its chunk boundaries depend only on its own prompt: the next waiting
  sequence is admitted once the one before has its prompt's KV written and committed, so it
  can share those blocks (a common system prompt is computed once).
- The engine runs at most one chunk between two decode steps, so running streams keep flowing.
"""

from __future__ import annotations

from collections import deque

from shaderbay.errors import ContextLengthExceeded, KVCacheFull, ModelBusy

from .kv_blocks import BlockPool, blocks_for
from .requests import Sequence


class Scheduler:
    def __init__(self, pool: BlockPool, slots: int, capacity: int, chunk: int):
        self.pool = pool
        self.capacity = capacity  # positions one sequence can hold (its row of the block table)
        self.chunk = chunk
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admitted, in admission order
        self.prefilling: Sequence | None = None  # the one whose prompt is being computed
        self._free_slots = list(range(slots - 1, -1, -1))  # pop() gives slot 0 first

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; refuse one that could never fit, whatever else finishes."""
        if seq.positions > self.capacity:
            raise ContextLengthExceeded(seq.positions, self.capacity)
        wanted = blocks_for(seq.positions, self.pool.block_size)
        if wanted > self.pool.n_blocks:
            raise KVCacheFull(wanted, self.pool.num_free, self.pool.n_blocks)
        self.waiting.append(seq)

    def promised(self) -> int:
        """Blocks the running sequences may still allocate."""
        return sum(s.table.needed(s.positions) for s in self.running)

    def admit(self) -> Sequence | None:
        """The next waiting sequence, admitted if nothing is being prefilled, a slot is free and the
        pool holds its reservation (its cached prefix shared); else None (it keeps waiting)."""
        if not self.waiting or not self._free_slots or self._prompt_in_progress():
            return None
        seq = self.waiting[0]
        reused = seq.table.match_prefix(seq.request.ids)
        if seq.table.needed(seq.positions) > self.pool.num_free - self.promised():
            seq.table.release()
            return None
        self.waiting.popleft()
        seq.slot = self._free_slots.pop()
        seq.computed = seq.stats.cached_tokens = reused
        self.running.append(seq)
        self.prefilling = seq
        return seq

    def _prompt_in_progress(self) -> bool:
        seq = self.prefilling
        if seq is not None and (seq.finished or not seq.prefilling):
            seq = self.prefilling = None
        return seq is not None

    def next_chunk(self) -> tuple[Sequence, int, int] | None:
        """(sequence, start, end): the prompt positions to compute next, if a prompt is being prefilled."""
        if not self._prompt_in_progress():
            return None
        seq = self.prefilling
        return seq, seq.computed, min(seq.computed + self.chunk, seq.n_prompt)

    def decoding(self) -> list[Sequence]:
        """The running sequences whose prompt is done and that have not finished."""
        return [s for s in self.running if not s.prefilling and not s.finished]

    def take_slot(self) -> int:
        """A slot for work outside the batch (Engine.logits); a typed error if every one is taken."""
        if not self._free_slots:
            raise ModelBusy(
                f"all {len(self.running)} sequence slots are in use: finish or close a generation, then ask again"
            )
        return self._free_slots.pop()

    def give_slot(self, slot: int) -> None:
        self._free_slots.append(slot)

    def remove(self, seq: Sequence) -> None:
        """A finished (or cancelled) sequence leaves: its written blocks stay matchable, its slot is free."""
        if seq in self.waiting:
            self.waiting.remove(seq)
            return
        seq.table.commit(seq.written)
        seq.table.release()
        self.running.remove(seq)
        self.give_slot(seq.slot)
        seq.slot = None
