"""The model bench: every selected backend on the same model, in one process, repetitions interleaved.

Per backend, in this order:

1. **cold start**: create the backend, load the checkpoint (its files first evicted from the
   page cache where the OS allows), run a `prompt_tokens` prompt to its first token; then close
   it all. **warm start**: the same again with the file cached and any pipeline caches in place;
   this model stays loaded. Each start is split into phases from a `Probe` on the backend:
   backend creation, read (load time outside the backend: opening, parsing, host conversions),
   upload (inside buffer/write calls: for a memory-mapped checkpoint this includes paging the
   file in), pipelines (pipeline creation), prepare (a list's first submit: the backend's own
   compile/bind/record work), record (recording dispatches) and first token (the rest).
2. the device's **bandwidth** with the model resident (benches.kernels.device_bandwidth: the
   better of a buffer copy in a CommandList and the `add` kernel streaming; the "copy bandwidth"
   every GB/s figure is compared with).
3. **timed repetitions**, interleaved across backends (rotating the order each round) so that
   machine drift hits all alike (a backend whose repetitions have taken `time_budget` seconds
   skips the rest, so NumPy on a large shape does not hold up the run): decode (`new_tokens`
   after a `prompt_tokens` prompt, greedy, EOS ignored; per-token wall time around each step)
   and prefill (a `prefill_tokens` prompt to its first token), each decode run after a quarter
   second of untimed decoding (a device left idle while another backend ran clocks down: without
   it the first run after NumPy's came out at half speed on the H100). The tracer is off; the
   probe counts host time inside the API per token.
4. a **profile** per backend: the warm model is closed and a third start made with the tracer
   on from the beginning (what makes a backend write timestamp queries; some decide when a list
   is prepared), then one decode and one prefill run: per-dispatch GPU time of every decode
   step and of the prefill, mapped onto the recorded dispatches to give per-kernel GPU time,
   bytes and GB/s. This start's spans (loading, pipelines, GPU dispatches) make the trace.

Figures: decode and prefill tokens/s are medians over repetitions; CPU overhead is the host
thread's CPU time inside the API (recording, encoding, submitting, reading back; waits excluded)
per decode step over the step's wall time; GPU share is the profile run's GPU time per step over
the timed runs' median step wall time; the bandwidth ceiling is copy bandwidth / weight bytes
read per token.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from shaderbay.dtypes import BLOCK_DTYPES

from .kernels import device_bandwidth
from .machine import PeakRss, rss_bytes
from .probe import Probe, Tracks
from .shapes import Shape, checkpoint_shape, dispatch_bytes, dispatch_key, kernel_flops, named_shape, weight_dtype
from .verdict import bandwidth_utilisation, verdict

UPLOAD_CALLS = ("buffer", "empty", "upload", "write")
RECORD_CALLS = ("command_list", "dispatch", "copy")


@dataclass
class Settings:
    backends: list[str]
    model: str | None = None  # a checkpoint directory, or None for the default model
    synthetic: str | None = None  # a named random-weight shape
    dtype: str = "float16"
    prompt_tokens: int = 16
    new_tokens: int = 128
    prefill_tokens: int = 512
    repeats: int = 3
    max_context: int | None = None
    temperature: float = 0.0
    in_memory: bool = False  # synthetic weights loaded from memory instead of a safetensors file
    copy_bytes: int = 512 << 20
    time_budget: float = 90.0  # seconds of timed repetitions per backend before it skips the rest
    preflight: bool = True
    preflight_timeout: float = 180.0
    target_tok_s: float | None = None
    seed: int = 0

    def context(self) -> int:
        need = max(self.prompt_tokens + self.new_tokens, self.prefill_tokens)
        return max(self.max_context or 0, need)


@dataclass
class Run:
    """One backend's state and figures through the bench."""

    name: str
    error: str | None = None
    backend: Any = None
    probe: Probe | None = None
    model: Any = None
    device: dict[str, Any] = field(default_factory=dict)
    starts: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    copy: dict[str, Any] | None = None
    decode_runs: list[dict[str, Any]] = field(default_factory=list)
    prefill_runs: list[float] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)

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


# --- the model source ------------------------------------------------------------------------------


