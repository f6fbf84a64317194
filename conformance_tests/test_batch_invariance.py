"""The catalogue's batch-invariance promise on every backend: for rows <= BATCH_ROWS, each row of
a matmul comes out bit for bit as it does alone (rows = 1), whatever the rows count, so a decode
batch's answers never depend on who else is served. Every weight dtype, the prologues,
epilogues, bias and accumulate (cases/matmul.py), with rows counts that are and are not
multiples of the batched forms' x-row groups; each batch is also checked against the reference.
"""

from __future__ import annotations

import pytest
from shaderbay.conformance.cases.matmul import (
    INVARIANCE_CHECKED,
    INVARIANCE_COMBOS,
    INVARIANCE_MATRIX_CHECKED,
    INVARIANCE_MATRIX_ROWS,
    INVARIANCE_MATRIX_SHAPES,
    INVARIANCE_ROWS,
    INVARIANCE_SHAPES,
    invariance_case,
    rows_of,
)
from shaderbay.conformance.harness import ConformanceFailure, run_case
from shaderbay.conformance.test_kernels import _combo_id, _pipeline_or_skip, check_case


@pytest.mark.parametrize("constants", INVARIANCE_COMBOS, ids=[_combo_id(c) for c in INVARIANCE_COMBOS])
def test_matmul_rows_are_batch_invariant(backend, constants: dict) -> None:
    _pipeline_or_skip(backend, "matmul", constants)
    shapes = [(shape, INVARIANCE_ROWS, INVARIANCE_CHECKED) for shape in INVARIANCE_SHAPES]
    if constants.get("rows_form") == "matrix" and backend.caps.cooperative_matrix:
        shapes += [(shape, INVARIANCE_MATRIX_ROWS, INVARIANCE_MATRIX_CHECKED) for shape in INVARIANCE_MATRIX_SHAPES]
    for seed, ((n, k), rows_counts, checked) in enumerate(shapes):
        case = invariance_case(constants, n, k, seed)
        alone = {r: run_case(backend, rows_of(case, r, r + 1)).outputs["out"] for r in checked}
        check_case(backend, rows_of(case, 0, max(INVARIANCE_ROWS)))  # right, besides invariant
        for rows in rows_counts:
            batch = rows_of(case, 0, rows)
            got = run_case(backend, batch).outputs["out"].reshape(rows, -1)
            differ = [r for r in checked if r < rows and got[r].tobytes() != alone[r].tobytes()]
            if differ:
                r = differ[0]
                raise ConformanceFailure(
                    f"{batch.describe()}: row(s) {differ} differ from the same rows computed alone; row {r}: "
                    f"{got[r][:4]} vs {alone[r][:4]} (each row of up to BATCH_ROWS must be bit for bit the same)"
                )
