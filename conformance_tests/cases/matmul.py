"""Cases of matmul, with every prologue, epilogue and weight dtype."""

from __future__ import annotations

from hypothesis import strategies as st

from ..harness import Case
from .elementwise import EPSILONS
from .record import KernelCases, dim
from .values import Values


def _matmul(v: Values, c: dict, s: dict) -> Case:
    rows, n, k = s["rows"], s["n"], s["k"]
    paired = c.get("epilogue") == "silu_mul"
    if paired:  # (gate, up) row pairs
        n += n % 2
    width = 2 * k if c["prologue"] == "silu_mul" else k
    eps = v.pick(EPSILONS[1:]) if c["prologue"] == "rmsnorm" else v.pick((0.0, 1e-5))
    arrays = {
        "x": v.floats(rows * width, -4.0, 4.0) if c["prologue"] == "silu_mul" else v.floats(rows * width, -2.0, 2.0),
        "w": v.floats(n * k, -1.0, 1.0, c["wdtype"]),
    }
    if c["prologue"] == "rmsnorm":
        arrays["norm_weight"] = v.floats(k, -2.0, 2.0)
    if c["bias"]:
        arrays["bias"] = v.floats(n, -1.0, 1.0)
    sizes = {}
    outputs = rows * (n // 2 if paired else n)
    if c["accumulate"]:
        arrays["out"] = v.floats(outputs, -4.0, 4.0)
    else:
        sizes["out"] = outputs  # overwritten entirely: starts as poison
    return Case("matmul", c, {"rows": rows, "n": n, "k": k, "eps": eps}, arrays, sizes=sizes)


CASES = (
    KernelCases(
        "matmul",
        shapes=st.fixed_dictionaries(
            {"k": st.one_of(dim(70), st.sampled_from([255, 256, 257, 511, 513])), "rows": dim(9), "n": dim(70)}
        ),
        ladder=(
            {"rows": 1, "n": 576, "k": 576},
            {"rows": 3, "n": 1537, "k": 576},
            {"rows": 1, "n": 2048, "k": 2048},
            {"rows": 7, "n": 4099, "k": 1024},
            {"rows": 1, "n": 49152, "k": 576},
            {"rows": 33, "n": 4096, "k": 4096},
        ),
        build=_matmul,
        # a float32 dot product of k terms drifts like sqrt(k) ulp: 1e-4 for k in the thousands.
        # f16/bf16 weights widen exactly, but a device may multiply in half precision
        # (f16 products: ~5e-4; bf16: ~4e-3)
        tolerance={"f32": 1e-4, "f16": 1e-3, "bf16": 4e-3},
        cost=lambda s: s["rows"] * s["n"] * s["k"] + s["n"] * s["k"],
        examples=0.25,  # 36 constant combinations
    ),
)
