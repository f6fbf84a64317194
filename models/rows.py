"""The engine's hands on the device (read requests.py and scheduler.py first, engine.py after):
a sequence's slot written when it is admitted, its prompt's chunks, and the decode rows with the
steps in flight.

The steady state writes almost nothing: a decode step's tokens, positions and sampler counters
live on the device and move on by themselves, so between two steps the host only reads the
oldest step's R tokens and, when a row's next position opens a new block, writes that slot's
block-table row. The rows are rewritten (`rebuild`) only when the batch changes, after the
steps in flight are read. Steps are submitted no further than the first row's max_tokens
allows, so no step computes past a sequence's reservation; a row that ends on a stop id has at
most RUN_AHEAD - 1 steps computed after it, their tokens dropped.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from shaderbay.commands import CommandList
from shaderbay.kernels import SAMPLE_SETTINGS

from .buffers import RUN_AHEAD
from .llama import Llama
from .requests import Sequence


def head_of(seqs: list[Sequence]) -> str:
    """argmax when every sequence is plain greedy (the same answer as sample's, cheaper), else sample."""
    return "argmax" if all(s.request.sampling.greedy for s in seqs) else "sample"


class Batch:
    """The decode rows of one model and its steps in flight (and the writes of admitted slots)."""

    def __init__(self, llama: Llama):
        self.llama = llama
        self.rows: list[Sequence] = []  # row r of the device's step buffers is rows[r]
        self.members: set[Sequence] = set()
        # (step, recording, its rows), oldest first
        self.in_flight: deque[tuple[CommandList, int, list[Sequence]]] = deque()
        # with the embedding table on the host, each step needs the previous tokens first: no run-ahead
        self.depth = 1 if llama.weights.host_embed is not None else RUN_AHEAD
        self._base: list[int] = []  # each row's position at the first step since the rebuild
        self._submitted = 0  # steps submitted since the rebuild
        self._steps_left = 0  # steps until the first row reaches its max_tokens
        self._covered = 0  # steps every row has blocks for
        self._lists: list[CommandList] = []  # the rows' recorded step, RUN_AHEAD recordings
        self._recording = 0

    # --- a sequence's slot and prompt ------------------------------------------------------
    def start(self, seq: Sequence) -> None:
        """Write an admitted sequence's slot: its sampler settings, counters and history, its blocks."""
        b, s = self.llama.backend, self.llama.s
        req, slot = seq.request, seq.slot
        b.write(s.settings, req.sampling.settings_row(), offset=slot * SAMPLE_SETTINGS * 4)
        b.write(s.state, np.array([req.seed, 0, seq.n_prompt, 0], np.uint32), offset=slot * 16)
        if req.sampling.repetition_penalty != 1.0:
            b.write(s.history, np.asarray(req.ids[: self.llama.layout.hist_cap], np.uint32),
                    offset=slot * self.llama.layout.hist_cap * 4)  # fmt: skip
        self._write_table(seq)

    def _write_table(self, seq: Sequence) -> None:
        L = self.llama.layout
        offset = seq.slot * L.blocks_per_seq * 4
        self.llama.backend.write(self.llama.s.block_tables, seq.table.row(L.blocks_per_seq), offset=offset)

    def _cover(self, seq: Sequence, positions: int) -> None:
        """Blocks for the sequence's first `positions` positions (within its reservation)."""
        if seq.table.needed(positions):
            seq.table.reserve(positions)
            self._write_table(seq)

    def chunk(self, seq: Sequence, start: int, end: int) -> int | None:
        """Compute prompt positions start..end-1; after the prompt's last, its first token."""
        llama = self.llama
        self._cover(seq, end)
        last = end == seq.n_prompt
        llama.write_chunk(list(seq.request.ids[start:end]), start, seq.slot)
        cmd = llama.prefill_list(end - start, head_of([seq]) if last else None)
        llama.backend.submit(cmd)
        seq.computed = end
        seq.table.commit(seq.request.ids[:end])
        if not last:
            return None
        return int(llama.backend.read_after(cmd, llama.s.first_readback)[0])

    # --- decode steps ------------------------------------------------------------------------
    def rebuild(self, seqs: list[Sequence]) -> None:
        """Make `seqs` the rows (nothing in flight): their last tokens, positions and slots; a row new
        to the batch gets its sampler counters (its first token came from its prompt's chunk)."""
        b, s = self.llama.backend, self.llama.s
        old = self.members
        self.rows, self.members = seqs, set(seqs)
        self._submitted = 0
        if not seqs:
            return
        for q in seqs:
            if q not in old:
                g = len(q.generated)
                b.write(s.state, np.array([q.request.seed, g, q.n_prompt + g, 0], np.uint32), offset=q.slot * 16)
        self._base = [q.n_prompt + len(q.generated) - 1 for q in seqs]
        self._steps_left = min(q.remaining for q in seqs)
        self._covered = min(q.table.capacity - base for q, base in zip(seqs, self._base, strict=True))
        head = head_of(seqs)
        self.llama.ensure_rows(len(seqs))
        self._lists = [self.llama.decode_list(head, len(seqs), k) for k in range(RUN_AHEAD)]
        b.write(s.tokens, np.array([q.generated[-1] for q in seqs], np.uint32))
        b.write(s.row_positions, np.array(self._base, np.uint32))
        b.write(s.row_seqs, np.array([q.slot for q in seqs], np.uint32))

    def fill(self) -> None:
        """Submit decode steps until `depth` are in flight or a row would pass its max_tokens."""
        llama = self.llama
        while self.rows and len(self.in_flight) < self.depth and self._submitted < self._steps_left:
            k = self._submitted
            if k >= self._covered:  # a row's step k opens a block
                for q, base in zip(self.rows, self._base, strict=True):
                    self._cover(q, base + k + 1)
                self._covered = min(q.table.capacity - base for q, base in zip(self.rows, self._base, strict=True))
            if llama.weights.host_embed is not None:
                llama.backend.write(llama.s.x, llama.host_rows([q.generated[-1] for q in self.rows]))
            cmd = self._lists[self._recording]
            llama.backend.submit(cmd)
            self.in_flight.append((cmd, self._recording, self.rows))
            self._recording = (self._recording + 1) % RUN_AHEAD
            self._submitted += 1

    def read(self) -> list[tuple[Sequence, int]]:
        """The oldest step in flight's token for each of its rows."""
        cmd, recording, rows = self.in_flight.popleft()
        tokens = self.llama.backend.read_after(cmd, self.llama.s.readback[recording])
        return list(zip(rows, (int(t) for t in tokens[: len(rows)]), strict=True))
