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
2. the device's **bandwidth** with the model resident (benches.bandwidth.device_bandwidth: the
   better of a buffer copy in a CommandList and the `add` kernel streaming; the "copy bandwidth"
   every GB/s figure is compared with).
3. **timed repetitions**, interleaved across backends (rotating the order each round) so that
   machine drift hits all alike (a backend whose repetitions have taken `time_budget` seconds
   skips the rest, so NumPy on a large shape does not hold up the run): decode (`new_tokens`
   after a `prompt_tokens` prompt, greedy, EOS ignored; per-token wall time around each step)
   and prefill (a `prefill_tokens` prompt to its first token), each decode run after a quarter
   second of untimed decoding (a device left idle while another backend ran clocks down: without
   it the first run after NumPy's came out at half speed on the H100), then, with --streams, the
   aggregate decode of each stream count (benches/model_streams.py). The tracer is off; the
   probe counts host time inside the API per token.
4. a **profile** per backend: the warm model is closed and a third start made with the tracer
   on from the beginning (what makes a backend write timestamp queries; some decide when a list
   is prepared), then one decode and one prefill run (and one of each stream count): per-dispatch
   GPU time of every decode step and of the prefill, mapped onto the recorded dispatches to give
   per-kernel GPU time, bytes and GB/s. This start's spans (loading, pipelines, GPU dispatches) make the trace.

Figures: decode and prefill tokens/s are medians over repetitions; CPU overhead is the host
thread's CPU time inside the API (recording, encoding, submitting, reading back; waits excluded)
per decode step over the step's wall time; GPU share is the profile run's GPU time per step over
the timed runs' median step wall time; the bandwidth ceiling is copy bandwidth / weight bytes
read per token.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import numpy as np
from shaderbay.plugins import discover

from .bandwidth import device_bandwidth
from .model_measure import Run, decode_once, memory, prefill_once, settle, start
from .model_settings import Settings
from .model_source import Source
from .model_streams import prompts, streams_once
from .model_summary import source_info, summarise
from .preflight import preflight
from .probe import Tracks
from .results import Device, ModelInfo, ModelRow


def bench_model(settings: Settings, tracks: Tracks | None = None,
                progress: Callable[[str], None] | None = None) -> tuple[ModelInfo, list[ModelRow]]:  # fmt: skip
    tracks = tracks or Tracks()
    note = progress or (lambda label: None)
    runs = [Run(name) for name in settings.backends]
    source = Source(settings)
    rng = np.random.default_rng(settings.seed)

    def results() -> tuple[ModelInfo, list[ModelRow]]:
        tensor_cores = any(r.device and r.device.cooperative_matrices for r in runs)
        return source_info(source, settings), [summarise(r, source, settings, tensor_cores) for r in runs]

    try:
        known = discover()
        for run in runs:
            if run.name not in known:
                run.error = f"no backend named {run.name!r}; discovered: {', '.join(sorted(known)) or 'none'}"
        if settings.preflight:
            note("preflight")
            failed = preflight([r.name for r in runs if r.error is None], settings.preflight_timeout, settings.weights)
            for run in runs:
                if run.name in failed:
                    run.error = failed[run.name]
        note("preparing the model")
        try:
            source.prepare()
        except Exception as exc:  # noqa: BLE001 - reported in every row
            for run in runs:
                run.error = run.error or f"model: {type(exc).__name__}: {exc}"
            return results()
        vocab = source.shape.vocab_size
        decode_prompt = rng.integers(0, vocab, settings.prompt_tokens).tolist()

        def prefill_prompt() -> list[int]:  # a new one each run: a prompt seen before is a prefix-cache hit
            return rng.integers(0, vocab, settings.prefill_tokens).tolist()

        batches = {n: prompts(rng, vocab, n, settings.prompt_tokens) for n in settings.streams}
        for run in runs:
            for label in ("cold", "warm"):
                if run.error:
                    break
                note(f"{run.name}: {label} start")
                try:
                    run.starts[label] = start(run, source, settings, decode_prompt, tracks, label)
                    run.device = Device.of(run.backend)
                    if label == "cold":
                        run.close()
                        gc.collect()
                except Exception as exc:  # noqa: BLE001 - one backend's failure must not end the others
                    run.fail(f"{label} start", exc)
            if run.error:
                continue
            try:
                run.memory = memory(run, settings)
                note(f"{run.name}: copy bandwidth")
                run.probe.active = False
                run.copy = device_bandwidth(run.backend, settings.copy_bytes)
                run.probe.active = True
                note(f"{run.name}: warm-up")
                prefill_once(run, prefill_prompt(), settings)
                decode_once(run, decode_prompt, settings, new_tokens=min(settings.new_tokens, 8))
                # a stream count's first run is slower (H200, 135M shape, 64 streams: 21k tok/s, then 28k)
                for batch in batches.values():
                    streams_once(run, batch, settings)
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
                    settle(run, decode_prompt, settings)
                    with tracks.span(run.name, "decode", rep=rep):
                        run.decode_runs.append(decode_once(run, decode_prompt, settings))
                    with tracks.span(run.name, "prefill", rep=rep):
                        run.prefill_runs.append(prefill_once(run, prefill_prompt(), settings)[0])
                    for n, batch in batches.items():
                        with tracks.span(run.name, f"streams.{n}", rep=rep):
                            run.streams_runs.setdefault(n, []).append(streams_once(run, batch, settings))
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
                start(run, source, settings, decode_prompt, tracks, "traced")
                if not run.backend.caps.timestamps:  # nothing to profile; the start above is in the trace
                    continue
                with tracks.span(run.name, "profile.decode"):
                    run.profile_decode = decode_once(run, decode_prompt, settings, profile=True)
                with tracks.span(run.name, "profile.prefill"):
                    _, run.profile_prefill = prefill_once(run, prefill_prompt(), settings, profile=True)
                for n, batch in batches.items():
                    with tracks.span(run.name, f"profile.streams.{n}"):
                        run.profile_streams[n] = streams_once(run, batch, settings, profile=True)
            except Exception as exc:  # noqa: BLE001
                run.fail("profile", exc)
        return results()
    finally:
        for run in runs:
            run.close()
        source.cleanup()
