"""Measuring one backend in the model bench: its starts, memory, decode and prefill runs."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shaderbay.errors import ShaderbayError
from shaderbay.models.model import load
from shaderbay.plugins import create_backend

from .machine import PeakRss, rss_bytes
from .model_settings import Settings
from .model_source import Source
from .probe import Probe, Tracks
from .results import Bandwidth, Device, Memory, Phases, Start

UPLOAD_CALLS = ("buffer", "empty", "upload", "write")
RECORD_CALLS = ("command_list", "dispatch", "copy")

# GPU timings of one list a step submitted: (the command list, [(label, ns)], the live context)
GpuTimings = tuple[Any, list[tuple[str, float]], int]


@dataclass
class DecodeRun:
    """One generation's figures, per decode step (the prompt's prefill and first token excluded)."""

    wall_ns: list[int]
    api_cpu_ns: list[int]
    api_wall_ns: list[int]
    wait_ns: list[int]
    calls_per_step: dict[str, float]  # API method -> calls per step
    call_wall_us: dict[str, float]  # API method -> host wall time per call
    gpu_steps: list[list[GpuTimings]] = field(default_factory=list)  # with profile: each step's GPU timings
    gpu_complete: bool = False  # with profile: every submitted list's timings came back

    @property
    def steps(self) -> int:
        return len(self.wall_ns)


@dataclass
class Run:
    """One backend's state and figures through the bench."""

    name: str
    error: str | None = None
    backend: Any = None
    probe: Probe | None = None
    model: Any = None
    device: Device | None = None
    starts: dict[str, Start] = field(default_factory=dict)
    memory: Memory | None = None
    copy: Bandwidth | None = None
    decode_runs: list[DecodeRun] = field(default_factory=list)
    prefill_runs: list[float] = field(default_factory=list)
    profile_decode: DecodeRun | None = None  # the profile run's, with GPU timings
    profile_prefill: list[GpuTimings] = field(default_factory=list)
    streams_runs: dict[int, list[Any]] = field(default_factory=dict)  # --streams: stream count -> StreamsRuns
    profile_streams: dict[int, Any] = field(default_factory=dict)  # the profile start's, with GPU time

    def fail(self, stage: str, exc: BaseException) -> None:
        tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self.error = f"{stage}: {tail}"
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.model is not None:
                self.model.close()
        with contextlib.suppress(Exception):
            if self.backend is not None:
                self.backend.close()
        self.model = None
        self.backend = None


def ms(ns: float) -> float:
    return ns / 1e6


def seconds(ns: float) -> float:
    return ns / 1e9


def tokens(model: Any, prompt: list[int], n: int, settings: Settings) -> Iterator[int]:
    return model.tokens(prompt, n, temperature=settings.temperature, seed=settings.seed, ignore_eos=True)


def start(run: Run, source: Source, settings: Settings, prompt: list[int], tracks: Tracks, label: str) -> Start:
    """Create the backend, load, generate the first token: the start's phases (the model stays loaded)."""
    evicted = source.evict() if label == "cold" else False
    with PeakRss() as rss, tracks.span(run.name, f"start.{label}"):
        t_begin = time.perf_counter_ns()
        backend = create_backend(run.name)
        t_backend = time.perf_counter_ns()
        backend.tracer.enabled = label == "traced"  # lists prepared now get timestamp queries where they can
        probe = Probe(backend)
        run.backend, run.probe = backend, probe
        tracks.attach(run.name, backend.tracer)
        c0 = probe.snapshot()
        context, streams = settings.context(), settings.pool_streams()
        run.model = load(source.load_arg(), backend=backend, max_context=context, streams=streams,
                         batch_invariant=settings.batch_invariant, progress=False)  # fmt: skip
        t_loaded = time.perf_counter_ns()
        c1 = probe.snapshot()
        for _ in tokens(run.model, prompt, 1, settings):
            pass
        t_first = time.perf_counter_ns()
        c2 = probe.snapshot()
    loading, first = c1 - c0, c2 - c1  # API time while loading, and while producing the first token

    def own(c: Any) -> int:  # pipelines, preparing and recording: phases of their own
        return c.wall_ns("pipeline", "prepare", *RECORD_CALLS)

    both = c2 - c0
    phases = Phases(
        backend=seconds(t_backend - t_begin),
        read=seconds(max(t_loaded - t_backend - loading.wall_ns(*UPLOAD_CALLS) - own(loading), 0)),
        upload=seconds(loading.wall_ns(*UPLOAD_CALLS)),
        pipelines=seconds(both.wall_ns("pipeline")),
        prepare=seconds(both.wall_ns("prepare")),
        record=seconds(both.wall_ns(*RECORD_CALLS)),
        first_token=seconds(max(t_first - t_loaded - own(first), 0)),
    )
    return Start(
        total_s=seconds(t_first - t_begin),
        phases=phases,
        page_cache_evicted=evicted,
        host_rss_start_bytes=rss.start,
        host_rss_peak_bytes=rss.peak,
        host_rss_end_bytes=rss.end,
        host_rss_peak_exact=rss.exact,
    )


