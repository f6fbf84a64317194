"""A backend's lock, its closed flag and its releases: what lets several threads share a backend
and lets the garbage collector release one nobody closed.

Every public call into a backend holds its lock (`serialised`), so calls from several threads run
one at a time. A finalizer never calls into a driver from the thread the garbage collector
happens to run on while the backend is live: a Buffer collected without `free` queues its release
(`Lifetime.collected`), and the next call into the backend runs it, under the lock. The backend's
own finalizer (`Lifetime.release_when_collected`) runs only once the backend is unreachable, when
no thread can be inside its calls, or at interpreter exit, when it first takes the lock.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# at interpreter exit a daemon thread may still be inside a call: wait this long for it, then
# leave the device to the operating system rather than free it under that thread
EXIT_WAIT_S = 10.0


class Lifetime:
    """Shared by a backend and its finalizer; refers to nothing that refers to the backend."""

    __slots__ = ("lock", "closed", "deferred", "__weakref__")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.closed = False
        # (bytes, release or None) of buffers collected without free, queued by their finalizers on
        # any thread (deque appends and pops are atomic); dropped at close, which releases everything
        self.deferred: deque[tuple[int, Callable[[], None] | None]] = deque()

    def collected(self, buffer: object, size: int, release: Callable[[], None] | None) -> weakref.finalize:
        """Queue `release` (which must not refer to `buffer` or its backend) when `buffer` is collected."""
        fin = weakref.finalize(buffer, self.deferred.append, (size, release))
        fin.atexit = False  # at exit the buffer may still be in use (a daemon thread); the device goes anyway
        return fin

    def run_deferred(self, backend: Any) -> None:
        while self.deferred:
            size, release = self.deferred.popleft()
            backend.bytes_allocated -= size
            if release is not None:
                release()

    def release_when_collected(self, owner: object, release: Callable[[], None]) -> weakref.finalize:
        """Call `release` (which must not refer to `owner`) once: when the returned finalizer is
        called (from close), when `owner` is garbage-collected, or at interpreter exit."""
        return weakref.finalize(owner, _finalize, self, release)


def _finalize(life: Lifetime, release: Callable[[], None]) -> None:
    if not life.lock.acquire(timeout=EXIT_WAIT_S):
        return
    try:
        if not life.closed:
            life.closed = True
            life.deferred.clear()
            release()
    finally:
        life.lock.release()


def serialised(method: F) -> F:
    """A backend method that holds the backend's lock, after running the releases finalizers queued."""

    @functools.wraps(method)
    def locked(self, *args: Any, **kwargs: Any) -> Any:
        life = self._life
        with life.lock:
            if life.deferred and not life.closed:
                life.run_deferred(self)
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]
