"""Cases of the row-wise kernels: embed, rmsnorm, silu_mul, add."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from shaderbay.dtypes import BLOCK_DTYPES

from ..harness import Case
from .blocks import row_length, weights
from .record import KernelCases, Regime, dim
from .values import U32_MAX, Values, subnormals

EPSILONS = (0.0, 1e-6, 1e-5, 1e-3, 0.1, 1.0, 4.0)


def _embed(v: Values, c: dict, s: dict) -> Case:
    rows, dim_, vocab = s["rows"], row_length(s["dim"], c["wdtype"]), s["vocab"]
    table = weights(v, vocab, dim_, -1000.0, 1000.0, c["wdtype"])
    ids = v.uints(rows, 0, vocab - 1)
    for _ in range(v.int(0, min(2, rows))):  # ids past the table give zero rows
        ids[v.int(0, rows - 1)] = v.pick([vocab, vocab + 1, U32_MAX])
    return Case(
        "embed",
        c,
        {"rows": rows, "dim": dim_, "vocab": vocab},
        {"table": table, "ids": ids},
        sizes={"out": rows * dim_},
    )


def _rows_with_energy(x: np.ndarray, rows: int, n: int, scale: float) -> np.ndarray:
    """With eps = 0 a zero row divides by zero: give every row one sizeable element."""
    x = x.reshape(rows, n).copy()
    x[:, 0] = np.where(np.abs(x[:, 0]) < 0.5 * scale, np.float32(scale), x[:, 0])
    return x.reshape(-1)


def _rmsnorm(v: Values, c: dict, s: dict) -> Case:
    rows, n = s["rows"], s["n"]
    eps = v.pick(EPSILONS)
    scale = v.pick((1e-3, 0.05, 1.0, 10.0, 300.0))
    x = (v.floats(rows * n, -1.0, 1.0) * np.float32(scale)).astype(np.float32)
    if eps == 0.0:
        x = _rows_with_energy(x, rows, n, scale)
    weight = v.floats(n, -2.0, 2.0)
    return Case("rmsnorm", c, {"rows": rows, "n": n, "eps": eps}, {"x": x, "weight": weight}, sizes={"out": rows * n})


def _silu_mul(v: Values, c: dict, s: dict) -> Case:
    rows, n = s["rows"], s["n"]
    return Case(
        "silu_mul", c, {"rows": rows, "n": n}, {"gate_up": v.floats(rows * 2 * n, -10.0, 10.0)}, sizes={"out": rows * n}
    )


def _add(v: Values, c: dict, s: dict) -> Case:
    n = s["n"]
    return Case("add", c, {"n": n}, {"x": v.floats(n, -100.0, 100.0), "y": v.floats(n, -100.0, 100.0)})


def _f16_subnormal_table(v: Values, case: Case) -> Case:
    # f16 weights below 2^-14 are subnormal (common in real checkpoints); in float32 they are
    # normal numbers, so widening them must be exact, not a flush to zero. (float32 and bf16
    # subnormals stay subnormal in float32, which a device may flush: not promised)
    case.arrays["table"] = subnormals(v, case.arrays["table"].size, "f16")
    return case


def _scaled_rows(scales: tuple[float, ...]):
    def rewrite(v: Values, case: Case) -> Case:
        # every row at one magnitude, far from 1 (the relative error is over the whole output:
        # rows of one size keep every row visible); eps = 0 keeps the normalisation scale-free
        rows, n = case.params["rows"], case.params["n"]
        scale = np.float32(v.pick(scales))
        x = v.floats(rows * n, -1.0, 1.0)
        if v.bool():  # a massive activation: one element far above the rest of its row
            x.reshape(rows, n)[:, v.int(0, n - 1)] = np.float32(v.pick((-1e3, 1e3)))
        case.arrays["x"] = _rows_with_energy((x * scale).astype(np.float32), rows, n, scale)
        case.params["eps"] = 0.0 if v.bool() else case.params["eps"]
        return case

    return rewrite


def _large_gates(v: Values, case: Case) -> Case:
    # gates of either sign far past exp's float32 range (|g| > 88): silu(g) -> g or -0, never NaN
    x = case.arrays["gate_up"]
    case.arrays["gate_up"] = (x * np.float32(v.pick((10.0, 1e3, 1e5)))).astype(np.float32)
    return case


CASES = (
    KernelCases(
        "embed",
        shapes=st.fixed_dictionaries({"rows": dim(12), "dim": dim(130), "vocab": dim(300)}),
        ladder=(
            {"rows": 16, "dim": 576, "vocab": 4096},
            {"rows": 64, "dim": 576, "vocab": 49152},
            {"rows": 512, "dim": 2048, "vocab": 16384},
        ),
        build=_embed,
        # a copy (f16/bf16 widen exactly) must be exact; 1e-6 only forgives flushing subnormals to zero
        # block formats: a small integer times an f16 scale (exact), plus a minimum (one rounding)
        tolerance={"f32": 1e-6, "f16": 1e-6, "bf16": 1e-6, **dict.fromkeys(BLOCK_DTYPES, 1e-6)},
        cost=lambda s: s["vocab"] * s["dim"] + s["rows"] * s["dim"],
        examples=0.5,
        regimes=(
            Regime(
                "f16_subnormal",
                "an f16 table widens exactly to float32, subnormals included",
                _f16_subnormal_table,
                ({"wdtype": "f16"},),
            ),
        ),
    ),
    KernelCases(
        "rmsnorm",
        shapes=st.fixed_dictionaries({"rows": dim(6), "n": dim(300)}),
        ladder=({"rows": 4, "n": 2048}, {"rows": 64, "n": 4096}, {"rows": 256, "n": 16384}),
        build=_rmsnorm,
        # float32 sums of n terms plus an approximate inversesqrt (a few ulp): a wide margin that
        # still sees any missing epsilon or term
        tolerance={"f32": 1e-4},
        # rows far from unit size: the sum of squares must neither overflow nor underflow, nor lose
        # its small squares where a device flushes subnormals (wgpu on an H100 did, at rms 1e-18);
        # with every eps, which may outweigh all of a tiny row's squares. A model's rows are nowhere
        # near either end; the kernel scales a row by a power of two before squaring it.
        regimes=(
            Regime("tiny_rows", "rows of rms 1e-30 .. 1e-6 normalise as any row", _scaled_rows((1e-30, 1e-18, 1e-6))),
            Regime("huge_rows", "rows of rms 1e4 .. 1e30 normalise as any row", _scaled_rows((1e4, 1e15, 1e30))),
        ),
    ),
    KernelCases(
        "silu_mul",
        shapes=st.fixed_dictionaries({"rows": dim(6), "n": dim(300)}),
        ladder=({"rows": 1, "n": 1536}, {"rows": 64, "n": 8192}, {"rows": 256, "n": 14336}),
        build=_silu_mul,
        tolerance={"f32": 1e-4},  # an approximate exp (a few ulp), as rmsnorm's inversesqrt
        regimes=(Regime("large_gates", "silu(g) = g / (1 + exp(-g)) for |g| up to 1e6: no NaN", _large_gates),),
    ),
    KernelCases(
        "add",
        shapes=st.fixed_dictionaries({"n": st.one_of(dim(300), st.integers(300, 5000))}),
        ladder=({"n": 1 << 16}, {"n": (1 << 20) + 3}, {"n": 1 << 24}),
        build=_add,
        tolerance={"f32": 1e-6},  # one correctly rounded float32 addition per element
    ),
)
