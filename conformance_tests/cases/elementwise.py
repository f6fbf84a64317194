"""Cases of the row-wise kernels: embed, rmsnorm, silu_mul, add."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ..harness import Case
from .record import KernelCases, dim
from .values import U32_MAX, Values

EPSILONS = (0.0, 1e-6, 1e-5, 1e-3, 0.1, 1.0, 4.0)


def _embed(v: Values, c: dict, s: dict) -> Case:
    rows, dim_, vocab = s["rows"], s["dim"], s["vocab"]
    table = v.floats(vocab * dim_, -1000.0, 1000.0, c["wdtype"])
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
        tolerance={"f32": 1e-6, "f16": 1e-6, "bf16": 1e-6},
        cost=lambda s: s["vocab"] * s["dim"] + s["rows"] * s["dim"],
        examples=0.5,
    ),
    KernelCases(
        "rmsnorm",
        shapes=st.fixed_dictionaries({"rows": dim(6), "n": dim(300)}),
        ladder=({"rows": 4, "n": 2048}, {"rows": 64, "n": 4096}, {"rows": 256, "n": 16384}),
        build=_rmsnorm,
        # float32 sums of n terms plus an approximate inversesqrt (a few ulp): a wide margin that
        # still sees any missing epsilon or term
        tolerance={"f32": 1e-4},
    ),
    KernelCases(
        "silu_mul",
        shapes=st.fixed_dictionaries({"rows": dim(6), "n": dim(300)}),
        ladder=({"rows": 1, "n": 1536}, {"rows": 64, "n": 8192}, {"rows": 256, "n": 14336}),
        build=_silu_mul,
        tolerance={"f32": 1e-4},  # an approximate exp (a few ulp), as rmsnorm's inversesqrt
    ),
    KernelCases(
        "add",
        shapes=st.fixed_dictionaries({"n": st.one_of(dim(300), st.integers(300, 5000))}),
        ladder=({"n": 1 << 16}, {"n": (1 << 20) + 3}, {"n": 1 << 24}),
        build=_add,
        tolerance={"f32": 1e-6},  # one correctly rounded float32 addition per element
    ),
)
