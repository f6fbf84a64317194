"""The thread that owns the model's engine: every request's choices are sequences of the engine,
decoded together (continuous batching), their events handed to each request's task.

The engine is stepped from this one thread (its lock would let several, but each hand-over of the
interpreter lock between threads costs the engine time): the event loop only posts requests and
cancellations to the inbox. At most `max_streams` sequences are in the engine at once; the rest wait
here in arrival order, and more than `max_queue` waiting get a 429 (ServerBusy). A request's items
travel back through its Handover in batches (handover.py). A task that stops listening (its client
disconnected) posts a cancellation: its sequences leave the engine before the next step, their KV
blocks freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shaderbay.models.engine import Engine
from shaderbay.models.generation import TextStream
from shaderbay.models.requests import Sequence

from . import adapter
from .handover import Handover, Pace, Waker
from .metrics import Metrics

log = logging.getLogger("shaderbay.serve")

# Seconds between a stream's chunks after its first: tokens made faster share a chunk. 10 ms is
# below what a reader sees and keeps the server's share of the interpreter small (handover.py).
DEFAULT_STREAM_INTERVAL = 0.01
DEFAULT_MAX_STREAMS = 16  # `shaderbay serve --max-streams`
# Seconds the engine thread waits at most, when one request is all it serves, for that request's task
# to send its first text on, so that the event loop does not queue for the interpreter lock behind
# the engine on its way to the first chunk (the time to first token). Never while others are served.
FIRST_CHUNK_WAIT = 0.05


class ServerBusy(Exception):
    """More requests are waiting than the server admits (--max-queue)."""


class EngineFailed(Exception):
    """An engine step failed under the request (`cause`); the worker has logged it, once for all of them."""

    def __init__(self, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


_DONE = object()  # the last item of every request that finished
_ADD, _CANCEL = "add", "cancel"


@dataclass(eq=False)
class _Job:
    """One request (its choices) between the engine thread and the request's task."""

    handover: Handover
    choices: list[_Choice] = field(default_factory=list)
    left: int = 0  # choices not finished yet
    opened: bool = False  # its first text is sent
    done: bool = False  # (engine thread) ended: finished, failed or cancelled


@dataclass(eq=False)
class _Choice:
    """One choice of a request: its sequence in the engine and the text layer over its events."""

    job: _Job
    index: int
    prepared: adapter.Prepared
    seq: Sequence | None = None
    text: TextStream | None = None
    generated: list[int] = field(default_factory=list)  # the ids of its text events (for logprobs)
    opened: bool = False  # its first text is sent


