"""Every catalogue kernel, with every combination of its constants, against the NumPy reference.

Like ggml's test-backend-ops: the same inputs go to the backend under test and to the
reference (``shaderbay.backends.numpy.kernels.REFERENCE``), and the outputs are compared by
normalised error against the budgets of its record in ``cases/``. Outputs start as NaN poison,
every buffer is fenced by canary bytes, read-only inputs must come back untouched, and
elements a kernel must not write must keep their bytes. A kernel the backend declares
unsupported is reported as such (a skip whose reason starts with "unsupported"), never as
a pass.
"""

from __future__ import annotations

import itertools
import os
import time

import pytest
from hypothesis import given, settings
from shaderbay.conformance.cases import CASES, RngValues, kernel_cases, sample_candidates
from shaderbay.conformance.harness import ConformanceFailure, Outcome, compare_outputs, explain_error, run_case
from shaderbay.conformance.plugin import UNSUPPORTED, require_kernels
from shaderbay.conformance.report import record_error, record_largest
from shaderbay.conformance.tolerances import SAMPLE_MARGIN, tolerance
from shaderbay.errors import UnsupportedFeature, UnsupportedKernel
from shaderbay.kernels import CATALOGUE

LARGE_BUDGET_ENV = "SHADERBAY_LARGE_BUDGET_S"
LARGE_BYTES_CAP = 256 << 20  # no single binding of the size ladder is larger than this


def _combinations(spec) -> list[dict]:
    """Every choice of the compiled constants (a choosing one, e.g. rows_form, has its own tests)."""
    compiled = [c for c in spec.constants if c.compiled]
    names = [c.name for c in compiled]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(c.choices for c in compiled))]


KERNEL_COMBOS = [(name, combo) for name, spec in CATALOGUE.items() for combo in _combinations(spec)]


def _combo_id(combo: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in combo.items()) or "default"


def _pipeline_or_skip(backend, kernel: str, constants: dict):
    require_kernels(backend, kernel)
    try:
        return backend.pipeline(kernel, **constants)
    except (UnsupportedKernel, UnsupportedFeature) as exc:
        pytest.skip(f"{UNSUPPORTED}: {exc}")


def check_case(backend, case) -> float:
    """Run one case and assert it conforms; returns its relative error (recorded for the report)."""
    outcome = run_case(backend, case)
    pipeline = backend.pipeline(case.kernel, **case.constants)
    if case.kernel == "sample":
        err = _check_sample(case, outcome, pipeline.dtypes)
    else:
        err = compare_outputs(case, outcome, pipeline.dtypes)
    tol = tolerance(case.kernel, case.constants)
    record_error(backend.name, case.kernel, err, tol)
    if not err <= tol:
        raise ConformanceFailure(explain_error(case, outcome, pipeline.dtypes, tol))
    return err


def _check_sample(case, outcome, dtypes) -> float:
    # bytes other than out and each row's history[slot, hist_len] are checked by compare_outputs' masks
    compare_outputs(case, _without(outcome, "out"), dtypes, check_values=False)
    hist_cap = case.params["hist_cap"]
    for row in range(case.params["rows"]):
        token = int(outcome.outputs["out"][row])
        exact, allowed = sample_candidates(case, SAMPLE_MARGIN, row)
        if exact is not None and token != exact:
            raise ConformanceFailure(
                f"{case.describe()}: row {row} drew token {token}, the reference draws {exact} (the draw is not "
                "near any boundary)"
            )
        if token not in set(allowed.tolist()):
            raise ConformanceFailure(
                f"{case.describe()}: row {row} drew token {token}, which the reference's rules never keep near this "
                f"draw (allowed: {allowed[:20].tolist()}{'...' if allowed.size > 20 else ''})"
            )
        slot = int(case.arrays["seqs"][row])
        hist_len = int(case.arrays["state"][4 * slot + 2])
        written = int(outcome.outputs["history"][slot * hist_cap + hist_len]) if hist_len < hist_cap else token
        if written != token:
            raise ConformanceFailure(
                f"{case.describe()}: row {row}: history[{slot}, {hist_len}] = {written}, but the drawn token is {token}"
            )
    return 0.0


