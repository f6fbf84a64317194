"""argmax splits a row over workgroups that hand over through `scratch`: replayed, it keeps agreeing.

The conformance suite runs each case once on fresh buffers. The decode step replays one recorded
argmax for every token, so the hand-over (the last workgroup to arrive combines the others' bests
and zeroes scratch) must leave scratch ready for the next replay: here one recorded list is
replayed over new logits many times, ties and NaN among them, and checked each time.
"""

from __future__ import annotations

import numpy as np
import pytest
from shaderbay.conformance.plugin import session_backend
from shaderbay.kernels import ARGMAX_SCRATCH_ROW

ROWS, N, REPLAYS = 3, 49152, 24


@pytest.mark.parametrize("backend_name", ["vulkan", "wgpu"])
def test_replayed_argmax_agrees_and_leaves_scratch_zeroed(backend_name, pytestconfig):
    b = session_backend(pytestconfig, backend_name)
    rng = np.random.default_rng(7)
    x = b.empty((ROWS, N))
    scratch = b.upload(np.zeros((ROWS, ARGMAX_SCRATCH_ROW), np.uint32))
    out = b.empty(ROWS, "u32")
    cmd = b.command_list("argmax replay")
    cmd.dispatch(b.pipeline("argmax"), {"x": x, "scratch": scratch, "out": out}, rows=ROWS, n=N)
    try:
        for i in range(REPLAYS):
            logits = rng.integers(-3, 4, (ROWS, N)).astype(np.float32)  # few values: many ties
            if i % 3 == 0:
                logits[:, rng.integers(0, N, 5)] = np.nan  # never wins
            b.write(x, logits)
            b.run(cmd)
            want = np.argmax(np.where(np.isnan(logits), -np.inf, logits), axis=1)
            assert b.read(out).tolist() == want.tolist(), f"replay {i}"
            assert not b.read(scratch).any(), f"replay {i} left scratch non-zero"
    finally:
        for t in (x, scratch, out):
            b.free(t.buffer)
