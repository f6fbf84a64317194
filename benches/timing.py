"""Timing dispatches on a backend: GPU timestamps where it gives them, else wall time over replays."""

from __future__ import annotations

import statistics
import time
from typing import Any


def _record(backend: Any, rounds: list[list], times: int, label: str) -> Any:
    cmd = backend.command_list(label)
    for i in range(times):
        for pipe, bindings, params in rounds[i % len(rounds)]:
            cmd.dispatch(pipe, bindings, label=label, **params)
    return cmd


def timed_run(backend: Any, cmd: Any) -> int:
    t0 = time.perf_counter_ns()
    backend.run(cmd)
    return time.perf_counter_ns() - t0


def time_pieces(
    backend: Any, pieces: list, label: str, min_time: float = 0.1, max_runs: int = 50, rounds: list | None = None
) -> tuple[float, str]:
    """ns for one execution of `pieces` (a case's dispatches), and the source: 'gpu' or 'wall'.

    Either way the list holds enough copies of the dispatches to keep the device busy for a
    couple of milliseconds per run (so clocks stay up and submit costs spread thin), taking the
    `rounds` (the same dispatches on other copies of the inputs: kernel_buffers.build_rounds) in
    turn where given; with GPU timestamps the figure is the median over the copies of all runs,
    else the median run's wall time divided by the copies.
    """
    rounds = rounds or [pieces]
    once = _record(backend, rounds, 1, label)
    backend.run(once)  # warm-up; prepares the list
    timings = backend.gpu_timings(once)
    single = sum(ns for _, ns in timings) if timings else timed_run(backend, once)
    # Enough copies that one run lasts ~min_time/5 (at least 2 ms), at most 256.
    copies = int(min(max((max(min_time / 5, 0.002) * 1e9) // max(single, 1), 1), 256))
    cmd = _record(backend, rounds, copies, label) if copies > 1 else once
    if copies > 1:
        backend.run(cmd)
    samples: list[float] = []
    runs = 0
    deadline = time.perf_counter() + min_time
    while runs < 3 or (time.perf_counter() < deadline and runs < max_runs):
        wall = timed_run(backend, cmd)
        runs += 1
        got = backend.gpu_timings(cmd) if timings else None
        if got and len(got) == copies * len(pieces):
            per = len(pieces)
            samples += [sum(ns for _, ns in got[i : i + per]) for i in range(0, len(got), per)]
        else:
            timings = None
            samples.append(wall / copies)
    return float(statistics.median(samples)), "gpu" if timings else "wall"
