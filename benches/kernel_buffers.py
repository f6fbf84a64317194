"""The buffers of a kernel micro-bench case: filled with plausible values, split to fit the device."""

from __future__ import annotations

from typing import Any

import numpy as np
from shaderbay.backends.numpy.quants import quantize
from shaderbay.dtypes import BLOCK_DTYPES, bytes_per_value, f32_to_bf16, host_dtype, nbytes
from shaderbay.models.sampling import Sampling
from shaderbay.rope import inverse_frequencies

from .kernel_cases import KernelCase

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
        scope = {**pipe.constants, **pipe.spec.check_params(part.params, pipe.constants)}  # defaults filled in
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