class Source:
    """Where the weights come from, loadable many times; `evict()` drops its files from the page cache."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.tmpdir: Path | None = None
        self.checkpoint: Any = None  # an in-memory synthetic checkpoint
        self.path: Path | None = None
        self.generate_s = 0.0
        self.name = settings.synthetic or (Path(settings.model).name if settings.model else "default model")
        self.wdtype = weight_dtype(settings.dtype)  # a checkpoint's own dtype replaces it in prepare()
        self.shape: Shape | None = named_shape(settings.synthetic) if settings.synthetic else None

    def prepare(self) -> None:
        """Resolve the checkpoint: the default model's directory (converted on first use), or a synthetic
        model written to a temporary safetensors directory (or kept in memory)."""
        s = self.settings
        t0 = time.perf_counter()
        if s.synthetic:
            from shaderbay.models import synthetic

            wdtype = weight_dtype(s.dtype)
            if s.in_memory or wdtype in BLOCK_DTYPES:  # safetensors cannot hold GGUF blocks
                self.checkpoint = synthetic.synthetic_checkpoint(s.synthetic, wdtype, seed=s.seed)
            else:
                self.tmpdir = Path(tempfile.mkdtemp(prefix="shaderbay-bench-"))
                self.path = synthetic.write_checkpoint(s.synthetic, self.tmpdir / s.synthetic, wdtype, seed=s.seed)
                for f in self.path.glob("*.safetensors"):
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
            gc.collect()
        else:
            if s.model:
                self.path = Path(s.model).expanduser()
            else:
                from shaderbay.models.default import DEFAULT_MODEL_NAME, default_model_dir

                self.path = default_model_dir(s.dtype)
                self.name = DEFAULT_MODEL_NAME
            self.shape, self.wdtype = checkpoint_shape(self.path, self.name)
        self.generate_s = time.perf_counter() - t0

    def load_arg(self) -> Any:
        if self.checkpoint is not None:
            return self.checkpoint
        return self.path

    def file_bytes(self) -> int | None:
        if self.path is None:
            return None
        return sum(f.stat().st_size for f in self.path.glob("*.safetensors"))

    def evict(self) -> bool:
        """Drop the checkpoint's files from the page cache (POSIX_FADV_DONTNEED); False where unsupported."""
        if self.path is None or not hasattr(os, "posix_fadvise"):
            return False
        done = False
        for f in self.path.glob("*.safetensors"):
            try:
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    done = True
                finally:
                    os.close(fd)
            except OSError:
                pass
        return done

    def cleanup(self) -> None:
        self.checkpoint = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


# --- preflight ---------------------------------------------------------------------------------------


def preflight(names: list[str], timeout: float, dtype: str = "float16") -> dict[str, str]:
    """Run each backend on a tiny model in a child process (in parallel): {name: error} for those that fail.

    A Python error inside the bench only marks its backend's row; a crash (a Rust panic in
    wgpu-native, a segfault in a driver) would end the whole process, so it is caught here first.
    """
    procs = {}
    for name in names:
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "shaderbay.benches.preflight", name, dtype],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    errors = {}
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            errors[name] = f"preflight: no result within {timeout:.0f} s on a tiny model (hung?)"
            continue
        if proc.returncode != 0:
            lines = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
            tail = lines[-1] if lines else "no output"
            how = f"crashed (signal {-proc.returncode})" if proc.returncode < 0 else f"failed (exit {proc.returncode})"
            errors[name] = f"preflight: {how} on a tiny model: {tail}"
    return errors


# --- measuring ----------------------------------------------------------------------------------------


def _device(backend: Any) -> dict[str, Any]:
    caps = backend.caps
    return {
        "name": caps.device,
        "type": caps.device_type,
        "features": caps.summary(),
        "timestamps": bool(caps.timestamps),
        "api": caps.extras.get("api") if isinstance(caps.extras, dict) else None,
    }


def _ms(ns: float) -> float:
    return ns / 1e6


