"""A tracer shared by every backend: CPU spans always, GPU durations where measured.

Disabled by default, and then a span costs one attribute test. Its events are Chrome trace
events: `shaderbay bench --trace` writes them, merged per backend (benches.probe.Tracks), for
Perfetto or chrome://tracing.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

_NO_SPAN = nullcontext()


class Tracer:
    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self.events: list[dict[str, Any]] = []
        self._t0 = time.perf_counter_ns()

    def span(self, name: str, cat: str = "cpu", **args: Any) -> AbstractContextManager:
        if not self.enabled:
            return _NO_SPAN  # the per-token path: no generator, no allocation
        return self._span(name, cat, args)

    @contextmanager
    def _span(self, name: str, cat: str, args: dict[str, Any]):
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.add(name, cat, start, time.perf_counter_ns() - start, **args)

    def add(self, name: str, cat: str, start_ns: int, dur_ns: int, tid: str | None = None, **args: Any) -> None:
        if self.enabled:
            self.events.append(
                {
                    "name": name,
                    "cat": cat,
                    "ph": "X",
                    "ts": (start_ns - self._t0) / 1000.0,
                    "dur": dur_ns / 1000.0,
                    "pid": os.getpid(),
                    "tid": tid or threading.current_thread().name,
                    "args": args,
                }
            )

    def add_gpu(self, timings: list[tuple[str, float]], start_ns: int | None = None) -> None:
        """Per-dispatch GPU durations (ns), laid end to end on a 'gpu' track."""
        if not self.enabled:
            return
        t = start_ns if start_ns is not None else time.perf_counter_ns()
        for label, dur in timings:
            self.add(label, "gpu", int(t), int(dur), tid="gpu")
            t += dur
