"""GPU backends against NumPy on a real model shape with random weights (the GPU machine's correctness check).

The real default model cannot travel to the GPU machine, so there the check is the synthetic
smollm2-135m shape in float16: the next-token logits after a prompt agree with NumPy's within
the conformance suite's model tolerance, and greedy decoding picks the same tokens.
Marked slow: on lavapipe it takes minutes; `make test-slow` runs it.
"""

from __future__ import annotations

import numpy as np
import pytest
import shaderbay
from shaderbay.conformance.plugin import session_backend
from shaderbay.conformance.tolerances import MODEL_LOGITS

# 72 tokens: more rows than the matrix-vector forms take (BATCH_ROWS), so the prompt runs the prefill
# product (tiled, or cooperative-matrix where the device has it)
PROMPT = [1, 504, 3458, 314, 253, 2023, 30, 2683, 28, 1675, 43, 12, 7, 991, 77, 5] * 4 + [9, 88, 451, 2, 36, 700, 14, 3]
MAX_CONTEXT = 128
MODEL = "synthetic:smollm2-135m:float16"


@pytest.fixture(scope="module")
def reference():
    with shaderbay.load(MODEL, backend="numpy", max_context=MAX_CONTEXT) as model:
        return model.logits(PROMPT), list(model.tokens(PROMPT, 8, ignore_eos=True))


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["vulkan", "wgpu"])
def test_logits_and_greedy_tokens_agree_with_numpy(backend_name, reference, pytestconfig):
    ref_logits, ref_tokens = reference
    with shaderbay.load(MODEL, backend=session_backend(pytestconfig, backend_name), max_context=MAX_CONTEXT) as model:
        logits = model.logits(PROMPT)
        tokens = list(model.tokens(PROMPT, 8, ignore_eos=True))
    error = float(np.linalg.norm(logits.astype(np.float64) - ref_logits) / np.linalg.norm(ref_logits))
    print(f"{backend_name}: relative logits error {error:.2e}, max abs {np.abs(logits - ref_logits).max():.2e}")
    assert error <= MODEL_LOGITS
    assert int(np.argmax(logits)) == int(np.argmax(ref_logits))
    assert tokens == ref_tokens
