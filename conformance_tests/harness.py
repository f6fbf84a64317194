"""Running one kernel case on a backend and on the reference, and comparing the two.

Only the public backend interface is used, so the harness runs against any backend.
Every binding lives in its own buffer between two guard regions of canary bytes; the
output bindings that a kernel only writes start as NaN poison (0xFF bytes: NaN as a float,
0xFFFFFFFF as an id), so elements a kernel forgets to write are caught. After the run:

- the guards of every buffer must be intact (no write outside the tensor),
- read-only bindings must be byte-identical to what was uploaded,
- in output bindings, elements the kernel must not write (per its semantics: the
  ``written`` masks of the case) must be byte-identical to their initial content,
- and the written elements are compared with the reference by relative error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from shaderbay.backends.numpy.kernels import REFERENCE
from shaderbay.dtypes import host_dtype, to_f32

CANARY = 0xA5
POISON = 0xFF
GUARD_BYTES = 64


@dataclass
class Case:
    """One run of a kernel: constants, parameters, the initial content of every binding."""

    kernel: str
    constants: dict[str, Any]
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]  # flat host arrays; an output absent here starts as poison
    written: dict[str, np.ndarray] = field(default_factory=dict)  # output -> bool mask of written elements
    sizes: dict[str, int] = field(default_factory=dict)  # element counts of poisoned outputs
    note: str = ""

    def __repr__(self) -> str:  # what Hypothesis prints as the falsifying example
        arrays = ", ".join(f"{k}: {v.dtype}[{v.size}]" for k, v in self.arrays.items())
        return f"<Case {self.describe()}; arrays {arrays}>"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis' pretty printer uses this
        printer.text(repr(self))

    def describe(self) -> str:
        consts = ", ".join(f"{k}={v}" for k, v in self.constants.items())
        params = ", ".join(f"{k}={v:.7g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return f"{self.kernel}[{consts}]({params}){' ' + self.note if self.note else ''}"


@dataclass
class Outcome:
    outputs: dict[str, np.ndarray]  # the backend's final content of every output binding
    reference: dict[str, np.ndarray]  # the reference's
    initial: dict[str, np.ndarray]  # what every binding started with


class ConformanceFailure(AssertionError):
    pass


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def initial_arrays(case: Case, pipeline) -> dict[str, np.ndarray]:
    init = {}
    for b in pipeline.bindings:
        dt = host_dtype(pipeline.dtypes[b.name])
        if b.name in case.arrays:
            arr = np.ascontiguousarray(case.arrays[b.name]).reshape(-1)
            if arr.dtype != dt:
                raise TypeError(f"test bug: {case.kernel}.{b.name} given {arr.dtype}, binding holds {dt}")
            init[b.name] = arr.copy()
        else:
            count = case.sizes[b.name]
            init[b.name] = np.frombuffer(bytes([POISON]) * (count * dt.itemsize), dt).copy()
    return init


def run_reference(case: Case, init: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = {name: arr.copy() for name, arr in init.items()}
    REFERENCE[case.kernel](arrays, dict(case.params), dict(case.constants))
    return arrays


def run_case(backend, case: Case) -> Outcome:
    """Run `case` on `backend` and on the reference; checks guards and read-only inputs."""
    pipeline = backend.pipeline(case.kernel, **case.constants)
    init = initial_arrays(case, pipeline)
    guard = _align(GUARD_BYTES, max(backend.caps.offset_alignment, 4))
    placed = []
    try:
        tensors = {}
        for b in pipeline.bindings:
            raw = init[b.name].tobytes()
            total = _align(guard + len(raw) + guard, 4)
            content = bytearray([CANARY]) * total
            content[guard : guard + len(raw)] = raw
            buf = backend.buffer(total)
            placed.append((b.name, buf, bytes(content), len(raw)))
            backend.write(buf, bytes(content))
            tensors[b.name] = buf.tensor(pipeline.dtypes[b.name], init[b.name].size, offset=guard)
        cmd = backend.command_list(case.kernel)
        cmd.dispatch(pipeline, tensors, **case.params)
        backend.run(cmd)
        outputs = {}
        for b, (name, buf, content, nbytes) in zip(pipeline.bindings, placed, strict=True):
            got = bytes(backend.read(buf))
            if got[:guard] != content[:guard] or got[guard + nbytes :] != content[guard + nbytes :]:
                where = _first_difference(got, content)
                raise ConformanceFailure(
                    f"{case.describe()}: wrote outside binding {name!r} (buffer byte {where}; the tensor is "
                    f"bytes {guard}..{guard + nbytes})"
                )
            if b.access == "read" and got != content:
                raise ConformanceFailure(
                    f"{case.describe()}: modified the read-only binding {name!r} "
                    f"(byte {_first_difference(got, content) - guard} of the tensor)"
                )
            if b.access != "read":
                outputs[name] = np.frombuffer(got[guard : guard + nbytes], init[name].dtype).copy()
    finally:
        for _, buf, _, _ in placed:
            if not buf.freed and not backend.closed:
                backend.free(buf)
    return Outcome(outputs, run_reference(case, init), init)


def _first_difference(a: bytes, b: bytes) -> int:
    diff = np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))
    return int(diff[0]) if diff.size else -1


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN or infinity where ref is finite gives infinity."""
    out = np.asarray(out, np.float64).reshape(-1)
    ref = np.asarray(ref, np.float64).reshape(-1)
    if out.size == 0:
        return 0.0
    bad = ~np.isfinite(out) & np.isfinite(ref)
    if bad.any():
        return float("inf")
    same_special = ~np.isfinite(ref) & ((out == ref) | (np.isnan(out) & np.isnan(ref)))
    if (~np.isfinite(ref) & ~same_special).any():
        return float("inf")
    keep = np.isfinite(ref)
    diff = np.linalg.norm(out[keep] - ref[keep])
    norm = np.linalg.norm(ref[keep])
    if norm == 0:
        return float(diff)
    return float(diff / norm)


