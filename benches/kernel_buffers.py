"""The buffers of a kernel micro-bench case: filled with plausible values, split to fit the device."""

from __future__ import annotations

from typing import Any

import numpy as np
from shaderbay.backend import CPU_DEVICE_TYPES
from shaderbay.backends.numpy.quants import quantize
from shaderbay.dtypes import BLOCK_DTYPES, bytes_per_value, f32_to_bf16, host_dtype, nbytes
from shaderbay.models.sampling import Sampling
from shaderbay.rope import inverse_frequencies

from .kernel_cases import KernelCase

_RNG_BLOCK = 1 << 20
# Dispatches repeated on the same inputs time a GPU's last-level cache, not its memory, when those fit
# in it: the H100's and H200's 50 MB L2 holds any 1B decode product (8-34 MB), which then streamed at
# ~3 TB/s against ~1.4 inside a decode step (benches/RESULTS.md 2026-12-06 05:23). On GPUs the timed
# rounds take copies of a case's read-only inputs in turn, COLD_BYTES of them in all.
COLD_BYTES = 256 << 20
MAX_ROUNDS = 32


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


def cold_bytes(backend: Any) -> int:
    """COLD_BYTES on a GPU; 0 on a CPU device (lavapipe, NumPy), whose caches are the host's."""
    return 0 if backend.caps.device_type in CPU_DEVICE_TYPES else COLD_BYTES


def build(backend: Any, case: KernelCase, rng: np.random.Generator) -> tuple[list, list]:
    """The dispatches (pipeline, bindings, params) of one case, and the buffers to free afterwards."""
    rounds, buffers = build_rounds(backend, case, rng, 0)
    return rounds[0], buffers


def build_rounds(backend: Any, case: KernelCase, rng: np.random.Generator, cold_bytes: int) -> tuple[list, list]:
    """The case's dispatches as `build` gives them, then again on copies of their read-only inputs until
    all the copies pass `cold_bytes` (at most MAX_ROUNDS rounds; outputs shared): timed in turn, each
    round reads inputs that the device's caches have not held since the round before (COLD_BYTES)."""
    parts = []
    for part in _split(case, bytes_per_value(case.constants.get("wdtype", "f32")), backend.caps.max_binding_size):
        pipe = backend.pipeline(part.kernel, **part.constants)
        scope = {**pipe.constants, **pipe.spec.check_params(part.params, pipe.constants)}  # defaults filled in
        data = {}
        for b in pipe.bindings:
            numel = max(b.numel(scope), 1)
            data[b.name] = (numel, _fill(b.name, pipe.dtypes[b.name], numel, part, rng))
        parts.append((pipe, part.params, data))
    inputs = sum(d.nbytes for pipe, _, data in parts for b in pipe.bindings if b.access == "read"
                 for _, d in [data[b.name]] if d is not None)  # fmt: skip
    count = min(max(-(-cold_bytes // max(inputs, 1)), 1), MAX_ROUNDS)
    buffers: list = []
    shared: dict[tuple[int, str], Any] = {}  # (part, binding) -> its tensor in every round
    rounds = []
    for _ in range(count):
        pieces = []
        for i, (pipe, params, data) in enumerate(parts):
            bindings = {}
            for b in pipe.bindings:
                key = (i, b.name)
                if key in shared:
                    bindings[b.name] = shared[key]
                    continue
                numel, values = data[b.name]
                dtype = pipe.dtypes[b.name]
                t = backend.empty(numel, dtype) if values is None else backend.upload(values, dtype)
                buffers.append(t.buffer)
                bindings[b.name] = t
                if b.access != "read":
                    shared[key] = t
            pieces.append((pipe, bindings, params))
        rounds.append(pieces)
    return rounds, buffers