def _start(run: Run, source: Source, settings: Settings, prompt: list[int], tracks: Tracks, label: str) -> None:
    """Create the backend, load, generate the first token; phases into run.starts[label]."""
    from shaderbay.models.model import load
    from shaderbay.plugins import create_backend

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
        run.model = load(source.load_arg(), backend=backend, max_context=settings.context(), progress=False)
        t_loaded = time.perf_counter_ns()
        c1 = probe.snapshot()
        for _ in _tokens(run.model, prompt, 1, settings):
            pass
        t_first = time.perf_counter_ns()
        c2 = probe.snapshot()
    loading, first = c1 - c0, c2 - c1  # API time while loading, and while producing the first token

    def own(c: Any) -> int:  # pipelines, preparing and recording: phases of their own
        return c.wall_ns("pipeline", "prepare", *RECORD_CALLS)

    both = c2 - c0
    phases = {
        "backend": _s(t_backend - t_begin),
        "read": _s(max(t_loaded - t_backend - loading.wall_ns(*UPLOAD_CALLS) - own(loading), 0)),
        "upload": _s(loading.wall_ns(*UPLOAD_CALLS)),
        "pipelines": _s(both.wall_ns("pipeline")),
        "prepare": _s(both.wall_ns("prepare")),
        "record": _s(both.wall_ns(*RECORD_CALLS)),
        "first_token": _s(max(t_first - t_loaded - own(first), 0)),
    }
    run.starts[label] = {
        "total_s": _s(t_first - t_begin),
        "phases": phases,
        "page_cache_evicted": evicted,
        "host_rss_start_bytes": rss.start,
        "host_rss_peak_bytes": rss.peak,
        "host_rss_end_bytes": rss.end,
        "host_rss_peak_exact": rss.exact,
    }


def _s(ns: float) -> float:
    return ns / 1e9


def _tokens(model: Any, prompt: list[int], n: int, settings: Settings):
    return model.tokens(prompt, n, temperature=settings.temperature, seed=settings.seed, ignore_eos=True)


def _memory(run: Run, settings: Settings) -> None:
    backend, model = run.backend, run.model
    llama = getattr(model, "llama", None)
    weights = int(getattr(model, "weight_bytes", 0) or 0)
    kv = 0
    for pair in getattr(llama, "caches", ()) or ():
        kv += sum(t.nbytes for t in pair)
    allocated = int(backend.bytes_allocated)
    warm = run.starts.get("warm", {})
    start = warm.get("host_rss_start_bytes") or 0
    run.memory = {
        "host_rss_peak_bytes": warm.get("host_rss_peak_bytes"),
        "host_rss_peak_delta_bytes": max((warm.get("host_rss_peak_bytes") or 0) - start, 0),
        "host_rss_added_bytes": (warm.get("host_rss_end_bytes") or 0) - start,
        "host_rss_now_bytes": rss_bytes(),
        "device_bytes": allocated,
        "device_peak_bytes": int(backend.peak_bytes_allocated),
        "device_weights_bytes": weights,
        "device_kv_cache_bytes": kv,
        "device_scratch_bytes": allocated - weights - kv,
        "kv_cache_dtype": getattr(llama, "cache_dtype", None),
        "max_context": getattr(model, "max_context", settings.context()),
    }


def _decode_once(
    run: Run, prompt: list[int], settings: Settings, profile: bool = False, tokens: int | None = None
) -> dict[str, Any]:
    """One generation of new_tokens; per decode step: wall, API CPU/wall, wait; with profile, GPU timings."""
    probe = run.probe
    counters = probe.counters
    perf = time.perf_counter_ns
    gen = _tokens(run.model, prompt, tokens or settings.new_tokens, settings)
    next(gen)  # the prompt's prefill and the first token
    probe.take_submitted()
    walls, api_cpu, api_wall, waits = [], [], [], []
    gpu_steps: list[list[tuple[Any, list, int]]] = []
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
    end_calls = probe.snapshot()
    steps = len(walls)
    by_call = end_calls - step_calls
    out = {
        "steps": steps,
        "wall_ns": walls,
        "api_cpu_ns": api_cpu,
        "api_wall_ns": api_wall,
        "wait_ns": waits,
        "calls_per_step": {k: v[0] / steps for k, v in by_call.by_call.items()} if steps else {},
        "call_wall_us": {k: v[1] / v[0] / 1e3 for k, v in by_call.by_call.items() if v[0]},
    }
    if profile:
        out["gpu_steps"] = gpu_steps
        out["gpu_complete"] = complete
    return out


def _settle(run: Run, prompt: list[int], settings: Settings, seconds: float = 0.25) -> None:
    """Untimed decoding for a moment before a timed run: a device left idle while another backend ran
    (NumPy's repetitions last tens of seconds) lowers its clocks, and its next run starts slow."""
    end = time.perf_counter() + seconds
    while True:
        for _ in _tokens(run.model, prompt, min(settings.new_tokens, 8), settings):
            pass
        if time.perf_counter() >= end:
            return