def compare_outputs(case: Case, outcome: Outcome, dtypes: dict[str, str], check_values: bool = True) -> float:
    """Checks untouched elements byte for byte and returns the worst relative error of the written ones.

    Integer outputs must match exactly. With check_values False only the untouched elements are checked.
    """
    worst = 0.0
    for name, out in outcome.outputs.items():
        ref = outcome.reference[name]
        init = outcome.initial[name]
        mask = case.written.get(name)
        if mask is None:
            mask = np.ones(out.size, bool)
        mask = np.asarray(mask, bool).reshape(-1)
        untouched = ~mask
        if not np.array_equal(out[untouched].view(np.uint8), init[untouched].view(np.uint8)):
            idx = np.flatnonzero(untouched & (out.view(_uint_of(out)) != init.view(_uint_of(init))))
            raise ConformanceFailure(
                f"{case.describe()}: {name}: wrote {idx.size} element(s) the kernel must leave alone, "
                f"first at flat index {int(idx[0]) if idx.size else '?'} "
                f"(got {out[idx[:3]]}, was {init[idx[:3]]})"
            )
        dtype = dtypes[name]
        if not check_values:
            continue
        if dtype in ("u32", "i32", "u8"):
            if not np.array_equal(out[mask], ref[mask]):
                idx = np.flatnonzero(mask & (out != ref))
                raise ConformanceFailure(
                    f"{case.describe()}: {name}: {idx.size} wrong value(s), first at flat index {int(idx[0])}: "
                    f"got {out[idx[:5]].tolist()}, reference {ref[idx[:5]].tolist()}"
                )
            continue
        err = relative_error(to_f32(out[mask], dtype), to_f32(ref[mask], dtype))
        worst = max(worst, err)
    return worst


def _uint_of(arr: np.ndarray) -> np.dtype:
    return np.dtype(f"u{arr.dtype.itemsize}")


def explain_error(case: Case, outcome: Outcome, dtypes: dict[str, str], tol: float) -> str:
    """A short account of where a float output differs most, for failure messages."""
    lines = [f"{case.describe()}: relative error above the tolerance {tol:g}"]
    for name, out in outcome.outputs.items():
        if dtypes[name] not in ("f32", "f16", "bf16"):
            continue
        mask = case.written.get(name)
        mask = np.ones(out.size, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
        o = to_f32(out, dtypes[name]).astype(np.float64)
        r = to_f32(outcome.reference[name], dtypes[name]).astype(np.float64)
        err = relative_error(o[mask], r[mask])
        if err <= tol:
            continue
        with np.errstate(invalid="ignore"):
            delta = np.where(mask, np.abs(o - r), 0.0)
        delta = np.where(np.isnan(delta), np.inf, delta)
        idx = np.argsort(delta)[::-1][:4]
        unwritten = int(np.sum(mask & np.isnan(o) & ~np.isnan(r)))
        lines.append(
            f"  {name}: relative error {err:.3g}; {unwritten} element(s) still NaN poison / NaN; worst at "
            + ", ".join(f"[{i}] got {o[i]:.6g} want {r[i]:.6g}" for i in idx)
        )
    return "\n".join(lines)
