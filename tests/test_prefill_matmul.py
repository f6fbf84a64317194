"""The prefill matrix product at many-row shapes, every f16/bf16/block-weight constant choice, on each GPU backend.

The conformance suite's generated shapes have few rows (the matrix-vector form's); prefill takes
the tiled or the cooperative-matrix variant, chosen by capability. Here each constant choice runs
at such shapes against the NumPy reference, through the conformance harness, and the
cooperative-matrix variant must be the one chosen exactly when the device lists its shape (the
H200: this is its check there; lavapipe: the tiled kernel). The budget is a model's
(MODEL_PRODUCT), not the kernel's f16 one, which admits activations rounded to f16: that passed
here and took a 30-layer model's logits 4x over their budget. The device agreement test's own
products (its model's shapes and options, 72 rows) run on every backend.
"""

from __future__ import annotations

import pytest
from shaderbay.backends.shaders import records, variants
from shaderbay.backends.shaders.records import COOP_SHAPE
from shaderbay.conformance.cases import RngValues, kernel_cases
from shaderbay.conformance.harness import compare_outputs, explain_error, run_case
from shaderbay.conformance.plugin import session_backend
from shaderbay.conformance.tolerances import MODEL_PRODUCT
from shaderbay.models.config import ModelConfig
from shaderbay.models.synthetic import synthetic_config

SHAPES = (
    {"rows": 70, "n": 136, "k": 264},  # no size a multiple of a tile; k a multiple of 8, not of 32
    {"rows": 128, "n": 128, "k": 256},  # whole tiles
)
COMBOS = [c for c in records.combos("matmul") if c["wdtype"] != "f32"]


def _model_products(shape: str, rows: int, wdtype: str) -> list[tuple[str, dict, dict]]:
    """The prefill products models/llama.py records for `rows` prompt rows of a synthetic shape with
    wdtype weights: (label, constants, shape) of qkv, o, gate_up and down."""
    c = ModelConfig.from_dict(synthetic_config(shape))
    base = {"wdtype": wdtype, "bias": False, "accumulate": False, "prologue": "none", "epilogue": "none"}
    return [
        ("qkv", {**base, "prologue": "rmsnorm"}, {"rows": rows, "n": c.qkv_dim, "k": c.dim}),
        ("o", {**base, "accumulate": True}, {"rows": rows, "n": c.dim, "k": c.q_dim}),
        (
            "gate_up",
            {**base, "prologue": "rmsnorm", "epilogue": "silu_mul"},
            {"rows": rows, "n": 2 * c.ffn_dim, "k": c.dim},
        ),
        ("down", {**base, "accumulate": True}, {"rows": rows, "n": c.dim, "k": c.ffn_dim}),
    ]


# tests/test_device_agreement.py's model and prompt length (one prefill chunk); its f16 weights, and
# the block formats of the default model (q4_1) and of a Q4_K_M file's two
MODEL_PRODUCTS = [p for w in ("f16", "q4_1", "q4_k", "q6_k") for p in _model_products("smollm2-135m", 72, w)]


@pytest.mark.parametrize("constants", COMBOS, ids=["-".join(str(v) for v in c.values()) for c in COMBOS])
def test_prefill_matmul_agrees_with_numpy(constants, pytestconfig):
    """On vulkan (wgpu runs the same tiled SPIR-V, which the conformance suite covers)."""
    backend = session_backend(pytestconfig, "vulkan")
    coop = COOP_SHAPE in backend.caps.cooperative_matrix
    for i, shape in enumerate(SHAPES):
        case = kernel_cases("matmul").case(RngValues(100 + i), constants, shape)
        chosen = variants.select("matmul", constants, case.params, backend.caps)
        assert chosen.source != "matmul_vec.comp" and (chosen.source == "matmul_coop.comp") == coop, chosen.name
        outcome = run_case(backend, case)
        dtypes = backend.pipeline("matmul", **constants).dtypes
        err = compare_outputs(case, outcome, dtypes)
        assert err <= MODEL_PRODUCT, explain_error(case, outcome, dtypes, MODEL_PRODUCT)


@pytest.mark.parametrize("backend_name", ["numpy", "wgpu", "vulkan"])
@pytest.mark.parametrize(
    ("label", "constants", "shape"), MODEL_PRODUCTS, ids=[f"{p[0]}-{p[1]['wdtype']}" for p in MODEL_PRODUCTS]
)
def test_model_prefill_products_keep_float32_activations(backend_name, label, constants, shape, pytestconfig):
    """Each product of the device agreement test's prefill, within the budget a whole model needs
    (MODEL_PRODUCT), not only the f16 kernel budget: activations rounded to f16 pass the latter."""
    backend = session_backend(pytestconfig, backend_name)
    case = kernel_cases("matmul").case(RngValues(7), constants, shape)
    outcome = run_case(backend, case)
    dtypes = backend.pipeline("matmul", **constants).dtypes
    err = compare_outputs(case, outcome, dtypes)
    chosen = "-"
    if backend_name == "vulkan":  # the device's prefill kernel: cooperative-matrix where it lists the shape
        variant = variants.select("matmul", constants, case.params, backend.caps)
        assert (variant.source == "matmul_coop.comp") == (COOP_SHAPE in backend.caps.cooperative_matrix)
        chosen = variant.name
    print(f"{backend_name} {label} ({chosen}): relative error {err:.2e}")
    assert err <= MODEL_PRODUCT, explain_error(case, outcome, dtypes, MODEL_PRODUCT)
