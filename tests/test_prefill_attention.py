"""Prefill attention at many-row shapes on vulkan: the tensor-core variant (attention_coop.comp).

The conformance suite's generated attention cases have few rows; prefill with more rows than the
matrix-vector form takes runs attention_coop.comp where the device lists its product (the H200:
this is its check there; lavapipe: the scalar kernel). Each shape runs the conformance cases'
position modes (a prompt's consecutive positions, early ones, past the cache) and NaN in the
cache rows no query sees, against the NumPy reference within attention's own tolerance.
"""

from __future__ import annotations

import pytest
from shaderbay.backends.shaders import variants
from shaderbay.backends.shaders.variants_heavy import COOP_SHAPE
from shaderbay.conformance.cases import RngValues, kernel_cases
from shaderbay.conformance.harness import compare_outputs, explain_error, run_case
from shaderbay.conformance.plugin import session_backend

CONSTANTS = {"cache_dtype": "f16"}
SHAPES = (  # head_dim 64 (the variant's); rows not a multiple of its 64-row tile; GQA groups of 1 to 5
    {"rows": 40, "n_kv_heads": 3, "group": 3, "head_dim": 64, "max_seq": 64, "extra": 0},
    {"rows": 70, "n_kv_heads": 1, "group": 1, "head_dim": 64, "max_seq": 100, "extra": 2},
    {"rows": 130, "n_kv_heads": 2, "group": 5, "head_dim": 64, "max_seq": 300, "extra": 1},
)


@pytest.mark.parametrize("index", range(len(SHAPES)), ids=[f"rows{s['rows']}" for s in SHAPES])
def test_prefill_attention_agrees_with_numpy(index, pytestconfig):
    backend = session_backend(pytestconfig, "vulkan")
    coop = COOP_SHAPE in backend.caps.cooperative_matrix
    cases = kernel_cases("attention")
    tolerance = cases.tolerance[CONSTANTS["cache_dtype"]]
    for seed in range(4):
        case = cases.case(RngValues(1000 + 10 * index + seed), CONSTANTS, SHAPES[index])
        chosen = variants.select("attention", CONSTANTS, case.params, backend.caps)
        assert (chosen.source == "attention_coop.comp") == coop, chosen.name
        outcome = run_case(backend, case)
        dtypes = backend.pipeline("attention", **CONSTANTS).dtypes
        err = compare_outputs(case, outcome, dtypes)
        assert err <= tolerance, explain_error(case, outcome, dtypes, tolerance)