class Worker:
    def __init__(self, model: Any, max_streams: int, max_queue: int, stream_interval: float, metrics: Metrics):
        self.model = model
        self.engine = model.engine
        self.max_streams = max_streams
        self.max_queue = max_queue
        self.pace = Pace(stream_interval)
        self.waker = Waker()
        self.metrics = metrics
        self.waiting = 0  # sequences not yet decoding (set by the engine thread)
        self._inbox: queue.SimpleQueue[tuple[str, _Job] | None] = queue.SimpleQueue()
        self._admitted = 0  # sequences running or waiting; changed only on the event loop's thread
        self._live: dict[int, _Choice] = {}  # by sequence id: in the engine
        self._pending: deque[_Choice] = deque()  # admitted here, waiting for room in the engine
        self._scoring: list[_Choice] = []  # finished, waiting for their log-probabilities
        self._thread = threading.Thread(target=self._serve, name="shaderbay-engine", daemon=True)
        self._thread.start()

    async def run(self, prepared: list[adapter.Prepared]) -> AsyncIterator[list[tuple[int, Any]]]:
        """The items (see adapter.events) of a request's choices, as (choice index, item), in batches:
        all those produced since the caller last asked. An error is raised after the items before it."""
        n = len(prepared)
        if self._admitted + n > self.max_streams + self.max_queue:
            raise ServerBusy(
                f"the server already has {self._admitted} sequences running or waiting (--max-streams "
                f"{self.max_streams}, --max-queue {self.max_queue}): retry later"
            )
        job = _Job(Handover(asyncio.get_running_loop(), self.pace, self.waker))
        job.choices = [_Choice(job, i, p) for i, p in enumerate(prepared)]
        job.left = n
        self._admitted += n
        self._inbox.put((_ADD, job))
        finished = False
        try:
            while True:
                batch = await job.handover.take()
                items = [item for item in batch if type(item) is tuple]
                if items:
                    yield items
                    if job.opened:  # the first text has been sent on (see FIRST_CHUNK_WAIT)
                        job.handover.first_sent.set()
                for item in batch:
                    if isinstance(item, BaseException):
                        finished = True
                        raise item
                if batch[-1] is _DONE:
                    finished = True
                    return
        finally:
            job.handover.first_sent.set()
            if not finished:
                self._inbox.put((_CANCEL, job))
            self._admitted -= n

    def close(self) -> None:
        """Cancel what runs and waits, and stop the thread."""
        self._inbox.put(None)
        self._thread.join()

    # --- the engine thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        engine, metrics = self.engine, self.metrics
        shown = (-1, -1)
        while True:
            self.waker.flush()  # what the last turn sent (a failed step's errors too), before waiting for work
            idle = engine.idle and not self._pending and not self._scoring
            if not self._read_inbox(block=idle):
                break
            while self._pending and len(self._live) < self.max_streams:
                self._start(self._pending.popleft())
            opened = None
            if not engine.idle:
                try:
                    engine.step()
                except Exception as exc:  # noqa: BLE001 - its requests end with the error (a 500), others go on
                    engine = self._recover(exc)
                    continue
                tokens = 0
                for choice in list(self._live.values()):
                    tokens, opened = self._route(choice, tokens, opened)
                if tokens:
                    metrics.step_tokens.observe(tokens)
            if self._scoring:
                self._score()
            counts = (len(engine.scheduler.running), len(self._pending) + len(engine.scheduler.waiting))
            if counts != shown:
                shown = counts
                self.pace.streams(len(self._live))
                metrics.running_sequences.set(counts[0])
                metrics.queue_length.set(counts[1])
                self.waiting = counts[1]
            self.waker.flush()  # before waiting for the first chunk to go out
            if opened is not None and len(self._live) <= 1 and self._inbox.empty():
                opened.handover.first_sent.wait(FIRST_CHUNK_WAIT)
        for choice in [*self._live.values(), *self._pending, *self._scoring]:
            self._drop(choice)
            if not choice.job.done:
                choice.job.done = True
                choice.job.handover.send(_DONE, urgent=True)
        self.waker.flush()

    def _read_inbox(self, block: bool) -> bool:
        """Take the requests and cancellations posted (waiting for one if `block`); False at close."""
        while True:
            if not block and self._inbox.empty():  # the usual case between two steps: no exception raised
                return True
            message = self._inbox.get()
            if message is None:
                return False
            kind, job = message
            if kind == _ADD:
                self._pending.extend(job.choices)
            elif not job.done:
                job.done = True
                for choice in job.choices:
                    self._drop(choice)
            block = False

    def _recover(self, exc: Exception) -> Engine:
        """After a failed step: the requests in the engine end with the error, and a new engine on the
        same model serves the next ones (the failed one's rows, steps in flight and blocks are in no
        known state; its cached prefixes go with it). A backend that stays broken fails each step
        again, and each request gets its 500."""
        log.error(
            "the engine failed a step (%s: %s): its requests get a 500, the server goes on",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        affected = [*self._live.values(), *self._scoring]
        self._live.clear()
        self._scoring.clear()
        for choice in affected:
            choice.seq = None  # gone with the old engine: nothing to cancel
        llama = self.engine.llama
        with contextlib.suppress(Exception):  # the new engine's writes must not race the old steps in flight
            llama.backend.wait()
        # the engine thread is the model's only user (the server's logprobs pass goes through model.engine too)
        self.model.engine = self.engine = Engine(llama)
        failed = EngineFailed(exc)
        for choice in affected:
            self._fail(choice.job, failed)
        return self.engine

    def _start(self, choice: _Choice) -> None:
        prepared = choice.prepared
        try:
            choice.seq = self.engine.add(prepared.request)
        except Exception as exc:  # noqa: BLE001 - a request the engine refuses (typed): its task answers with it
            self._fail(choice.job, exc)
            return
        choice.text = self.model.text_stream(prepared.settings, choice.seq.stats)
        self._live[choice.seq.id] = choice

    def _route(self, choice: _Choice, tokens: int, opened: _Job | None) -> tuple[int, _Job | None]:
        """Hand the choice's new events on as text; (tokens routed so far, the job whose first text went)."""
        events = self.engine.take(choice.seq)
        if not events:
            return tokens, opened
        job, text, send = choice.job, choice.text, choice.job.handover.send
        for event in events:
            tokens += event.token is not None
            for piece in text.push(event):
                if not choice.opened:  # the prompt's size goes just before its first text
                    choice.opened = True
                    send((choice.index, adapter.Prompt(choice.seq.n_prompt)))
                urgent = not job.opened  # the request's first text goes at once (the time to first token)
                if urgent:
                    job.opened, opened = True, job
                send((choice.index, piece), urgent=urgent)
                choice.generated.extend(piece.token_ids)
            if text.done:
                break
        if text.done:
            del self._live[choice.seq.id]
            if not choice.seq.finished:  # a stop string: the sequence ends here
                self._drop(choice)
            if choice.prepared.top_logprobs is not None:
                self._scoring.append(choice)
            else:
                self._finish(choice)
        return tokens, opened

    def _score(self) -> None:
        """The log-probabilities of the finished choices whose slot and blocks are free again (the
        engine gives them back at its next step): one pass over each one's tokens, between steps."""
        for choice in [c for c in self._scoring if c.seq.slot is None]:
            self._scoring.remove(choice)
            ids, top = list(choice.prepared.request.ids), choice.prepared.top_logprobs
            try:
                scored = adapter.token_logprobs(self.model, ids, choice.generated, top)
            except Exception as exc:  # noqa: BLE001 - handed to the request's task, which answers with it
                self._fail(choice.job, exc)
                continue
            choice.job.handover.send((choice.index, adapter.Logprobs(scored)))
            self._finish(choice)

    def _finish(self, choice: _Choice) -> None:
        job = choice.job
        job.left -= 1
        if job.left == 0 and not job.done:
            job.done = True
            job.handover.send(_DONE, urgent=True)

    def _fail(self, job: _Job, exc: Exception) -> None:
        if job.done:
            return
        job.done = True
        for choice in job.choices:
            self._drop(choice)
        job.handover.send(exc, urgent=True)

    def _drop(self, choice: _Choice) -> None:
        """Take a choice out of the engine (cancelled: its blocks freed) and out of the waiting lists."""
        seq = choice.seq
        if seq is None:
            with contextlib.suppress(ValueError):
                self._pending.remove(choice)
            return
        self._live.pop(seq.id, None)
        with contextlib.suppress(ValueError):
            self._scoring.remove(choice)
        if not seq.finished:
            with contextlib.suppress(Exception):  # a failed backend: the sequence is gone either way
                self.engine.cancel(seq)
        self.engine.take(seq)  # its last events: nobody listens
