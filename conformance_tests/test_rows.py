"""The per-row kernels' promises about rows.

Batch invariance: for up to BATCH_ROWS rows, a row's result among other rows is bit for bit the
one it gives alone (with the same parameters: the same pool and slot capacity), so a sequence's
tokens never depend on who else is decoded in the same step.
And a greedy `sample` row without repetition penalty gives exactly `argmax`'s answer, so a step
whose rows are all greedy may run argmax instead.
"""

from __future__ import annotations

import numpy as np
import pytest
from shaderbay.conformance.cases import RngValues, kernel_cases
from shaderbay.conformance.harness import Case, run_case
from shaderbay.conformance.plugin import require_kernels
from shaderbay.kernels import ARGMAX_SCRATCH_ROW, BATCH_ROWS, SAMPLE_SETTINGS, decode_scratch_row

# per kernel: its per-row bindings (row width as a function of the case's params) and a small shape
PER_ROW = {
    "decode_attention": {
        "qkv": lambda p: p["stride"],
        "positions": lambda p: 1,
        "seqs": lambda p: 1,
        "scratch": lambda p: p["n_heads"] * decode_scratch_row(p["head_dim"]),
    },
    "attention": {"q": lambda p: p["q_stride"], "positions": lambda p: 1, "seqs": lambda p: 1},
    "sample": {"logits": lambda p: p["n"], "seqs": lambda p: 1},
    "argmax": {"x": lambda p: p["n"], "scratch": lambda p: ARGMAX_SCRATCH_ROW},
}
SHAPES = {
    "decode_attention": {
        "n_kv_heads": 2,
        "group": 2,
        "head_dim": 16,
        "block_size": 4,
        "blocks_per_seq": 5,
        "n_seqs": 1,
        "extra": 3,
    },  # fmt: skip
    "attention": {
        "n_kv_heads": 2,
        "group": 3,
        "head_dim": 8,
        "block_size": 3,
        "blocks_per_seq": 7,
        "n_seqs": 3,
        "extra": 1,
    },  # fmt: skip
    "sample": {"spare_slots": 1, "n": 300, "hist_cap": 8},
    "argmax": {"n": 300},
}


def _alone(case: Case, row: int) -> Case:
    """The case of one row of `case`, run by itself (the same cache, tables and slot state)."""
    p = case.params
    arrays = dict(case.arrays)
    for name, width in PER_ROW[case.kernel].items():
        w = width(p)
        arrays[name] = case.arrays[name][row * w : (row + 1) * w].copy()
    out = case.sizes["out"] // case.params["rows"]
    return Case(case.kernel, case.constants, {**p, "rows": 1}, arrays, {}, {"out": out}, case.note)


@pytest.mark.parametrize("kernel", list(PER_ROW))
@pytest.mark.parametrize("rows", [3, BATCH_ROWS])
def test_a_row_alone_gives_what_it_gives_among_others(backend, kernel: str, rows: int) -> None:
    require_kernels(backend, kernel)
    record = kernel_cases(kernel)
    constants = {"cache_dtype": "f32"} if "attention" in kernel else {}
    for seed in range(2):
        case = record.case(RngValues(seed), constants, {**SHAPES[kernel], "rows": rows})
        together = run_case(backend, case).outputs["out"]
        width = together.size // rows
        for row in sorted({0, rows // 2, rows - 1}):
            alone = run_case(backend, _alone(case, row)).outputs["out"]
            assert together[row * width : (row + 1) * width].tobytes() == alone.tobytes(), (
                f"{case.describe()}: row {row} of {rows} differs from the same row alone"
            )


def test_greedy_sample_without_penalty_is_argmax(backend) -> None:
    require_kernels(backend, "sample", "argmax")
    rows, n, hist_cap = 6, 517, 4
    rng = np.random.default_rng(5)
    logits = rng.uniform(-8, 8, (rows, n)).astype(np.float32)
    logits[1] = np.round(logits[1])  # ties: the first index wins
    logits[2, 7], logits[2, 100] = np.nan, np.inf  # NaN never wins; infinity does
    logits[3, :] = logits[3, 0]  # all equal
    logits[4, 5] = np.nan
    settings = np.zeros((rows, SAMPLE_SETTINGS), np.float32)
    settings[:, :5] = (0.0, 40, 0.9, 1.0, 0.05)  # greedy: the filters do not matter
    settings[::2, 0] = -1.0
    state = np.zeros((rows, 4), np.uint32)
    state[:, 2] = hist_len = 2
    sample = Case(
        "sample",
        {},
        {"rows": rows, "n": n, "n_seqs": rows, "hist_cap": hist_cap},
        {
            "logits": logits.reshape(-1),
            "seqs": np.arange(rows, dtype=np.uint32)[::-1].copy(),
            "settings": settings.reshape(-1),
            "state": state.reshape(-1),
            "history": rng.integers(0, n, rows * hist_cap).astype(np.uint32),
        },
        sizes={"out": rows},
    )
    argmax = Case(
        "argmax",
        {},
        {"rows": rows, "n": n},
        {"x": logits.reshape(-1), "scratch": np.zeros(rows * ARGMAX_SCRATCH_ROW, np.uint32)},
        sizes={"out": rows},
    )
    drawn = run_case(backend, sample).outputs
    best = run_case(backend, argmax).outputs["out"]
    assert drawn["out"].tolist() == best.tolist()
    history = drawn["history"].reshape(rows, hist_cap)
    slots = sample.arrays["seqs"]
    assert [int(history[slots[r], hist_len]) for r in range(rows)] == best.tolist()