def _prefill_once(run: Run, prompt: list[int], settings: Settings, profile: bool = False) -> tuple[float, list]:
    """Seconds from submitting a prefill_tokens prompt to having its first token; with profile, GPU timings."""
    probe = run.probe
    probe.take_submitted()
    t0 = time.perf_counter_ns()
    for _ in _tokens(run.model, prompt, 1, settings):
        pass
    seconds = _s(time.perf_counter_ns() - t0)
    timings = []
    if profile:
        got, _ = probe.gpu_timings(probe.take_submitted())
        timings = [(cmd, t, len(prompt)) for cmd, t, _ in got]
    else:
        probe.take_submitted()
    return seconds, timings


def _kernel_rows(steps: list[list[tuple[Any, list, int]]], phase: str, copy_gbs: float | None) -> list[dict[str, Any]]:
    """Per-kernel GPU time, bytes and GB/s per step, from timings mapped onto each list's recorded ops.

    A backend's timings cover either every op (copies included) or the dispatches only, in order;
    when neither count matches, rows are keyed by label alone, without bytes.
    """
    from shaderbay.backend import Copy, Dispatch

    agg: dict[str, dict[str, Any]] = {}
    n_steps = max(len(steps), 1)
    for step in steps:
        for cmd, timings, context in step:
            ops = list(cmd.ops)
            if len(ops) != len(timings):
                ops = [op for op in ops if isinstance(op, Dispatch)]
            mapped = len(ops) == len(timings)
            for i, (label, ns) in enumerate(timings):
                op = ops[i] if mapped else None
                flops = None
                if isinstance(op, Copy):
                    key, kernel, nbytes = "copy", "copy", 2 * op.size
                elif op is not None:
                    key, kernel, nbytes = dispatch_key(op), op.pipeline.spec.name, dispatch_bytes(op, context)
                    flops = kernel_flops(kernel, op.params, context)
                else:
                    key, kernel, nbytes = str(label), str(label), None
                row = agg.setdefault(key, {"key": key, "kernel": kernel, "count": 0, "ns": 0.0, "bytes": 0, "flops": 0})
                row["count"] += 1
                row["ns"] += float(ns)
                row["bytes"] = None if nbytes is None or row["bytes"] is None else row["bytes"] + nbytes
                row["flops"] = None if flops is None or row["flops"] is None else row["flops"] + flops
    total = sum(r["ns"] for r in agg.values()) or 1.0
    rows = []
    for r in sorted(agg.values(), key=lambda r: -r["ns"]):
        gbs = r["bytes"] / r["ns"] if r["bytes"] and r["ns"] > 0 else None
        rows.append(
            {
                "phase": phase,
                "key": r["key"],
                "kernel": r["kernel"],
                "dispatches": r["count"] / n_steps,
                "ns": r["ns"] / n_steps,
                "bytes": r["bytes"] / n_steps if r["bytes"] is not None else None,
                "gbs": gbs,
                "copy_bw_share": gbs / copy_gbs if gbs and copy_gbs else None,
                "flops": r["flops"] / n_steps if r["flops"] is not None else None,
                "tflops": r["flops"] / r["ns"] / 1e3 if r["flops"] and r["ns"] > 0 else None,
                "gpu_time_share": r["ns"] / total,
            }
        )
    return rows


# --- the bench ------------------------------------------------------------------------------------------


