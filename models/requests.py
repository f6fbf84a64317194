"""What the engine is asked (`Request`), what it answers (`Event`) and its record of one request
while it is served (`Sequence`). Read this first, then scheduler.py, rows.py and engine.py.

A sequence's positions: its prompt fills 0..n_prompt-1; the token generated at index g is fed
back at position n_prompt + g, so a sequence of max_tokens new tokens writes at most
n_prompt + max_tokens - 1 positions (the last token sampled is never fed back).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from .kv_blocks import BlockTable
from .sampling import GREEDY, Sampling, Stats

FINISH_REASONS = ("stop", "length", "cancelled")
_ids = itertools.count(1)


@dataclass(frozen=True)
class Request:
    """One generation: prompt token ids, how many new tokens at most, how each is chosen, and the
    ids that end it (the end id is the last token reported)."""

    ids: tuple[int, ...]
    max_tokens: int
    sampling: Sampling = GREEDY
    seed: int = 0
    stop: frozenset[int] = frozenset()
    id: int = field(default_factory=lambda: next(_ids))


@dataclass(frozen=True)
class Event:
    """A sequence's new token (None when it ends without one: cancelled), and on its last event,
    why it ended: "stop" (a stop id), "length" (max_tokens) or "cancelled"."""

    seq: int
    token: int | None
    finish_reason: str | None = None


class Sequence:
    """The engine's record of a request being served: its slot and blocks, how much of the prompt
    has its KV written, the tokens generated and its timings."""

    def __init__(self, request: Request, table: BlockTable):
        self.request = request
        self.table = table
        self.slot: int | None = None  # the device's per-sequence row (block table, sampler state)
        self.computed = 0  # prompt positions whose KV is written (or reused)
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.added = time.perf_counter()
        self.stats = Stats(prompt_tokens=len(request.ids), seed=request.seed)

    @property
    def id(self) -> int:
        return self.request.id

    @property
    def n_prompt(self) -> int:
        return len(self.request.ids)

    @property
    def positions(self) -> int:
        """The most positions this sequence writes (its KV reservation)."""
        return self.n_prompt + self.request.max_tokens - 1

    @property
    def prefilling(self) -> bool:
        return self.computed < self.n_prompt

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def remaining(self) -> int:
        """Tokens it may still generate."""
        return self.request.max_tokens - len(self.generated)

    @property
    def written(self) -> list[int]:
        """The ids whose KV entries are written: the prompt, then every generated token fed back."""
        return [*self.request.ids[: self.computed], *self.generated[:-1]]

    def take(self, token: int) -> Event:
        """Record a generated token; its event ends the sequence at a stop id or at max_tokens."""
        self.generated.append(token)
        self.stats.generated_tokens = len(self.generated)
        if len(self.generated) == 1:
            self.stats.first_token_s = self.stats.prefill_s = time.perf_counter() - self.added
        if token in self.request.stop:
            self.finish_reason = "stop"
        elif self.remaining == 0:
            self.finish_reason = "length"
        self.stats.finish_reason = self.finish_reason
        return Event(self.id, token, self.finish_reason)

    def cancel(self) -> Event:
        self.finish_reason = self.stats.finish_reason = "cancelled"
        return Event(self.id, None, "cancelled")
