"""Cases of matmul, with every prologue, epilogue and weight dtype."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from shaderbay.dtypes import BLOCK_DTYPES
from shaderbay.kernels import BATCH_ROWS

from ..harness import Case
from .blocks import row_length, weights
from .elementwise import EPSILONS
from .record import KernelCases, Regime, dim
from .values import RngValues, Values, subnormals


def _matmul(v: Values, c: dict, s: dict) -> Case:
    rows, n, k = s["rows"], s["n"], row_length(s["k"], c["wdtype"])
    paired = c.get("epilogue") == "silu_mul"
    if paired:  # (gate, up) row pairs
        n += n % 2
    width = 2 * k if c["prologue"] == "silu_mul" else k
    eps = v.pick(EPSILONS[1:]) if c["prologue"] == "rmsnorm" else v.pick((0.0, 1e-5))
    arrays = {
        "x": v.floats(rows * width, -4.0, 4.0) if c["prologue"] == "silu_mul" else v.floats(rows * width, -2.0, 2.0),
        "w": weights(v, n, k, -1.0, 1.0, c["wdtype"]),
    }
    if c["prologue"] == "rmsnorm":
        arrays["norm_weight"] = v.floats(k, -2.0, 2.0)
    if c["bias"]:
        arrays["bias"] = v.floats(n, -1.0, 1.0)
    # out's rows are wider than the results where columns before and after them belong to other products
    before, after = s.get("margin", (0, 0))
    width = n // 2 if paired else n
    stride = before + width + after
    sizes = {}
    if c["accumulate"]:
        arrays["out"] = v.floats(rows * stride, -4.0, 4.0)
    else:
        sizes["out"] = rows * stride  # the results overwritten entirely: start as poison
    written = np.zeros((rows, stride), bool)
    written[:, before : before + width] = True
    params = {"rows": rows, "n": n, "k": k, "eps": eps, "out_stride": stride, "out_offset": before}
    return Case("matmul", c, params, arrays, written={"out": written.reshape(-1)}, sizes=sizes)


# the forms a regime runs with: plain, f16 weights, each prologue and epilogue, bias and accumulate
FORMS = (
    {},
    {"wdtype": "f16"},
    {"prologue": "rmsnorm"},
    {"prologue": "silu_mul", "epilogue": "silu_mul"},
    {"bias": True, "accumulate": True},
)


def _scaled_activations(factors: tuple[float, ...], silu_factors: tuple[float, ...]):
    def rewrite(v: Values, case: Case) -> Case:
        # x times a factor far from 1; bias and the accumulated out scaled as the product is
        # (rmsnorm's prologue undoes the factor; silu_mul's squares it), so none of them hides it
        c = case.constants
        silu = "silu_mul" in (c["prologue"], c["epilogue"])
        f = v.pick(silu_factors if silu else factors)
        case.arrays["x"] = (case.arrays["x"] * np.float32(f)).astype(np.float32)
        y_scale = {"none": f, "rmsnorm": 1.0, "silu_mul": f * f}[c["prologue"]]
        out_scale = y_scale * y_scale if c["epilogue"] == "silu_mul" else y_scale
        if c["bias"]:
            case.arrays["bias"] = (case.arrays["bias"] * np.float32(y_scale)).astype(np.float32)
        if c["accumulate"]:
            case.arrays["out"] = (case.arrays["out"] * np.float32(out_scale)).astype(np.float32)
        return case

    return rewrite


def _f16_subnormal_weights(v: Values, case: Case) -> Case:
    # every weight an f16 subnormal (|w| < 2^-14, common in real checkpoints): each counts
    case.arrays["w"] = subnormals(v, case.arrays["w"].size, "f16")
    return case


CASES = (
    KernelCases(
        "matmul",
        shapes=st.fixed_dictionaries(
            {
                "k": st.one_of(dim(70), st.sampled_from([255, 256, 257, 511, 513])),
                # past BATCH_ROWS the prefill (tiled) forms take over from the matrix-vector ones
                "rows": st.one_of(dim(9), st.sampled_from([33, 47, BATCH_ROWS, BATCH_ROWS + 1])),
                "n": dim(70),
                "margin": st.sampled_from([(0, 0), (0, 0), (0, 0), (1, 0), (0, 3), (5, 2)]),
            }
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
        # Block formats dequantize exactly (a small integer times an f16 scale, plus a minimum)
        # but the kernels factor the scales and minimums out of each unit's sums: a few more
        # float32 roundings, and sums of blocks scaled 2^16 apart cancel (measured on lavapipe,
        # vec and tiled forms: <= 9e-6, q6_k). A wrong nibble, scale or minimum is off by 1e-2 or more.
        tolerance={"f32": 1e-4, "f16": 1e-3, "bf16": 4e-3, **dict.fromkeys(BLOCK_DTYPES, 1e-4)},
        cost=lambda s: s["rows"] * s["n"] * s["k"] + s["n"] * s["k"],
        examples=0.25,  # 192 constant combinations
        # activations far from unit size, as float32 holds them: up to 1e6 (past f16's 65504: a
        # form that rounds x to f16 is caught) and down to 1e-12 (silu_mul squares: 1e-6)
        regimes=(
            Regime(
                "large_activations",
                "x of magnitude 1e2 .. 1e6 (massive activations): float32 products",
                _scaled_activations((1e2, 1e4, 1e6), (1e2, 1e4, 1e6)),
                FORMS,
            ),
            Regime(
                "small_activations",
                "x of magnitude 1e-12 .. 1e-3: float32 products",
                _scaled_activations((1e-3, 1e-6, 1e-12), (1e-3, 1e-6)),
                FORMS,
            ),
            Regime(
                "f16_subnormal",
                "f16 weights widen exactly, subnormals included",
                _f16_subnormal_weights,
                ({"wdtype": "f16"},),
            ),
        ),
    ),
)


# --- batch invariance (the catalogue's BATCH_ROWS promise) ---------------------------------------

# rows counts around the batched form's groups of 4 x rows, up to the promise's end, and the rows
# compared with themselves alone (every place in a group, the first groups and the last)
INVARIANCE_ROWS = (2, 3, 5, 8, 13, 31, BATCH_ROWS)
INVARIANCE_CHECKED = (*range(13), 30, 45, BATCH_ROWS - 2, BATCH_ROWS - 1)
INVARIANCE_N = 37  # outputs: not a multiple of any workgroup's
# a whole number of 16-byte chunks (the matrix-vector forms), not one for f32/f16/bf16 (the 16-row
# tile), and several chunks or units an invocation (each sum's order across them must not change)
INVARIANCE_K = (96, 258, 4360)
# and one product of many outputs (2,085: past 2,048, where a backend may take another one-row form)
INVARIANCE_SHAPES = tuple((INVARIANCE_N, k) for k in INVARIANCE_K) + ((2085, 512),)
# the matrix units' form on a backend with them (Caps.cooperative_matrix; elsewhere the form is the
# vector forms the shapes above cover) besides: products of enough column tiles for its taller tiles
# (k not a whole number of 256-deep rounds; the first split over workgroups, the second a wide one),
# at rows counts past the 16-row tile, a row of each 16-row quarter of a 64-row tile compared
INVARIANCE_MATRIX_SHAPES = ((1000, 1800), (12200, 136))
INVARIANCE_MATRIX_ROWS = (31, BATCH_ROWS)
INVARIANCE_MATRIX_CHECKED = (0, 17, 30, 45, BATCH_ROWS - 1)
# every weight dtype once, the prologues, epilogues, bias and accumulate spread over them
INVARIANCE_COMBOS = tuple(
    {"wdtype": w, "bias": b, "accumulate": a, "prologue": p, "epilogue": e}
    for w, b, a, p, e in (
        ("f32", True, False, "rmsnorm", "none"),
        ("f16", False, True, "none", "silu_mul"),
        ("bf16", True, True, "silu_mul", "none"),
        ("q8_0", False, False, "rmsnorm", "silu_mul"),
        ("q4_0", False, True, "none", "none"),
        ("q4_1", True, False, "silu_mul", "silu_mul"),
        ("q4_k", False, True, "rmsnorm", "none"),
        ("q6_k", True, True, "none", "silu_mul"),
    )
) + tuple(  # the matrix units' form (tensor cores where the device has them; else the vector forms)
    {"wdtype": w, "bias": b, "accumulate": a, "prologue": p, "epilogue": e, "rows_form": "matrix"}
    for w, b, a, p, e in (
        ("f16", False, True, "none", "silu_mul"),
        ("f16", True, False, "rmsnorm", "none"),
        ("bf16", False, False, "silu_mul", "none"),
    )
)


def invariance_case(constants: dict, n: int, k: int, seed: int) -> Case:
    """A matmul case of BATCH_ROWS rows, whose first rows make the smaller cases (rows_of)."""
    return _matmul(RngValues(seed), constants, {"rows": BATCH_ROWS, "n": n, "k": k})


def rows_of(case: Case, start: int, stop: int) -> Case:
    """The case cut to x rows start..stop-1 (and their rows of out: read where it accumulates)."""
    rows = case.params["rows"]
    arrays, sizes = dict(case.arrays), dict(case.sizes)
    arrays["x"] = arrays["x"].reshape(rows, -1)[start:stop].ravel().copy()
    if "out" in arrays:
        arrays["out"] = arrays["out"].reshape(rows, -1)[start:stop].ravel().copy()
    else:
        sizes["out"] = sizes["out"] // rows * (stop - start)
    params = {**case.params, "rows": stop - start}
    return Case(case.kernel, case.constants, params, arrays, sizes=sizes, note=f"x rows {start}..{stop - 1}")
