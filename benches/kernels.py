"""Kernel micro-benches and the copy bandwidth.

Each catalogue kernel is timed at the shapes one decode step (1 row) and one prefill
(`prefill_tokens` rows) of a model use, in the fused forms the model uses (RMSNorm prologue on
the QKV, gate/up and LM-head projections, the SiLU-gated epilogue on gate/up, residual
accumulate on the o and down projections), and the unfused kernels beside them. A kernel is
timed with GPU timestamps where the backend's `gpu_timings` gives them, else by wall time over
replays of a CommandList holding many copies of the dispatch (so submit and wait costs are
spread thin). Achieved GB/s = the minimum bytes the dispatch must move
(benches.shapes.kernel_bytes) / its time, compared with the bandwidth measured in the same run
(`device_bandwidth`): the better of a buffer-to-buffer copy of `copy_mib` MiB in a CommandList
and the `add` kernel streaming through as much, counting bytes read plus bytes written.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from shaderbay.backends.numpy.quants import quantize
from shaderbay.dtypes import BLOCK_DTYPES, bytes_per_value, f32_to_bf16, host_dtype, nbytes
from shaderbay.errors import LimitExceeded, ShaderbayError
from shaderbay.models.llama import BLOCK_SIZE
from shaderbay.models.sampling import Sampling
from shaderbay.plugins import create_backend
from shaderbay.rope import inverse_frequencies

from .results import Bandwidth, Copy, Device, KernelsRow, MicroKernel, StreamError
from .shapes import Shape, kernel_bytes, kernel_flops


@dataclass
class KernelCase:
    name: str  # e.g. "matmul.qkv"
    phase: str  # "decode" or "prefill"
    kernel: str
    params: dict[str, Any]
    constants: dict[str, Any] = field(default_factory=dict)
    context: int | None = None  # live context for attention
    positions: list[int] | None = None


def model_cases(
    shape: Shape, wdtype: str, prefill_tokens: int, context: int, max_context: int, cache_dtype: str = "f32"
) -> list[KernelCase]:
    """The kernels of one decode step (1 row, attention over `context` positions) and one prefill."""
    s = shape
    cases: list[KernelCase] = []
    for phase, rows in (("decode", 1), ("prefill", prefill_tokens)):
        if phase == "decode":
            positions, max_seq, live = [context - 1], max_context, context
        else:
            positions, max_seq, live = list(range(rows)), max(max_context, rows), rows
        w = {"wdtype": wdtype}
        c = {"cache_dtype": cache_dtype}
        blocks = -(-max_seq // BLOCK_SIZE)
        paged = {"block_size": BLOCK_SIZE, "blocks_per_seq": blocks, "n_blocks": blocks, "n_seqs": 1}
        heads = {  # the attention kernels' common parameters
            "n_heads": s.n_heads,
            "n_kv_heads": s.n_kv_heads,
            "head_dim": s.head_dim,
            **paged,
            "scale": 1.0 / float(np.sqrt(s.head_dim)),
        }
        cases += [
            KernelCase("embed", phase, "embed", {"rows": rows, "dim": s.dim, "vocab": s.vocab_size}, w),
            KernelCase("rmsnorm", phase, "rmsnorm", {"rows": rows, "n": s.dim, "eps": 1e-5}),
            KernelCase(
                "matmul.qkv",
                phase,
                "matmul",
                {"rows": rows, "n": s.qkv_dim, "k": s.dim, "eps": 1e-5},
                {**w, "prologue": "rmsnorm"},
            ),
            KernelCase(
                "rope.qk",
                phase,
                "rope",
                {
                    "rows": rows,
                    "heads": s.n_heads + s.n_kv_heads,
                    "head_dim": s.head_dim,
                    "stride": s.qkv_dim,
                    "offset": 0,
                },
                positions=positions,
            ),
            KernelCase(
                "kv_write",
                phase,
                "kv_write",
                {
                    "rows": rows,
                    "stride": s.qkv_dim,
                    "k_offset": s.q_dim,
                    "v_offset": s.q_dim + s.kv_dim,
                    "kv_dim": s.kv_dim,
                    **paged,
                },
                c,
                positions=positions,
            ),
            KernelCase(
                "attention",
                phase,
                "attention",
                {"rows": rows, "q_stride": s.qkv_dim, **heads},
                c,
                context=live,
                positions=positions,
            ),
            KernelCase(
                "matmul.o",
                phase,
                "matmul",
                {"rows": rows, "n": s.dim, "k": s.q_dim, "eps": 1e-5},
                {**w, "accumulate": True},
            ),
            KernelCase(
                "matmul.gate_up",
                phase,
                "matmul",
                {"rows": rows, "n": 2 * s.ffn_dim, "k": s.dim, "eps": 1e-5},
                {**w, "prologue": "rmsnorm", "epilogue": "silu_mul"},
            ),
            KernelCase("silu_mul", phase, "silu_mul", {"rows": rows, "n": s.ffn_dim}),
            KernelCase(
                "matmul.down",
                phase,
                "matmul",
                {"rows": rows, "n": s.dim, "k": s.ffn_dim, "eps": 1e-5},
                {**w, "accumulate": True},
            ),
            KernelCase("add", phase, "add", {"n": rows * s.dim}),
        ]
        if phase == "decode":  # prefill computes logits for its last row only: the decode shapes
            cases += [
                KernelCase(  # what a decode step runs instead of rope.qk, kv_write and attention
                    "decode_attention",
                    phase,
                    "decode_attention",
                    {"rows": 1, "stride": s.qkv_dim, **heads},
                    c,
                    context=live,
                    positions=positions,
                ),
                KernelCase(
                    "matmul.lm_head",
                    phase,
                    "matmul",
                    {"rows": 1, "n": s.vocab_size, "k": s.dim, "eps": 1e-5},
                    {**w, "prologue": "rmsnorm"},
                ),
                KernelCase("argmax", phase, "argmax", {"rows": 1, "n": s.vocab_size}),
                KernelCase(
                    "sample",
                    phase,
                    "sample",
                    {"rows": 1, "n": s.vocab_size, "n_seqs": 1, "hist_cap": max_context},
                ),
            ]
    return cases


# --- building the buffers of a case --------------------------------------------------------------

# Dense float16 tensor-core rate (f32 accumulation, no sparsity), TFLOP/s, by Vulkan device name:
# NVIDIA's H200 datasheet (the H100 SXM's 989.4). Matmul rows report their share of it.
TENSOR_CORE_PEAK_TFLOPS = {"NVIDIA H200": 989.4}

_RNG_BLOCK = 1 << 20


def _random(numel: int, dtype: str, scale: float, rng: np.random.Generator) -> np.ndarray:
    block = rng.standard_normal(min(numel, _RNG_BLOCK), dtype=np.float32) * scale
    if dtype in BLOCK_DTYPES:  # blocks of the random values, repeated
        return np.resize(quantize(block, dtype), nbytes(dtype, (numel,)))
    values = np.resize(block, numel)
    if dtype == "bf16":
        return f32_to_bf16(values)
    return values.astype(host_dtype(dtype))


def _fill(binding: str, dtype: str, numel: int, case: KernelCase, rng: np.random.Generator) -> np.ndarray | None:
    p = case.params
    if binding in ("ids",):
        return rng.integers(0, p["vocab"], numel, dtype=np.uint32)
    if binding == "positions":
        pos = np.array(case.positions or [0], np.uint32)
        return np.resize(pos, numel).astype(np.uint32)
    if binding == "state":
        return np.array([1234, 0, 0, 0], np.uint32)[:numel]
    if binding == "history":
        return np.zeros(numel, np.uint32)
    if binding == "block_tables":  # the identity
        return np.arange(numel, dtype=np.uint32)
    if binding == "settings":  # llama.cpp's defaults, repetition penalty 1.1
        return np.resize(Sampling(0.8, 40, 0.95, 1.1, 0.05).settings_row(), numel)
    if binding == "inv_freq":
        return np.resize(inverse_frequencies(p["head_dim"], 10000.0), numel).astype(np.float32)
    if binding in ("weight", "norm_weight"):
        return np.ones(numel, np.float32)
    if binding in ("w", "table"):
        return _random(numel, dtype, 0.02, rng)
    if binding in ("out",) and case.kernel not in ("matmul",):
        return None  # written by the kernel: no upload needed
    if dtype in ("u32", "i32"):
        return np.zeros(numel, host_dtype(dtype))
    return _random(numel, dtype, 1.0, rng)


def _split(case: KernelCase, wsize: float, max_binding: int) -> list[KernelCase]:
    """Cases whose weights exceed the device's largest binding, split as a model must split them."""
    p = case.params
    if case.kernel == "matmul" and p["n"] * p["k"] * wsize > max_binding:
        per = max(int(max_binding // (p["k"] * wsize)) // 64 * 64, 1)
        parts = []
        for start in range(0, p["n"], per):
            parts.append(KernelCase(case.name, case.phase, case.kernel, {**p, "n": min(per, p["n"] - start)},
                                    case.constants, case.context, case.positions))  # fmt: skip
        return parts
    if case.kernel == "embed" and p["vocab"] * p["dim"] * wsize > max_binding:
        vocab = int(max_binding // (p["dim"] * wsize))
        return [KernelCase(case.name, case.phase, case.kernel, {**p, "vocab": vocab}, case.constants)]
    return [case]


def build(backend: Any, case: KernelCase, rng: np.random.Generator) -> tuple[list, list]:
    """The dispatches (pipeline, bindings, params) of one case, and the buffers to free afterwards."""
    pieces = []
    buffers = []
    wdtype = case.constants.get("wdtype", "f32")
    for part in _split(case, bytes_per_value(wdtype), backend.caps.max_binding_size):
        pipe = backend.pipeline(part.kernel, **part.constants)
        scope = {**pipe.constants, **part.params}
        bindings = {}
        for b in pipe.bindings:
            dtype = pipe.dtypes[b.name]
            numel = max(b.numel(scope), 1)
            data = _fill(b.name, dtype, numel, part, rng)
            t = backend.empty(numel, dtype) if data is None else backend.upload(data, dtype)
            buffers.append(t.buffer)
            bindings[b.name] = t
        pieces.append((pipe, bindings, part.params))
    return pieces, buffers


# --- timing ----------------------------------------------------------------------------------------


def _record(backend: Any, pieces: list, times: int, label: str) -> Any:
    cmd = backend.command_list(label)
    for _ in range(times):
        for pipe, bindings, params in pieces:
            cmd.dispatch(pipe, bindings, label=label, **params)
    return cmd


def _timed_run(backend: Any, cmd: Any) -> int:
    t0 = time.perf_counter_ns()
    backend.run(cmd)
    return time.perf_counter_ns() - t0


def time_pieces(backend: Any, pieces: list, label: str, min_time: float = 0.1, max_runs: int = 50) -> tuple[float, str]:
    """ns for one execution of `pieces` (a case's dispatches), and the source: 'gpu' or 'wall'.

    Either way the list holds enough copies of the dispatches to keep the device busy for a
    couple of milliseconds per run (so clocks stay up and submit costs spread thin); with GPU
    timestamps the figure is the median over the copies of all runs, else the median run's
    wall time divided by the copies.
    """
    once = _record(backend, pieces, 1, label)
    backend.run(once)  # warm-up; prepares the list
    timings = backend.gpu_timings(once)
    single = sum(ns for _, ns in timings) if timings else _timed_run(backend, once)
    # Enough copies that one run lasts ~min_time/5 (at least 2 ms), at most 256.
    copies = int(min(max((max(min_time / 5, 0.002) * 1e9) // max(single, 1), 1), 256))
    cmd = _record(backend, pieces, copies, label) if copies > 1 else once
    if copies > 1:
        backend.run(cmd)
    samples: list[float] = []
    runs = 0
    deadline = time.perf_counter() + min_time
    while runs < 3 or (time.perf_counter() < deadline and runs < max_runs):
        wall = _timed_run(backend, cmd)
        runs += 1
        got = backend.gpu_timings(cmd) if timings else None
        if got and len(got) == copies * len(pieces):
            per = len(pieces)
            samples += [sum(ns for _, ns in got[i : i + per]) for i in range(0, len(got), per)]
        else:
            timings = None
            samples.append(wall / copies)
    return float(statistics.median(samples)), "gpu" if timings else "wall"


def copy_bandwidth(backend: Any, size: int = 512 << 20, copies: int = 4, runs: int = 5) -> Copy:
    """Device copy bandwidth in GB/s (bytes read + written per second) from a CommandList of copies between
    two buffers of `size` / 2 bytes each."""
    size = int(min(size // 2, backend.caps.max_buffer_size) // 256 * 256)
    a = backend.buffer(size)
    b = backend.buffer(size)
    try:
        cmd = backend.command_list("copy_bandwidth")
        for i in range(copies):
            src, dst = (a, b) if i % 2 == 0 else (b, a)
            cmd.copy(src, dst, size)
        backend.run(cmd)  # warm-up: touches the pages, prepares the list
        walls = [_timed_run(backend, cmd) for _ in range(runs)]
        timings = backend.gpu_timings(cmd)
        moved = 2 * size * copies
        if timings and len(timings) == copies:
            ns, source = sum(t for _, t in timings), "gpu"
        else:
            ns, source = min(walls), "wall"
        return Copy(gbs=moved / ns, bytes=moved, buffer_bytes=size, ns=ns, source=source)
    finally:
        a.free()
        b.free()


def stream_bandwidth(backend: Any, size: int = 512 << 20, pairs: int = 2, min_time: float = 0.05) -> Copy:
    """GB/s of the catalogue's `add` kernel (x += y: two reads and a write per element) streaming through
    `pairs` pairs of buffers holding `size` bytes in all (alternating pairs, so that a cache cannot hold them)."""
    per = int(min(size // (2 * pairs), backend.caps.max_binding_size) // 1024 * 1024)
    rng = np.random.default_rng(0)
    while True:
        n = max(per // 4, 256)
        tensors = []
        try:
            block = rng.standard_normal(min(n, 1 << 20), dtype=np.float32)
            for _ in range(2 * pairs):
                tensors.append(backend.upload(np.resize(block, n)))
            pipe = backend.pipeline("add")
            pieces = [(pipe, {"x": tensors[2 * i], "y": tensors[2 * i + 1]}, {"n": n}) for i in range(pairs)]
            ns, source = time_pieces(backend, pieces, "stream_bandwidth", min_time)
            moved = 12 * n * pairs
            return Copy(gbs=moved / ns, bytes=moved, buffer_bytes=4 * n, ns=ns, source=source)
        except LimitExceeded:  # too many workgroups for one dispatch: smaller buffers
            if per <= 1 << 20:
                raise
            per //= 2
        finally:
            for t in tensors:
                t.buffer.free()


def device_bandwidth(backend: Any, size: int = 512 << 20) -> Bandwidth:
    """The reference bandwidth kernels are compared with: the better of a buffer copy in a CommandList and a
    streaming kernel. (A copy may run on a copy engine slower than the shader cores: on an H100 through
    Vulkan, vkCmdCopyBuffer reaches ~0.8 TB/s where kernels stream at over 2 TB/s.)"""
    copy = copy_bandwidth(backend, size)
    try:
        stream: Copy | StreamError = stream_bandwidth(backend, size)
    except ShaderbayError as exc:
        stream = StreamError(f"{type(exc).__name__}: {exc}")
    best = stream if isinstance(stream, Copy) and stream.gbs > copy.gbs else copy
    return Bandwidth(**asdict(best), method="copy" if best is copy else "stream", copy=copy, stream=stream)


def run_case(backend: Any, case: KernelCase, rng: np.random.Generator, min_time: float) -> MicroKernel:
    row = MicroKernel(case.name, case.phase, case.kernel, case.params, case.constants)
    if not backend.supports(case.kernel):
        row.error = "unsupported by this backend"
        return row
    buffers: list = []
    try:
        pieces, buffers = build(backend, case, rng)
        row.dispatches = len(pieces)
        row.bytes = sum(
            kernel_bytes(case.kernel, params, pipe.dtypes, pipe.constants, case.context) for pipe, _, params in pieces
        )
        flops = [kernel_flops(case.kernel, params, case.context) for _, _, params in pieces]
        row.flops = sum(flops) if None not in flops else None
        row.ns, row.source = time_pieces(backend, pieces, case.name, min_time)
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
