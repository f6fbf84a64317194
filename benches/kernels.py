"""Kernel micro-benches: every case of a model (`kernel_cases`) timed on each backend.

A case is timed with GPU timestamps where the backend's `gpu_timings` gives them, else by wall
time over replays of a CommandList holding many copies of the dispatch (`timing`). Achieved
GB/s = the minimum bytes the dispatch must move (benches.shapes.kernel_bytes) / its time,
compared with the bandwidth measured in the same run (`bandwidth.device_bandwidth`): the better
of a buffer-to-buffer copy of `copy_mib` MiB in a CommandList and the `add` kernel streaming
through as much, counting bytes read plus bytes written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from shaderbay.errors import ShaderbayError
from shaderbay.plugins import create_backend

from .bandwidth import device_bandwidth
from .kernel_buffers import build_rounds, cold_bytes
from .kernel_cases import KernelCase
from .results import Bandwidth, Device, KernelsRow, MicroKernel
from .shapes import kernel_bytes, kernel_flops
from .timing import time_pieces

# Dense float16 tensor-core rate (f32 accumulation, no sparsity), TFLOP/s, by Vulkan device name:
# NVIDIA's H200 datasheet (the H100 SXM's 989.4). Matmul rows report their share of it.
TENSOR_CORE_PEAK_TFLOPS = {"NVIDIA H200": 989.4}


def run_case(backend: Any, case: KernelCase, rng: np.random.Generator, min_time: float) -> MicroKernel:
    row = MicroKernel(case.name, case.phase, case.kernel, case.params, case.constants)
    if not backend.supports(case.kernel):
        row.error = "unsupported by this backend"
        return row
    buffers: list = []
    try:
        rounds, buffers = build_rounds(backend, case, rng, cold_bytes(backend))
        pieces = rounds[0]
        row.dispatches = len(pieces)
        row.bytes = sum(
            kernel_bytes(case.kernel, params, pipe.dtypes, pipe.constants, case.context) for pipe, _, params in pieces
        )
        flops = [kernel_flops(case.kernel, params, case.context) for _, _, params in pieces]
        row.flops = sum(flops) if None not in flops else None
        row.ns, row.source = time_pieces(backend, pieces, case.name, min_time, rounds=rounds)
        row.gbs = row.bytes / row.ns if row.ns > 0 else None
        row.tflops = row.flops / row.ns / 1e3 if row.flops and row.ns > 0 else None
    except ShaderbayError as exc:
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        for buf in buffers:
            if not buf.freed:
                buf.free()
    return row


def bench_kernels(
    backend: Any,
    cases: list[KernelCase],
    *,
    min_time: float = 0.1,
    copy_bytes: int = 512 << 20,
    seed: int = 0,
    on_case: Callable[[str], None] | None = None,
) -> tuple[Bandwidth, list[MicroKernel]]:
    """Copy bandwidth, then every case; rows carry `copy_bw_share` = achieved GB/s / copy GB/s, and
    `tensor_core_share` = achieved TFLOP/s / the device's tensor-core peak where it is known."""
    rng = np.random.default_rng(seed)
    peak = TENSOR_CORE_PEAK_TFLOPS.get(backend.caps.device)
    if on_case:
        on_case("copy bandwidth")
    copy = device_bandwidth(backend, copy_bytes)
    rows = []
    for case in cases:
        if on_case:
            on_case(f"{case.phase} {case.name}")
        row = run_case(backend, case, rng, min_time)
        if row.gbs is not None:
            row.copy_bw_share = row.gbs / copy.gbs
        if row.tflops and peak:
            row.tensor_core_share = row.tflops / peak
        rows.append(row)
    return copy, rows


def bench_kernel_backends(
    names: list[str],
    cases: list[KernelCase],
    *,
    min_time: float = 0.1,
    copy_bytes: int = 512 << 20,
    tracks: Any = None,
    note: Callable[[str], None] | None = None,
) -> list[KernelsRow]:
    """`bench_kernels` on each named backend in turn; a backend that fails gets an error row."""
    rows = []
    for name in names:
        row = KernelsRow(backend=name, ok=False, error=None)
        backend = None
        try:
            backend = create_backend(name)
            row.device = Device.of(backend)
            backend.tracer.enabled = True  # also what makes a backend write timestamp queries
            if tracks is not None:
                tracks.attach(name, backend.tracer)
            row.copy_bandwidth, row.kernels = bench_kernels(
                backend,
                cases,
                min_time=min_time,
                copy_bytes=copy_bytes,
                on_case=(lambda label, name=name: note(f"{name}: {label}")) if note else None,
            )
            row.ok = True
        except Exception as exc:  # noqa: BLE001 - one backend's failure must not end the others
            row.error = f"{type(exc).__name__}: {exc}"
        finally:
            if backend is not None:
                try:
                    backend.tracer.enabled = False
                    backend.close()
                except Exception:  # noqa: BLE001
                    pass
        rows.append(row)
    return rows
