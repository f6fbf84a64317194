"""The model bench's figures per backend, from what `model_measure` recorded (see model_bench's docstring)."""

from __future__ import annotations

import statistics
from typing import Any

from .model_kernels import kernel_rows
from .model_measure import GpuTimings, Run, ms, seconds
from .model_settings import Settings
from .model_source import Source
from .model_streams import summarise_streams
from .results import Ceiling, Cpu, Decode, Gpu, ModelInfo, ModelKernel, ModelRow, Prefill
from .shapes import Shape
from .verdict import bandwidth_utilisation, verdict


def model_info(shape: Shape | None, name: str, wdtype: str, **source: Any) -> ModelInfo:
    """The model a bench ran: its shape and weight bytes (where known), and `source` fields."""
    info = ModelInfo(name=name, dtype=wdtype, **source)
    if shape:
        info.shape = shape.record()
        info.weights_bytes = shape.weights_bytes(wdtype)
        info.weight_bytes_per_token = shape.weight_bytes_per_token(wdtype)
    return info


def source_info(source: Source, settings: Settings) -> ModelInfo:
    return model_info(
        source.shape,
        source.name,
        source.wdtype,
        synthetic=settings.synthetic,
        source="memory" if source.checkpoint is not None else "file",
        checkpoint_bytes=source.file_bytes(),
        build_s=source.generate_s,
    )


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _gpu_ns(step: list[GpuTimings]) -> float:
    return sum(sum(ns for _, ns in timings) for _, timings, _ in step)


def summarise(run: Run, source: Source, settings: Settings, tensor_cores: bool = False) -> ModelRow:
    """One backend's row; `tensor_cores`: a backend of the same run uses cooperative matrices (vulkan)."""
    row = ModelRow(
        backend=run.name,
        ok=run.error is None,
        error=run.error,
        device=run.device,
        load=run.starts,
        memory=run.memory,
        copy_bandwidth=run.copy,
    )
    if not run.decode_runs:
        return row
    rates, walls_all, cpu, api_wall, waits = [], [], [], [], []
    for d in run.decode_runs:
        total = sum(d.wall_ns)
        if d.steps and total:
            rates.append(d.steps / seconds(total))
        walls_all += d.wall_ns
        cpu += d.api_cpu_ns
        api_wall += d.api_wall_ns
        waits += d.wait_ns
    tok_s = _median(rates)
    mean_wall = _mean(walls_all)
    row.decode = Decode(
        tokens=run.decode_runs[0].steps,
        tok_s=tok_s,
        tok_s_runs=rates,
        ms_per_token=1e3 / tok_s if tok_s else None,
        ms_per_token_median=ms(statistics.median(walls_all) if walls_all else 0),
    )
    prefill_rates = [settings.prefill_tokens / s for s in run.prefill_runs if s > 0]
    row.prefill = Prefill(
        tokens=settings.prefill_tokens,
        tok_s=_median(prefill_rates),
        tok_s_runs=prefill_rates,
        ms=_median(run.prefill_runs) * 1e3 if run.prefill_runs else None,
    )
    other = mean_wall - _mean(api_wall) - _mean(waits)
    last = run.decode_runs[-1]
    row.cpu = Cpu(
        api_cpu_ms_per_token=ms(_mean(cpu)),
        api_wall_ms_per_token=ms(_mean(api_wall)),
        wait_ms_per_token=ms(_mean(waits)),
        other_ms_per_token=ms(max(other, 0.0)),
        api_share=_mean(cpu) / mean_wall if mean_wall else None,
        api_wall_share=_mean(api_wall) / mean_wall if mean_wall else None,
        wait_share=_mean(waits) / mean_wall if mean_wall else None,
        calls_per_token=last.calls_per_step,
        us_per_call=last.call_wall_us,
    )
    copy_gbs = run.copy.gbs if run.copy else None
    profile = run.profile_decode
    steps = [s for s in profile.gpu_steps if s] if profile else []
    gpu = Gpu(timestamps=bool(steps), complete=bool(profile and profile.gpu_complete))
    kernels: list[ModelKernel] = []
    if steps:
        gpu_ns = _mean([_gpu_ns(step) for step in steps])
        gpu.gpu_ms_per_token = ms(gpu_ns)
        # Per-dispatch timestamps inflate short dispatches (the sum can exceed a clean step's wall time),
        # and in a step that submits and then waits the device works alone only while the host is not
        # busy: the share used for the verdict is capped at that.
        host_busy = (_mean(api_wall) + max(other, 0.0)) / mean_wall if mean_wall else 1.0
        gpu.gpu_share_raw = gpu_ns / mean_wall if mean_wall else None
        gpu.gpu_share = min(gpu.gpu_share_raw, max(1.0 - host_busy, 0.0)) if mean_wall else None
        profile_wall = _mean(profile.wall_ns)
        gpu.profile_ms_per_token = ms(profile_wall)
        gpu.gpu_share_profile = gpu_ns / profile_wall if profile_wall else None
        gpu.dispatches_per_token = sum(len(t) for _, t, _ in steps[0])
        kernels = kernel_rows(steps, "decode", copy_gbs)
    if run.profile_prefill:
        gpu.prefill_gpu_ms = ms(_gpu_ns(run.profile_prefill))
        kernels += kernel_rows([run.profile_prefill], "prefill", copy_gbs)
    gpu.bandwidth_utilisation = bandwidth_utilisation([k for k in kernels if k.phase == "decode"])
    row.gpu, row.kernels = gpu, kernels
    if copy_gbs and source.shape:
        per_token = source.shape.weight_bytes_per_token(source.wdtype)
        ceiling_tok_s = copy_gbs * 1e9 / per_token
        row.ceiling = Ceiling(ceiling_tok_s, per_token, tok_s / ceiling_tok_s if tok_s else None)
    row.verdict = verdict(
        backend=run.name,
        device_type=run.device.type if run.device else "other",
        gpu_share=gpu.gpu_share,
        api_share=row.cpu.api_share,
        bandwidth_utilisation=gpu.bandwidth_utilisation,
        tok_s=tok_s,
        target_tok_s=settings.target_tok_s,
        tensor_cores=tensor_cores,
    )
    if run.streams_runs:
        row.streams = summarise_streams(run, settings, tensor_cores)
    return row
