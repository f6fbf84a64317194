"""The thread that owns the model: requests wait in one queue and run one at a time, in arrival
order, so none is lost or interleaved (until the batching engine runs many streams together).

A request's items travel back to its asyncio task in batches (see _Job): a task that falls behind
the model gets all that is waiting at once, and sends it on as one piece, and tokens that come
faster than one per `interval` share a batch. After a request's first text the worker waits
until its task has sent that on, so that the event loop does not queue for the interpreter lock
behind the model on its way to the first chunk (the time to first token). A task that stops
listening (its client disconnected) sets `cancelled`: the worker closes that generation at the
next token and moves on to the next request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from . import adapter

log = logging.getLogger("shaderbay.serve")

# Seconds between a stream's chunks after its first: tokens made faster share a chunk. 10 ms is
# below what a reader sees and keeps the server's share of the interpreter small (see _Job).
DEFAULT_STREAM_INTERVAL = 0.01
# Seconds the worker waits at most for a task to send its first text on (a task that is slower than
# this is not worth idling the model for).
FIRST_CHUNK_WAIT = 0.05


class ServerBusy(Exception):
    """More requests are running or waiting than the server admits (--max-streams)."""


@dataclass
class _Job:
    """One request between the worker thread, which sends its items, and its task, which takes them.

    The task takes everything sent since it last took; the worker wakes the event loop only when the
    task is waiting, and then at most once per `interval` unless the item is urgent, so a task busy
    sending (or a loop busy with others) costs the model no wake-ups and no hand-overs of the
    interpreter lock, and catches up in one piece. Each wake-up and chunk costs the event loop about
    0.1 ms of the interpreter lock, which the model thread then lacks: on a model making a token in
    0.35-0.5 ms, a chunk per token cost 23-29% of the tokens/s (benches/RESULTS.md, issue 16)."""

    request: adapter.Request
    loop: asyncio.AbstractEventLoop
    interval: float  # seconds: the least time between two wake-ups for items that are not urgent
    cancelled: threading.Event = field(default_factory=threading.Event)
    # set when the task comes back after taking the first text (it has sent that on), or has gone
    first_sent: threading.Event = field(default_factory=threading.Event)
    _text_taken: bool = False  # (event loop)
    _pending: list = field(default_factory=list)
    _waiting: asyncio.Future | None = None  # the task's, while it waits for items
    # perf_counter time before which only urgent items wake the task: none before the first text event
    _next_wake: float = math.inf
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, item: Any, *, urgent: bool = False) -> None:
        """(worker thread) Queue `item`; an item held back goes with the next one (there is always one:
        every job ends with an urgent _DONE)."""
        with self._lock:
            self._pending.append(item)
            now = time.perf_counter()
            if urgent:
                self._next_wake = now
            if self._waiting is None or now < self._next_wake:
                return
            waiting, self._waiting, self._next_wake = self._waiting, None, now + self.interval
        try:
            self.loop.call_soon_threadsafe(_wake, waiting)
        except RuntimeError:  # the event loop has closed (shutdown): nobody is listening any more
            self.cancelled.set()

    async def take(self) -> list[Any]:
        """(event loop) Every item sent since the last take, waiting for one if there is none."""
        if self._text_taken and not self.first_sent.is_set():
            self.first_sent.set()
        waiting = None
        with self._lock:
            if not self._pending:
                self._waiting = waiting = self.loop.create_future()
        if waiting is not None:
            await waiting
        with self._lock:
            batch, self._pending = self._pending, []
        self._text_taken = self._text_taken or any(isinstance(item, adapter.TextEvent) for item in batch)
        return batch


def _wake(waiting: asyncio.Future) -> None:
    if not waiting.done():  # not given up on (a cancelled task)
        waiting.set_result(None)


_DONE = object()  # the last item of every job


class Worker:
    def __init__(
        self,
        model: Any,
        max_streams: int,
        stream_interval: float,
        on_queue_change: Callable[[int], None] = lambda n: None,
    ):
        self.model = model
        self.max_streams = max_streams
        self.stream_interval = stream_interval
        self._on_queue_change = on_queue_change
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._admitted = 0  # running + waiting; changed only on the event loop's thread
        self._thread = threading.Thread(target=self._serve, name="shaderbay-model", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    async def run(self, request: adapter.Request) -> AsyncIterator[list[Any]]:
        """The request's items (see adapter.events) in batches: all those the model produced since
        the caller last asked. An error of the generation is raised here, after the items before it."""
        if self._admitted >= self.max_streams:
            raise ServerBusy(
                f"the server already has {self._admitted} requests running or waiting (--max-streams "
                f"{self.max_streams}): retry later"
            )
        job = _Job(request, asyncio.get_running_loop(), self.stream_interval)
        self._admitted += 1
        self._jobs.put(job)
        self._on_queue_change(self.waiting)
        try:
            while True:
                batch = await job.take()
                items = [item for item in batch if item is not _DONE and not isinstance(item, BaseException)]
                if items:
                    yield items
                for item in batch:
                    if isinstance(item, BaseException):
                        raise item
                if batch[-1] is _DONE:
                    return
        finally:
            job.cancelled.set()
            job.first_sent.set()
            self._admitted -= 1

    def close(self) -> None:
        """Finish the running request, drop the waiting ones' work, and stop the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._on_queue_change(self.waiting)
            if not job.cancelled.is_set():
                self._run(job)
            job.send(_DONE, urgent=True)

    def _run(self, job: _Job) -> None:
        items = adapter.events(self.model, job.request)
        first = True  # the first text event goes at once (the time to first token)
        try:
            for item in items:
                if job.cancelled.is_set():
                    break
                text = isinstance(item, adapter.TextEvent)
                job.send(item, urgent=text and first)
                if text and first:
                    job.first_sent.wait(FIRST_CHUNK_WAIT)
                first = first and not text
        except Exception as exc:  # noqa: BLE001 - handed to the request's task, which answers with it
            job.send(exc, urgent=True)
        finally:
            items.close()  # ends the generation now, so the next request finds the model free
