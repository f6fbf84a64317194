"""Instrumenting a backend from the outside: host time inside its API, waits, submitted command lists.

`Probe(backend)` wraps the backend instance's public entry points (the class is untouched, so
other backends in the process are unaffected). Every outermost API call adds its wall and
thread-CPU time, minus any `wait` nested inside it (`read` waits for submitted work first),
to the API totals; `wait` adds to the wait totals. Command lists the backend hands out get
their `dispatch`/`copy` (recording) wrapped the same way. While `active` is False the
wrappers only forward, so a probe can stay attached (a model may keep bound methods) at the
cost of one extra Python call.

`Tracks` merges the tracers of several backends and the harness's own spans into one Chrome
trace, one process row per backend.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shaderbay.trace import Tracer

API_METHODS = ("submit", "write", "read", "read_after", "upload", "empty", "buffer", "free", "pipeline", "command_list")
RECORD_METHODS = ("dispatch", "copy")


@dataclass
class Counters:
    api_wall_ns: int = 0
    api_cpu_ns: int = 0
    wait_wall_ns: int = 0
    wait_cpu_ns: int = 0
    submits: int = 0
    by_call: dict[str, list[int]] = field(default_factory=dict)  # name -> [calls, wall_ns, cpu_ns]

    def copy(self) -> Counters:
        return Counters(
            self.api_wall_ns,
            self.api_cpu_ns,
            self.wait_wall_ns,
            self.wait_cpu_ns,
            self.submits,
            {k: list(v) for k, v in self.by_call.items()},
        )

    def __sub__(self, other: Counters) -> Counters:
        by_call = {}
        for name, (n, w, c) in self.by_call.items():
            n0, w0, c0 = other.by_call.get(name, (0, 0, 0))
            if n - n0:
                by_call[name] = [n - n0, w - w0, c - c0]
        return Counters(
            self.api_wall_ns - other.api_wall_ns,
            self.api_cpu_ns - other.api_cpu_ns,
            self.wait_wall_ns - other.wait_wall_ns,
            self.wait_cpu_ns - other.wait_cpu_ns,
            self.submits - other.submits,
            by_call,
        )

    def add_call(self, name: str, wall_ns: int, cpu_ns: int) -> None:
        entry = self.by_call.setdefault(name, [0, 0, 0])
        entry[0] += 1
        entry[1] += wall_ns
        entry[2] += cpu_ns

    def wall_ns(self, *names: str) -> int:
        return sum(self.by_call.get(n, (0, 0, 0))[1] for n in names)


class Probe:
    def __init__(self, backend: Any, active: bool = True):
        self.backend = backend
        self.active = active
        self.counters = Counters()
        self.submitted: list[tuple[Any, int]] = []  # (command list, perf_counter_ns at submit) since take_submitted
        self._depth = 0
        self._nested_wall = 0
        self._nested_cpu = 0
        for name in API_METHODS:
            if hasattr(backend, name):
                setattr(backend, name, self._wrap(name, getattr(backend, name)))
        backend.wait = self._wrap_wait(backend.wait)
        backend.wait_for = self._wrap_wait(backend.wait_for)
        if hasattr(backend, "_prepare"):  # runs inside the first submit of a list: timed on its own too
            backend._prepare = self._wrap_inner("prepare", backend._prepare)

    # --- wrapping -------------------------------------------------------------------------------
    def _wrap(self, name: str, fn: Any) -> Any:
        counters = self.counters
        perf, cpu = time.perf_counter_ns, time.thread_time_ns

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.active or self._depth:
                result = fn(*args, **kwargs)
            else:
                self._depth = 1
                self._nested_wall = self._nested_cpu = 0
                w0, c0 = perf(), cpu()
                try:
                    result = fn(*args, **kwargs)
                finally:
                    wall = perf() - w0 - self._nested_wall
                    used = cpu() - c0 - self._nested_cpu
                    self._depth = 0
                    counters.api_wall_ns += wall
                    counters.api_cpu_ns += used
                    counters.add_call(name, wall, used)
                    if name == "submit":
                        counters.submits += 1
                        self.submitted.append((args[0] if args else kwargs.get("cmd"), w0))
            if name == "command_list" and result is not None:
                for rec in RECORD_METHODS:
                    setattr(result, rec, self._wrap(rec, getattr(result, rec)))
            return result

        return wrapper

    def _timed(self, fn: Any, record: Any) -> Any:
        """`fn` forwarded; while the probe is active its wall and thread-CPU time go to `record(wall, cpu)`."""
        perf, cpu = time.perf_counter_ns, time.thread_time_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return fn(*args, **kwargs)
            w0, c0 = perf(), cpu()
            try:
                return fn(*args, **kwargs)
            finally:
                record(perf() - w0, cpu() - c0)

        return timed

    def _wrap_inner(self, name: str, fn: Any) -> Any:
        """A call nested inside another API call: counted in `by_call` only (its caller's time includes it)."""
        counters = self.counters
        return self._timed(fn, lambda wall, used: counters.add_call(name, wall, used))

    def _wrap_wait(self, fn: Any) -> Any:
        counters = self.counters

        def record(wall: int, used: int) -> None:
            counters.wait_wall_ns += wall
            counters.wait_cpu_ns += used
            if self._depth:  # inside an API call: taken off that call's time
                self._nested_wall += wall
                self._nested_cpu += used

        return self._timed(fn, record)

    # --- reading ----------------------------------------------------------------------------------
    def snapshot(self) -> Counters:
        return self.counters.copy()

    def take_submitted(self) -> list[tuple[Any, int]]:
        out, self.submitted = self.submitted, []
        return out

    def gpu_timings(self, submitted: list[tuple[Any, int]]) -> tuple[list[tuple[Any, list, int]], bool]:
        """(command list, GPU timings, submit time) of each distinct list submitted, and whether that is all.

        `gpu_timings` reports a list's last completed submit only, so a list submitted twice in the
        window is counted once: the result is then flagged incomplete.
        """
        seen: dict[int, tuple[Any, int]] = {}
        complete = True
        for cmd, start in submitted:
            if cmd is None:
                continue
            if id(cmd) in seen:
                complete = False
            seen[id(cmd)] = (cmd, start)
        out = []
        for cmd, start in seen.values():
            try:
                timings = self.backend.gpu_timings(cmd)
            except Exception:  # noqa: BLE001 - a backend bug here must not end the bench
                timings = None
            if timings is None:
                return [], False
            out.append((cmd, list(timings), start))
        return out, complete


# --- traces ------------------------------------------------------------------------------------


class Tracks:
    """One Chrome trace from many tracers: a process row per backend, the harness's spans on a 'bench' track."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter_ns()
        self.rows: list[tuple[str, list[Tracer]]] = []
        self.harness: dict[str, Tracer] = {}

    def _row(self, name: str) -> list[Tracer]:
        for row_name, tracers in self.rows:
            if row_name == name:
                return tracers
        self.rows.append((name, []))
        return self.rows[-1][1]

    def attach(self, name: str, tracer: Tracer) -> None:
        row = self._row(name)
        if tracer not in row:
            row.append(tracer)

    def bench_tracer(self, name: str) -> Tracer:
        if name not in self.harness:
            self.harness[name] = Tracer(enabled=True)
            self.attach(name, self.harness[name])
        return self.harness[name]

    @contextmanager
    def span(self, backend: str, name: str, **args: Any):
        tracer = self.bench_tracer(backend)
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            tracer.add(name, "bench", start, time.perf_counter_ns() - start, tid="bench", **args)

    def chrome_trace(self) -> dict[str, Any]:
        events: list[dict[str, Any]] = []
        for pid, (name, tracers) in enumerate(self.rows, start=1):
            events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
            events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
            for tracer in tracers:
                shift = (getattr(tracer, "_t0", self.t0) - self.t0) / 1000.0
                for ev in tracer.events:
                    ev = dict(ev)
                    ev["pid"] = pid
                    ev["ts"] = ev.get("ts", 0.0) + shift
                    ev["tid"] = str(ev.get("tid", "main"))
                    ev["args"] = {k: _jsonable(v) for k, v in (ev.get("args") or {}).items()}
                    events.append(ev)
        return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"pid": os.getpid()}}


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
