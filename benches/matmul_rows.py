"""Decode matrix products at several rows counts: `python -m shaderbay.benches.matmul_rows`.

Times matmul (GPU timestamps, benches.timing.time_pieces) at the decode shapes of the 1B and 135M
models (qkv with the RMSNorm prologue, o and down accumulating, gate/up with the SiLU-gated
epilogue, the LM head) for 1, 4, 16 and 64 rows, on a GPU rotating through copies of each matrix
that outgrow its caches (kernel_buffers.COLD_BYTES), and reports the matrix products of one decode
step (per-layer matrices times the layers, plus the head).
`--form NAME` forces a matrix-vector variant (e.g. `vec`, `vec4x4`) from 2 rows on, or a
cooperative-matrix one (`coop...`) at every rows count, to compare forms; `--rows N` times N rows
only (the inputs are sized for the most rows). `--check` also compares, bit for bit, each row of the
product at the most rows with the row alone.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from shaderbay.backends.shaders import variants
from shaderbay.plugins import create_backend

from .kernel_buffers import build_rounds, cold_bytes
from .kernel_cases import KernelCase
from .timing import time_pieces

# dim, ffn, q heads, kv heads, head_dim, vocab, layers
SHAPES = {"1B": (2048, 8192, 32, 8, 64, 128256, 16), "135M": (576, 1536, 9, 3, 64, 49152, 30)}
ROWS = (1, 4, 16, 64)


def matrices(shape: tuple[int, ...]) -> dict[str, tuple[dict[str, Any], int, int]]:
    """name -> (constants, n, k) of one layer's products and the head."""
    d, f, qh, kh, hd, vocab, _ = shape
    plain = {"bias": False, "accumulate": False, "prologue": "none", "epilogue": "none"}
    return {
        "qkv": ({**plain, "prologue": "rmsnorm"}, (qh + 2 * kh) * hd, d),
        "o": ({**plain, "accumulate": True}, d, qh * hd),
        "gate_up": ({**plain, "prologue": "rmsnorm", "epilogue": "silu_mul"}, 2 * f, d),
        "down": ({**plain, "accumulate": True}, d, f),
        "head": ({**plain, "prologue": "rmsnorm"}, vocab, d),
    }


def forcing(form: str | None):
    """variants.select, with the matrix-vector variant replaced by `form` from 2 rows on."""
    select = variants.select

    def chosen(kernel, constants, params, caps):
        v = select(kernel, constants, params, caps)
        coop = bool(form) and form.startswith("coop")  # a tensor-core form: every rows count, 1 too
        if form and kernel == "matmul" and (params["rows"] > 1 or coop) and "_vec" in v.name:
            stem = v.name.rsplit("_vec", 1)[0]
            return variants.by_name(f"{stem}_{form}" + ("_sg" if v.name.endswith("_sg") and not coop else ""))
        return v

    return chosen


def run_alone(backend: Any, pipe: Any, bindings: dict, params: dict, x: np.ndarray, r: int) -> np.ndarray:
    xb, ob = backend.upload(np.ascontiguousarray(x[r])), backend.empty(bindings["out"].shape[0] // len(x), "f32")
    cmd = backend.command_list("alone")
    cmd.dispatch(pipe, {**bindings, "x": xb, "out": ob}, **{**params, "rows": 1})
    backend.run(cmd)
    out = backend.read(ob).view(np.uint32).copy()
    backend.free(xb.buffer)
    backend.free(ob.buffer)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="vulkan")
    ap.add_argument("--wdtype", action="append", help="f16, q4_0, ... (repeatable; default f16 and q4_0)")
    ap.add_argument("--form", help="matrix-vector variant forced from 2 rows on (e.g. vec, vec4x4)")
    ap.add_argument("--check", action="store_true", help="bit for bit, the most rows timed against each row alone")
    ap.add_argument("--rows", type=int, action="append", help=f"rows counts (repeatable; default {ROWS})")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    variants.select = forcing(args.form)
    backend = create_backend(args.backend)
    rng = np.random.default_rng(0)
    figures, steps = [], {}
    counts = args.rows or ROWS
    for wdtype in args.wdtype or ["f16", "q4_0"]:
        for sname, shape in SHAPES.items():
            for mname, (constants, n, k) in matrices(shape).items():
                sizes = {"rows": max(counts), "n": n, "k": k, "eps": 1e-5}
                case = KernelCase(mname, "decode", "matmul", sizes, constants)
                case.constants["wdtype"] = wdtype
                rounds, buffers = build_rounds(backend, case, rng, cold_bytes(backend))
                ((pipe, bindings, params),) = rounds[0]
                for rows in counts:
                    at = [[(pipe, b, {**params, "rows": rows}) for _, b, _ in r] for r in rounds]
                    ns, _ = time_pieces(backend, at[0], mname, min_time=0.03, rounds=at)
                    figures.append({"wdtype": wdtype, "shape": sname, "matrix": mname, "rows": rows, "us": ns / 1e3})
                    times = 1 if mname == "head" else shape[-1]
                    key = (wdtype, sname, rows)
                    steps[key] = steps.get(key, 0.0) + times * ns / 1e6
                if args.check and not constants["accumulate"]:
                    cmd = backend.command_list("batch")
                    cmd.dispatch(pipe, bindings, **params)
                    backend.run(cmd)
                    full = backend.read(bindings["out"]).view(np.uint32).reshape(max(counts), -1)
                    x = backend.read(bindings["x"]).reshape(max(counts), -1)
                    differ = sum(
                        int((run_alone(backend, pipe, bindings, params, x, r) != full[r]).any()) for r in range(len(x))
                    )
                    print(f"{wdtype} {sname} {mname}: {differ} of {len(x)} rows differ from the row alone")
                for b in buffers:
                    backend.free(b)
    for (wdtype, sname, rows), ms in steps.items():
        rate = rows / ms * 1e3
        print(f"{wdtype:5} {sname:5} rows {rows:3}: matrix products of a decode step {ms:7.2f} ms, {rate:8,.0f} rows/s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    main()
