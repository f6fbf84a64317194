"""The prefill matrix product at many-row shapes, every f16/bf16 constant choice, on each GPU backend.

The conformance suite's generated shapes have few rows (the matrix-vector form's); prefill takes
the tiled or the cooperative-matrix variant, chosen by capability. Here each constant choice runs
at such shapes against the NumPy reference, through the conformance harness and its tolerances,
and the cooperative-matrix variant must be the one chosen exactly when the device lists its
shape (the H200: this is its check there; lavapipe: the tiled kernel).
"""

from __future__ import annotations

import pytest
from shaderbay.backends.shaders import records, variants
from shaderbay.backends.shaders.variants_heavy import COOP_SHAPE
from shaderbay.conformance.cases import RngValues, kernel_cases
from shaderbay.conformance.harness import compare_outputs, explain_error, run_case
from shaderbay.conformance.plugin import session_backend
from shaderbay.conformance.tolerances import tolerance

SHAPES = (
    {"rows": 70, "n": 136, "k": 264},  # no size a multiple of a tile; k a multiple of 8, not of 32
    {"rows": 64, "n": 128, "k": 256},  # whole tiles
)
COMBOS = [c for c in records.combos("matmul") if c["wdtype"] in ("f16", "bf16")]


@pytest.mark.parametrize("constants", COMBOS, ids=["-".join(str(v) for v in c.values()) for c in COMBOS])
def test_prefill_matmul_agrees_with_numpy(constants, pytestconfig):
    """On vulkan (wgpu runs the same tiled SPIR-V, which the conformance suite covers)."""
    backend = session_backend(pytestconfig, "vulkan")
    coop = COOP_SHAPE in backend.caps.cooperative_matrix
    for i, shape in enumerate(SHAPES):
        case = kernel_cases("matmul").case(RngValues(100 + i), constants, shape)
        chosen = variants.select("matmul", constants, case.params, backend.caps)
        assert (chosen.source == "matmul_coop.comp") == coop, chosen.name
        outcome = run_case(backend, case)
        dtypes = backend.pipeline("matmul", **constants).dtypes
        err = compare_outputs(case, outcome, dtypes)
        tol = tolerance("matmul", constants)
        assert err <= tol, explain_error(case, outcome, dtypes, tol)
