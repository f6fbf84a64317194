"""How one request's items travel from the engine thread to its asyncio task: in batches.

The task takes everything sent since it last took; the engine thread wakes the event loop only when
the task is waiting, and then at most once per the pace's interval unless the item is urgent (a
stream's first text, its end, an error), so a task busy sending (or a loop busy with others) costs the
engine no wake-ups and no hand-overs of the interpreter lock, and catches up in one piece. Each
wake-up and chunk costs the event loop about 0.1 ms of the interpreter lock, which the engine thread
then lacks: on a model making a token in 0.35-0.5 ms, a chunk per token cost 23-29% of the tokens/s;
64 streams at a chunk each every 10 ms kept the loop busy most of the time, and the engine at 83% of
its rate (benches/RESULTS.md, issue 16). So the interval grows with the streams (Pace), and the
tasks due a wake-up are woken together once the engine thread has routed a step's tokens (Waker):
each wake-up from another thread is a write to the loop's self-pipe, ~40 us of the engine thread.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Chunks a second the event loop sends at most, all streams together (urgent items aside): about 5%
# of the interpreter lock at ~0.1 ms a chunk
LOOP_CHUNKS_PER_S = 500


@dataclass
class Pace:
    """The least time between two wake-ups of a stream for items that are not urgent: the server's
    stream interval, or longer when so many streams are live that their chunks would crowd the loop
    (none asked for, 0: a chunk per token, whatever it costs)."""

    stream_interval: float  # seconds
    interval: float = 0.0

    def __post_init__(self) -> None:
        self.streams(1)

    def streams(self, live: int) -> None:
        """(engine thread) `live` streams are being decoded."""
        self.interval = self.stream_interval and max(self.stream_interval, live / LOOP_CHUNKS_PER_S)


class Waker:
    """(engine thread) The waiting tasks of every Handover that are due a wake-up, woken together by
    `flush` in one call into the event loop."""

    def __init__(self) -> None:
        self._due: list[asyncio.Future] = []

    def add(self, waiting: asyncio.Future) -> None:
        self._due.append(waiting)

    def flush(self) -> None:
        if not self._due:
            return
        due, self._due = self._due, []
        try:
            due[0].get_loop().call_soon_threadsafe(_wake, due)  # the server's one loop
        except RuntimeError:  # the event loop has closed (shutdown): nobody listens any more
            pass


@dataclass
class Handover:
    loop: asyncio.AbstractEventLoop
    pace: Pace  # shared by every request's Handover
    waker: Waker  # the same
    # set by the task once it has sent its first text on (or has gone): see Worker's FIRST_CHUNK_WAIT
    first_sent: threading.Event = field(default_factory=threading.Event)
    _pending: list = field(default_factory=list)
    _waiting: asyncio.Future | None = None  # the task's, while it waits for items
    # perf_counter time before which only urgent items wake the task: none before the first urgent one
    _next_wake: float = math.inf
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, item: Any, *, urgent: bool = False) -> None:
        """(engine thread) Queue `item`, waking the task at the waker's next flush if it is due; an item held
        back goes with the next one (there is always one: every request ends with an urgent item)."""
        with self._lock:
            self._pending.append(item)
            now = time.perf_counter()
            if urgent:
                self._next_wake = now
            if self._waiting is None or now < self._next_wake:
                return
            waiting, self._waiting, self._next_wake = self._waiting, None, now + self.pace.interval
        self.waker.add(waiting)

    async def take(self) -> list[Any]:
        """(event loop) Every item sent since the last take, waiting for one if there is none."""
        waiting = None
        with self._lock:
            if not self._pending:
                self._waiting = waiting = self.loop.create_future()
        if waiting is not None:
            await waiting
        with self._lock:
            batch, self._pending = self._pending, []
        return batch


def _wake(due: list[asyncio.Future]) -> None:
    for waiting in due:
        if not waiting.done():  # not given up on (a cancelled task)
            waiting.set_result(None)
