"""`shaderbay bench --streams 1,4,16,64`: aggregate decode throughput with many sequences at once.

For each stream count S, S requests (distinct random prompts of `prompt_tokens`, greedy unless
--temperature, EOS ignored) go to the model's engine together. They join one prefill at a time,
so the first ones decode while the later ones join; the figure is the steady state: once every
one has its first token and STREAM_WARM_STEPS more steps have run (the S-row step's recordings prepared
and the run-ahead full), `new_tokens` steps of all S rows are timed, and the aggregate rate is
the tokens generated over that window's wall time. The requests may generate enough for the
joining and the window (Settings.stream_tokens); the rest is cancelled. Host CPU inside the API over the same
window gives the API share; the profile start repeats each S with timestamps: the GPU share, the
GPU time per step by kernel and shape, and where the step's wall time went (benches/model_kernels.py);
the decision tree gives the verdict at each S (benches/verdict.py).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
from shaderbay.models.requests import Request
from shaderbay.models.sampling import Sampling

from .model_kernels import kernel_rows, step_split
from .model_measure import GpuTimings, Run
from .model_settings import STREAM_WARM_STEPS, Settings
from .results import Streams
from .verdict import bandwidth_utilisation, verdict


@dataclass
class StreamsRun:
    tokens: int  # generated in the window
    steps: int
    wall_ns: int
    api_cpu_ns: int
    gpu_steps: list[list[GpuTimings]] | None = None  # with profile: each step's GPU timings

    @property
    def gpu_ns(self) -> float | None:
        """GPU busy time over the window (with profile)."""
        if not self.gpu_steps:
            return None
        return sum(ns for step in self.gpu_steps for _, timings, _ in step for _, ns in timings)


def prompts(rng: np.random.Generator, vocab: int, streams: int, length: int) -> list[list[int]]:
    return [rng.integers(0, vocab, length).tolist() for _ in range(streams)]


def streams_once(run: Run, batch: list[list[int]], settings: Settings, profile: bool = False) -> StreamsRun:
    """Serve `batch` together; the steady-state window's figures (see the module docstring)."""
    engine, probe = run.model.engine, run.probe
    sampling = Sampling(temperature=settings.temperature)
    budget = settings.stream_tokens(len(batch))
    seqs = [engine.add(Request(tuple(p), budget, sampling, settings.seed + i)) for i, p in enumerate(batch)]
    while not all(s.generated for s in seqs):
        engine.step()
    for _ in range(STREAM_WARM_STEPS):
        engine.step()
    probe.take_submitted()
    counters = probe.counters
    before = sum(len(s.generated) for s in seqs)
    cpu0, t0 = counters.api_cpu_ns, time.perf_counter_ns()
    steps, gpu_steps = 0, []
    while steps < settings.new_tokens and not any(s.finished for s in seqs):
        engine.step()
        steps += 1
        # each step's list: its last completed submit, the same rows (see decode_once); not the window's
        # last step, where a row finished and the rows were rebuilt (one fewer: other lists, other shapes)
        if profile and not any(s.finished for s in seqs):
            timings, _ = probe.gpu_timings(probe.take_submitted())
            context = round(sum(s.n_prompt + len(s.generated) for s in seqs) / len(seqs))  # the rows' mean
            gpu_steps.append([(cmd, t, context) for cmd, t, _ in timings])
    wall, cpu = time.perf_counter_ns() - t0, counters.api_cpu_ns - cpu0
    probe.take_submitted()
    tokens = sum(len(s.generated) for s in seqs) - before
    for seq in seqs:
        engine.cancel(seq)
    return StreamsRun(tokens, steps, wall, cpu, gpu_steps if profile else None)


def summarise_streams(run: Run, settings: Settings, tensor_cores: bool) -> list[Streams]:
    """Each stream count's median aggregate rate, API and GPU shares, GPU time by kernel, and its verdict."""
    copy_gbs = run.copy.gbs if run.copy else None
    out = []
    for n, runs in sorted(run.streams_runs.items()):
        timed = [r for r in runs if r.wall_ns and r.tokens]
        rates = [r.tokens / (r.wall_ns / 1e9) for r in timed]
        tok_s = float(statistics.median(rates)) if rates else None
        api_share = statistics.mean(r.api_cpu_ns / r.wall_ns for r in timed) if timed else None
        profiled = run.profile_streams.get(n)
        gpu_share, kernels, split = None, None, None
        if profiled and profiled.gpu_ns and profiled.steps:
            kernels = kernel_rows([s for s in profiled.gpu_steps if s], "decode", copy_gbs)
            profile_wall = profiled.wall_ns / profiled.steps
            step_wall = statistics.mean(r.wall_ns / r.steps for r in timed if r.steps) if timed else profile_wall
            split = step_split(kernels, step_wall, profile_wall)
            if timed:  # GPU busy per step over the timed runs' step wall time
                gpu_share = min(profiled.gpu_ns / profiled.steps / step_wall, 1.0)
        out.append(
            Streams(
                streams=n,
                tok_s=tok_s,
                tok_s_runs=rates,
                ms_per_step=statistics.median(r.wall_ns / r.steps / 1e6 for r in timed if r.steps) if timed else None,
                api_share=api_share,
                gpu_share=gpu_share,
                verdict=verdict(
                    backend=run.name,
                    device_type=run.device.type if run.device else "other",
                    gpu_share=gpu_share,
                    api_share=api_share,
                    bandwidth_utilisation=bandwidth_utilisation(kernels) if kernels else None,
                    tok_s=tok_s,
                    tensor_cores=tensor_cores,
                ),
                split=split,
                kernels=kernels,
            )
        )
    return out
