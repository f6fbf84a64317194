"""Continuous batching: requests in, per-sequence events out. The one generation path of the
model (Model.generate, stream, chat, generate_batch, the CLI and the server all come here).
Read requests.py, scheduler.py and rows.py first.

    engine = Engine(llama)
    a = engine.add(Request(ids_a, max_tokens=32))
    b = engine.add(Request(ids_b, max_tokens=8, sampling=Sampling(temperature=0.7), seed=1))
    for event in engine.run([a, b]):
        print(event.seq, event.token, event.finish_reason)

Each `step()` reads the oldest decode step in flight, admits the next waiting sequence if it
fits, runs at most one prefill chunk, and, when the batch changed (a row finished or was
cancelled, a prompt is done), reads the steps still in flight and rewrites the rows; then it
submits decode steps until RUN_AHEAD are in flight. Whoever steps the engine (any consumer, in
any thread: a lock makes steps one at a time) routes every event to its sequence's queue, so
several consumers can iterate their own sequences, interleaved.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
from shaderbay.errors import InvalidOption, KVCacheFull

from .kv_blocks import BlockPool, BlockTable
from .llama import Llama
from .requests import Event, Request, Sequence
from .rows import Batch
from .sampling import Stats
from .scheduler import Scheduler


class Engine:
    def __init__(self, llama: Llama):
        self.llama = llama
        L = llama.layout
        self.pool = BlockPool(L.n_blocks, L.block_size)
        self.scheduler = Scheduler(self.pool, L.n_seqs, L.capacity, L.chunk)
        self.batch = Batch(llama)
        self.stats = Stats()  # the last added request's
        self._queues: dict[int, deque[Event]] = {}
        self._changed = False  # a row finished or a sequence is ready to join: rewrite the rows
        self._lock = threading.RLock()

    # --- requests in ----------------------------------------------------------------------------
    def add(self, request: Request) -> Sequence:
        """Queue a request (checked now: typed errors for bad ids, a context or pool it can never fit)."""
        if isinstance(request.max_tokens, bool) or not isinstance(request.max_tokens, int) or request.max_tokens < 1:
            raise InvalidOption(f"max_tokens must be an integer >= 1, got {request.max_tokens!r}")
        if request.id in self._queues:
            raise InvalidOption(f"request id {request.id} is already being served: give each request its own id")
        self.llama.check_ids(list(request.ids))
        self.llama.check_fits(len(request.ids), request.max_tokens)
        seq = Sequence(request, BlockTable(self.pool))
        with self._lock:
            self.scheduler.add(seq)
            self._queues[seq.id] = deque()
        self.stats = seq.stats
        return seq

    def cancel(self, seq: Sequence) -> None:
        """End a sequence now (its last event: finish_reason "cancelled"); its blocks are freed."""
        with self._lock:
            if seq.finished:
                return
            self._emit(seq, seq.cancel())
            if self._changed and not self.llama.backend.closed:  # a row: its steps in flight are read, then it leaves
                self._settle([])

    # --- stepping ------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self.scheduler.waiting and not self.scheduler.running and not self.batch.in_flight

    def step(self) -> list[Event]:
        """Advance every sequence by (about) one token; the events this produced, in order."""
        with self._lock:
            t0 = time.perf_counter()
            events: list[Event] = []
            batch, sched = self.batch, self.scheduler
            if batch.in_flight:
                self._take(batch.read(), events)
            admitted = sched.admit()
            if admitted is not None:
                batch.start(admitted)
            chunk = sched.next_chunk()
            if chunk is not None:
                seq, start, end = chunk
                token = batch.chunk(seq, start, end)
                if token is not None:
                    self._emit(seq, seq.take(token), events)
                    self._changed |= not seq.finished  # it joins the rows
            if self._changed:
                self._settle(events)
            batch.fill()
            dt = time.perf_counter() - t0
            for seq in batch.rows:
                seq.stats.decode_s += dt
            return events

    def _settle(self, events: list[Event]) -> None:
        """Read every step in flight, let the finished rows leave and make the decoding sequences the rows."""
        batch = self.batch
        while batch.in_flight:
            self._take(batch.read(), events)
        for seq in batch.rows:
            if seq.finished:
                self.scheduler.remove(seq)
        batch.rebuild(self.scheduler.decoding())
        self._changed = False

    def _take(self, tokens: list[tuple[Sequence, int]], events: list[Event]) -> None:
        for seq, token in tokens:
            if not seq.finished:  # a row that ended has its later tokens dropped
                self._emit(seq, seq.take(token), events)

    def _emit(self, seq: Sequence, event: Event, events: list[Event] | None = None) -> None:
        queue = self._queues.get(seq.id)
        if queue is not None:
            queue.append(event)
        if events is not None:
            events.append(event)
        if event.finish_reason is None:
            return
        if seq in self.batch.members:
            self._changed = True  # it leaves the rows once the steps in flight are read
        else:
            self.scheduler.remove(seq)  # in no step in flight: it leaves now

    # --- events out ----------------------------------------------------------------------------
    def run(self, seqs: Iterable[Sequence]) -> Iterator[Event]:
        """The events of `seqs` as they come, until each has finished. Closing it early cancels the
        unfinished ones (and stepping goes on for the other consumers' sequences)."""
        mine = list(seqs)
        live = {s.id: s for s in mine}
        try:
            while live:
                for seq in list(live.values()):
                    queue = self._queues[seq.id]
                    while queue:
                        event = queue.popleft()
                        if event.finish_reason is not None:
                            del live[seq.id]
                        yield event
                if live:
                    self.step()
        finally:
            for seq in live.values():
                self.cancel(seq)
            for seq in mine:
                self._queues.pop(seq.id, None)

    def take(self, seq: Sequence) -> list[Event]:
        """The events of `seq` since the last take, for a caller that steps the engine itself (the
        server: one thread calls step(), then take() for each of its sequences); after the last
        one (it has the finish reason) the sequence is forgotten."""
        queue = self._queues.get(seq.id)
        if not queue:
            return []
        events = list(queue)
        queue.clear()
        if events[-1].finish_reason is not None:
            del self._queues[seq.id]
        return events

    def stream(self, request: Request) -> Iterator[Event]:
        """Add one request and yield its events."""
        return self.run([self.add(request)])

    # --- logits (no generation) ----------------------------------------------------------------
    def logits(self, ids: list[int], all_positions: bool = False) -> np.ndarray:
        """Next-token logits after every prefix of `ids` ([T, vocab]) or after the whole ([vocab]), in a
        slot and blocks of their own, given back at once."""
        llama, s = self.llama, self.llama.s
        llama.check_ids(ids)
        llama.check_fits(len(ids), 1)
        with self._lock:
            table = BlockTable(self.pool)
            wanted = table.needed(len(ids))
            if wanted > self.pool.num_free - self.scheduler.promised():
                raise KVCacheFull(wanted, self.pool.num_free - self.scheduler.promised(), self.pool.n_blocks)
            seq = Sequence(Request(tuple(ids), 1), table)
            slot = seq.slot = self.scheduler.take_slot()
            try:
                table.reserve(len(ids))
                self.batch.start(seq)
                blocks = llama.all_logits() if all_positions else []
                step = llama.all_chunk if all_positions else llama.chunk
                out = []
                for start in range(0, len(ids), step):
                    part = ids[start : start + step]
                    last = start + len(part) == len(ids)
                    llama.write_chunk(part, start, slot)
                    cmd = llama.prefill_list(len(part), "all" if all_positions else "argmax" if last else None)
                    llama.backend.submit(cmd)
                    if all_positions:
                        got = [llama.backend.read(t.view(shape=(len(part), t.shape[1]))) for t in blocks]
                        out.append(np.concatenate(got, axis=1))
                return np.concatenate(out) if all_positions else llama.backend.read(s.logits)[0].copy()
            finally:
                table.release()
                self.scheduler.give_slot(slot)
