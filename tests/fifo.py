"""Opening a FIFO blocks until its other end opens: a loader that forgets to check for a regular
file hangs rather than fails. `outcome_without_blocking` runs the load in a thread and lets a
blocked one go (by opening the other end), so such a regression fails the test instead of hanging CI."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


def outcome_without_blocking(load: Callable[[], object], fifo: Path, wait_s: float = 10) -> BaseException | None:
    """What `load()` raised (None if it returned); AssertionError if it blocked on `fifo`."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            load()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(wait_s)
    hung = thread.is_alive()
    if hung:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join()
    assert not hung, f"the loader blocked on the FIFO {fifo}"
    return outcome[0]