def _without(outcome, name: str):
    return Outcome(
        {k: v for k, v in outcome.outputs.items() if k != name},
        outcome.reference,
        outcome.initial,
    )


@pytest.mark.parametrize(("kernel", "constants"), KERNEL_COMBOS, ids=[f"{k}-{_combo_id(c)}" for k, c in KERNEL_COMBOS])
def test_kernel(backend, kernel: str, constants: dict) -> None:
    """Generated shapes (awkward sizes, size 1) and values, against the reference."""
    _pipeline_or_skip(backend, kernel, constants)
    cases = kernel_cases(kernel)
    base = settings.default
    examples = max(3, round(base.max_examples * cases.examples))

    @settings(base, max_examples=examples)
    @given(case=cases.strategy(constants))
    def conforms(case) -> None:
        check_case(backend, case)

    conforms()


REGIME_EXAMPLES = 0.5  # examples per regime and constant combination, as a share of max_examples

REGIMES = [
    (name, regime.name, {**{c.name: c.default for c in spec.constants}, **combo})
    for name, spec in CATALOGUE.items()
    for regime in kernel_cases(name).regimes
    for combo in regime.constants
]


@pytest.mark.parametrize(
    ("kernel", "regime", "constants"),
    REGIMES,
    ids=[f"{k}-{r}-{_combo_id(c)}" for k, r, c in REGIMES],
)
def test_regime(backend, kernel: str, regime: str, constants: dict) -> None:
    """Each value regime of a kernel's record (cases/: signs, magnitudes, subnormals, ties real models
    produce), on its own, so that every regime runs on every backend, with the kernel's budgets."""
    _pipeline_or_skip(backend, kernel, constants)
    base = settings.default

    @settings(base, max_examples=max(3, round(base.max_examples * REGIME_EXAMPLES)))
    @given(case=kernel_cases(kernel).regime_strategy(regime, constants))
    def conforms(case) -> None:
        check_case(backend, case)

    conforms()


def _large_budget() -> float:
    if os.environ.get(LARGE_BUDGET_ENV):
        return float(os.environ[LARGE_BUDGET_ENV])
    return 20.0 if settings.get_current_profile_name() == "thorough" else 2.0


def _binding_bytes(case) -> int:
    sizes = [a.nbytes for a in case.arrays.values()]
    sizes += [n * 4 for n in case.sizes.values()]
    return max(sizes)


@pytest.mark.parametrize("kernel", list(CATALOGUE))
def test_kernel_large(backend, kernel: str) -> None:
    """Growing model-sized shapes, as large as the time budget and the device's binding limit allow."""
    spec = CATALOGUE[kernel]
    constants = {c.name: c.default for c in spec.constants}
    _pipeline_or_skip(backend, kernel, constants)
    budget = _large_budget()
    limit = min(backend.caps.max_binding_size, backend.caps.max_buffer_size - 4096, LARGE_BYTES_CAP)
    cases = kernel_cases(kernel)
    spent, last = 0.0, None
    largest = None
    for step, shape in enumerate(cases.ladder):
        if last is not None:
            last_cost, last_time = last
            predicted = last_time * cases.cost(shape) / last_cost
            if spent + predicted > budget:
                break
        case = cases.case(RngValues(1000 + step), constants, shape)
        if _binding_bytes(case) > limit:
            break
        start = time.perf_counter()
        check_case(backend, case)
        elapsed = time.perf_counter() - start
        spent += elapsed
        last = (cases.cost(shape), elapsed)
        largest = " ".join(f"{k}={v}" for k, v in shape.items() if k != "extra")
    assert largest is not None, "not even the smallest ladder step fits this device"
    record_largest(backend.name, kernel, largest)


def test_every_kernel_has_cases() -> None:
    """Every catalogue kernel has a KernelCases record with a tolerance for each of its storage
    dtypes and a ladder; no record names a kernel the catalogue lacks."""
    assert set(CASES) == set(CATALOGUE), "conformance_tests/cases/ and the catalogue name different kernels"
    for name, spec in CATALOGUE.items():
        assert kernel_cases(name).ladder, f"the KernelCases record of {name} has an empty ladder"
        for combo in _combinations(spec):
            assert tolerance(name, combo) >= 0.0