def bench_model(settings: Settings, tracks: Tracks | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    tracks = tracks or Tracks()
    note = progress or (lambda label: None)
    runs = [Run(name) for name in settings.backends]
    source = Source(settings)
    rng = np.random.default_rng(settings.seed)
    try:
        from shaderbay.plugins import discover

        known = discover()
        for run in runs:
            if run.name not in known:
                run.error = f"no backend named {run.name!r}; discovered: {', '.join(sorted(known)) or 'none'}"
        if settings.preflight:
            note("preflight")
            failed = preflight([r.name for r in runs if r.error is None], settings.preflight_timeout, settings.dtype)
            for run in runs:
                if run.name in failed:
                    run.error = failed[run.name]
        note("preparing the model")
        try:
            source.prepare()
        except Exception as exc:  # noqa: BLE001 - reported in every row
            for run in runs:
                run.error = run.error or f"model: {type(exc).__name__}: {exc}"
            return _result(runs, source, settings)
        vocab = source.shape.vocab_size
        decode_prompt = rng.integers(0, vocab, settings.prompt_tokens).tolist()
        prefill_prompt = rng.integers(0, vocab, settings.prefill_tokens).tolist()
        for run in runs:
            for label in ("cold", "warm"):
                if run.error:
                    break
                note(f"{run.name}: {label} start")
                try:
                    _start(run, source, settings, decode_prompt, tracks, label)
                    run.device = _device(run.backend)
                    if label == "cold":
                        run.close()
                        gc.collect()
                except Exception as exc:  # noqa: BLE001 - one backend's failure must not end the others
                    run.fail(f"{label} start", exc)
            if run.error:
                continue
            try:
                _memory(run, settings)
                note(f"{run.name}: copy bandwidth")
                run.probe.active = False
                run.copy = device_bandwidth(run.backend, settings.copy_bytes)
                run.probe.active = True
                note(f"{run.name}: warm-up")
                _prefill_once(run, prefill_prompt, settings)
                _decode_once(run, decode_prompt, settings, tokens=min(settings.new_tokens, 8))
            except Exception as exc:  # noqa: BLE001
                run.fail("warm-up", exc)

        live = [r for r in runs if not r.error]
        spent = dict.fromkeys((r.name for r in live), 0.0)
        for rep in range(settings.repeats):
            order = live[rep % len(live) :] + live[: rep % len(live)] if live else []
            for run in order:
                if run.error:
                    continue
                if rep and spent[run.name] >= settings.time_budget:  # a slow backend (NumPy on a large shape)
                    note(f"{run.name}: repetition {rep + 1} skipped (time budget)")
                    continue
                note(f"{run.name}: repetition {rep + 1}/{settings.repeats}")
                t0 = time.perf_counter()
                try:
                    _settle(run, decode_prompt, settings)
                    with tracks.span(run.name, "decode", rep=rep):
                        run.decode_runs.append(_decode_once(run, decode_prompt, settings))
                    with tracks.span(run.name, "prefill", rep=rep):
                        run.prefill_runs.append(_prefill_once(run, prefill_prompt, settings)[0])
                except Exception as exc:  # noqa: BLE001
                    run.fail(f"repetition {rep + 1}", exc)
                spent[run.name] += time.perf_counter() - t0

        for run in live:
            if run.error:
                continue
            note(f"{run.name}: profile")
            try:
                # A fresh start with the tracer on from the beginning: some backends decide at a list's
                # preparation whether it writes timestamps, and the timed runs above must not pay for them.
                run.close()
                gc.collect()
                _start(run, source, settings, decode_prompt, tracks, "traced")
                run.starts.pop("traced")
                if not run.backend.caps.timestamps:  # nothing to profile; the start above is in the trace
                    continue
                with tracks.span(run.name, "profile.decode"):
                    decode = _decode_once(run, decode_prompt, settings, profile=True)
                with tracks.span(run.name, "profile.prefill"):
                    prefill_s, prefill_timings = _prefill_once(run, prefill_prompt, settings, profile=True)
                run.profile = {"decode": decode, "prefill_s": prefill_s, "prefill_timings": prefill_timings}
            except Exception as exc:  # noqa: BLE001
                run.fail("profile", exc)
        return _result(runs, source, settings)
    finally:
        for run in runs:
            run.close()
        source.cleanup()


# --- summarising -------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _summarise(run: Run, source: Source, settings: Settings) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": run.name, "ok": run.error is None, "error": run.error, "device": run.device}
    row["load"] = run.starts
    row["memory"] = run.memory
    row["copy_bandwidth"] = run.copy
    if not run.decode_runs:
        return row
    shape = source.shape
    wdtype = source.wdtype
    rates, step_ms = [], []
    cpu, api_wall, waits, walls_all = [], [], [], []
    for d in run.decode_runs:
        total = sum(d["wall_ns"])
        if d["steps"] and total:
            rates.append(d["steps"] / _s(total))
            step_ms.append(_ms(statistics.median(d["wall_ns"])))
        walls_all += d["wall_ns"]
        cpu += d["api_cpu_ns"]
        api_wall += d["api_wall_ns"]
        waits += d["wait_ns"]
    tok_s = _median(rates)
    wall = statistics.median(walls_all) if walls_all else 0
    mean_wall = sum(walls_all) / len(walls_all) if walls_all else 0
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    row["decode"] = {
        "tokens": run.decode_runs[0]["steps"],
        "tok_s": tok_s,
        "tok_s_runs": rates,
        "ms_per_token": 1e3 / tok_s if tok_s else None,
        "ms_per_token_median": _ms(wall),
    }
    row["prefill"] = {
        "tokens": settings.prefill_tokens,
        "tok_s": _median([settings.prefill_tokens / s for s in run.prefill_runs if s > 0]),
        "tok_s_runs": [settings.prefill_tokens / s for s in run.prefill_runs if s > 0],
        "ms": _ms(_median(run.prefill_runs) * 1e9) if run.prefill_runs else None,
    }
    other = mean_wall - mean(api_wall) - mean(waits)
    calls = run.decode_runs[-1]["calls_per_step"]
    row["cpu"] = {
        "api_cpu_ms_per_token": _ms(mean(cpu)),
        "api_wall_ms_per_token": _ms(mean(api_wall)),
        "wait_ms_per_token": _ms(mean(waits)),
        "other_ms_per_token": _ms(max(other, 0.0)),
        "api_share": mean(cpu) / mean_wall if mean_wall else None,
        "api_wall_share": mean(api_wall) / mean_wall if mean_wall else None,
        "wait_share": mean(waits) / mean_wall if mean_wall else None,
        "calls_per_token": calls,
        "us_per_call": run.decode_runs[-1]["call_wall_us"],
    }
    copy_gbs = run.copy["gbs"] if run.copy else None
    profile = run.profile.get("decode") if run.profile else None
    steps = [s for s in (profile or {}).get("gpu_steps", []) if s]
    gpu: dict[str, Any] = {"timestamps": bool(steps), "complete": bool(profile and profile.get("gpu_complete"))}
    kernels: list[dict[str, Any]] = []
    if steps:
        gpu_ns = mean([sum(sum(ns for _, ns in t) for _, t, _ in step) for step in steps])
        gpu["gpu_ms_per_token"] = _ms(gpu_ns)
        # Per-dispatch timestamps inflate short dispatches (the sum can exceed a clean step's wall time),
        # and in a step that submits and then waits the device works alone only while the host is not
        # busy: the share used for the verdict is capped at that.
        host_busy = (mean(api_wall) + max(other, 0.0)) / mean_wall if mean_wall else 1.0
        gpu["gpu_share_raw"] = gpu_ns / mean_wall if mean_wall else None
        gpu["gpu_share"] = min(gpu["gpu_share_raw"], max(1.0 - host_busy, 0.0)) if mean_wall else None
        profile_wall = mean(profile["wall_ns"])
        gpu["profile_ms_per_token"] = _ms(profile_wall)
        gpu["gpu_share_profile"] = gpu_ns / profile_wall if profile_wall else None
        gpu["dispatches_per_token"] = sum(len(t) for _, t, _ in steps[0])
        kernels = _kernel_rows(steps, "decode", copy_gbs)
    prefill_t = run.profile.get("prefill_timings") if run.profile else None
    if prefill_t:
        gpu["prefill_gpu_ms"] = _ms(sum(sum(ns for _, ns in t) for _, t, _ in prefill_t))
        kernels += _kernel_rows([prefill_t], "prefill", copy_gbs)
    row["gpu"] = gpu
    row["kernels"] = kernels
    ceiling = None
    if copy_gbs and shape:
        per_token = shape.weight_bytes_per_token(wdtype)
        ceiling = {"tok_s": copy_gbs * 1e9 / per_token, "weight_bytes_per_token": per_token}
        ceiling["share"] = tok_s / ceiling["tok_s"] if tok_s else None
    row["ceiling"] = ceiling
    util = bandwidth_utilisation([k for k in kernels if k["phase"] == "decode"])
    gpu["bandwidth_utilisation"] = util
    row["verdict"] = verdict(
        backend=run.name,
        device_type=run.device.get("type", "other"),
        gpu_share=gpu.get("gpu_share"),
        api_share=row["cpu"]["api_share"],
        bandwidth_utilisation=util,
        tok_s=tok_s,
        target_tok_s=settings.target_tok_s,
    ).as_dict()
    return row


def _result(runs: list[Run], source: Source, settings: Settings) -> dict[str, Any]:
    shape = source.shape
    wdtype = source.wdtype
    model: dict[str, Any] = {
        "name": source.name,
        "dtype": wdtype,
        "synthetic": settings.synthetic,
        "source": "memory" if source.checkpoint is not None else "file",
        "checkpoint_bytes": source.file_bytes(),
        "build_s": source.generate_s,
    }
    if shape:
        model.update(
            shape=shape.as_dict(),
            weights_bytes=shape.weights_bytes(wdtype),
            weight_bytes_per_token=shape.weight_bytes_per_token(wdtype),
        )
    return {"kind": "model", "model": model, "results": [_summarise(r, source, settings) for r in runs]}