def memory(run: Run, settings: Settings) -> Memory:
    """Host and device memory with the warm start's model loaded."""
    backend, model = run.backend, run.model
    llama = getattr(model, "llama", None)
    weights = int(getattr(model, "weight_bytes", 0) or 0)
    kv = 0
    for pair in getattr(llama, "caches", ()) or ():
        kv += sum(t.nbytes for t in pair)
    allocated = int(backend.bytes_allocated)
    warm = run.starts["warm"]
    return Memory(
        host_rss_peak_bytes=warm.host_rss_peak_bytes,
        host_rss_peak_delta_bytes=max(warm.host_rss_peak_bytes - warm.host_rss_start_bytes, 0),
        host_rss_added_bytes=warm.host_rss_end_bytes - warm.host_rss_start_bytes,
        host_rss_now_bytes=rss_bytes(),
        device_bytes=allocated,
        device_peak_bytes=int(backend.peak_bytes_allocated),
        device_weights_bytes=weights,
        device_kv_cache_bytes=kv,
        device_scratch_bytes=allocated - weights - kv,
        kv_cache_dtype=getattr(llama, "cache_dtype", None),
        max_context=getattr(model, "max_context", settings.context()),
    )


def decode_once(
    run: Run, prompt: list[int], settings: Settings, profile: bool = False, new_tokens: int | None = None
) -> DecodeRun:
    """One generation of new_tokens; per decode step: wall, API CPU/wall, wait; with profile, GPU timings."""
    probe = run.probe
    counters = probe.counters
    perf = time.perf_counter_ns
    gen = tokens(run.model, prompt, new_tokens or settings.new_tokens, settings)
    next(gen)  # the prompt's prefill and the first token
    probe.take_submitted()
    walls, api_cpu, api_wall, waits = [], [], [], []
    gpu_steps: list[list[GpuTimings]] = []
    complete = True
    step_calls = probe.snapshot()
    position = len(prompt)
    while True:
        a0, a1, w0 = counters.api_cpu_ns, counters.api_wall_ns, counters.wait_wall_ns
        t0 = perf()
        try:
            next(gen)
        except StopIteration:
            break
        t1 = perf()
        walls.append(t1 - t0)
        api_cpu.append(counters.api_cpu_ns - a0)
        api_wall.append(counters.api_wall_ns - a1)
        waits.append(counters.wait_wall_ns - w0)
        position += 1
        if profile:
            timings, whole = probe.gpu_timings(probe.take_submitted())
            complete &= whole
            gpu_steps.append([(cmd, t, position) for cmd, t, _ in timings])
        else:
            probe.take_submitted()
    by_call = (probe.snapshot() - step_calls).by_call
    steps = len(walls)
    return DecodeRun(
        wall_ns=walls,
        api_cpu_ns=api_cpu,
        api_wall_ns=api_wall,
        wait_ns=waits,
        calls_per_step={k: v[0] / steps for k, v in by_call.items()} if steps else {},
        call_wall_us={k: v[1] / v[0] / 1e3 for k, v in by_call.items() if v[0]},
        gpu_steps=gpu_steps,
        gpu_complete=profile and complete,
    )


def settle(run: Run, prompt: list[int], settings: Settings, duration: float = 0.25) -> None:
    """Untimed decoding for a moment before a timed run: a device left idle while another backend ran
    (NumPy's repetitions last tens of seconds) lowers its clocks, and its next run starts slow."""
    end = time.perf_counter() + duration
    while True:
        for _ in tokens(run.model, prompt, min(settings.new_tokens, 8), settings):
            pass
        if time.perf_counter() >= end:
            return


def prefill_once(run: Run, prompt: list[int], settings: Settings, profile: bool = False) -> tuple[float, list]:
    """Seconds from submitting a prefill_tokens prompt to having its first token; with profile, GPU timings.

    Each call needs a prompt the model has not seen: the engine's prefix cache would otherwise hand
    back its blocks and the figure would time a cache hit (an error if it did)."""
    probe = run.probe
    probe.take_submitted()
    t0 = time.perf_counter_ns()
    for _ in tokens(run.model, prompt, 1, settings):
        pass
    elapsed = seconds(time.perf_counter_ns() - t0)
    if run.model.stats.cached_tokens:
        raise ShaderbayError(
            f"the prefill run reused {run.model.stats.cached_tokens} cached prompt tokens: give each run a new prompt"
        )
    timings = []
    if profile:
        got, _ = probe.gpu_timings(probe.take_submitted())
        timings = [(cmd, t, len(prompt)) for cmd, t, _ in got]
    else:
        probe.take_submitted()
    return elapsed, timings
