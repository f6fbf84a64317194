"""Value regimes of the token-choosing kernels (argmax, sample): signs, magnitudes, subnormals and
repetition penalties aimed at the top candidates, as real models and chat loops produce them.

The sampler's regimes work on one row of logits with its history (`penalise_top`,
`shift_negative`); `_sample_rows` alone knows how the `sample` kernel's bindings hold the rows.
"""

from __future__ import annotations

import numpy as np

from ..harness import Case
from .record import Regime
from .values import Values, subnormals


def _all_negative(v: Values, case: Case) -> Case:
    # every number negative, from just below zero to near float32's lowest (NaN stays NaN, +inf
    # becomes -inf): a maximum that starts at 0 instead of -inf is caught
    x = case.arrays["x"]
    magnitude = np.float32(v.pick((1e-3, 1.0, 1e4, 1e36)))
    with np.errstate(over="ignore"):
        case.arrays["x"] = (-np.abs(x) * magnitude - magnitude * np.float32(1e-3)).astype(np.float32)
    return case


def _subnormal(v: Values, case: Case) -> Case:
    # values of float32's subnormal range and signed zeros (-0 ties +0): compares must be exact
    # ("the largest"), not flushed to zero, which would make them all ties
    case.arrays["x"] = subnormals(v, case.arrays["x"].size, "f32")
    return case


ARGMAX_REGIMES = (
    Regime("all_negative", "the largest is found among negatives of any magnitude; NaN never wins", _all_negative),
    Regime("subnormal", "the largest is exact among subnormals; -0 equals +0 (first index wins)", _subnormal),
)


# --- value regimes of the sampler: on one row of logits with its history (rows of the case, in
# whatever layout the kernel's bindings take)


def penalise_top(v: Values, logits: np.ndarray, history: np.ndarray) -> tuple[np.ndarray, float, int]:
    """The penalty aimed at the top candidates: (logits, penalty, hist_len) with history[:hist_len]
    holding some of the highest logits' ids. Often the penalty pushes the maximum below others;
    with an exact power-of-two penalty, another token sometimes ties a penalised one exactly after
    the penalty (then the first index must win a greedy draw)."""
    logits = logits.copy()
    n, hist_cap = logits.size, history.size
    top = np.argsort(-logits.astype(np.float64), kind="stable")[: v.int(1, min(3, n, hist_cap))]
    hist_len = v.int(top.size, hist_cap)
    history[:hist_len] = v.uints(hist_len, 0, n + 3)
    history[v.distinct_uints(top.size, 0, hist_len - 1)] = top
    penalty = v.pick((1.1, 1.3, 2.0, 0.5, 0.9))
    if penalty in (2.0, 0.5) and n > top.size and v.bool():  # an exact tie after the penalty
        l = logits[top[0]]
        tie = l / penalty if l > 0 else l * penalty
        others = np.setdiff1d(np.arange(n), top)
        logits[others[v.int(0, others.size - 1)]] = np.float32(tie)
    return logits, penalty, hist_len


def shift_negative(v: Values, logits: np.ndarray) -> np.ndarray:
    """Every logit negative (below the maximum by a shift from 1e-3 to 1e4), some masked with -inf."""
    shifted = (logits - logits.max() - np.float32(v.pick((1e-3, 1.0, 30.0, 1e4)))).astype(np.float32)
    for _ in range(v.int(0, min(2, logits.size - 1))):
        shifted[v.int(0, logits.size - 1)] = -np.inf
    if np.isinf(shifted).all():
        shifted[0] = -1.0
    return shifted


def _sample_rows(case: Case, regime) -> Case:
    """A sample case with each row's values replaced by `regime(row logits, row history)` ->
    (logits, penalty or None, hist_len or None), in this layout: rows of logits, each reading the
    settings (penalty at column 3), counters (hist_len at column 2) and history of its slot."""
    p = case.params
    n, hist_cap = p["n"], p["hist_cap"]
    logits = case.arrays["logits"].reshape(p["rows"], n)
    settings = case.arrays["settings"].reshape(p["n_seqs"], -1)
    state = case.arrays["state"].reshape(p["n_seqs"], 4)
    history = case.arrays["history"].reshape(p["n_seqs"], hist_cap)
    written = case.written["history"].reshape(p["n_seqs"], hist_cap)
    for r, slot in enumerate(case.arrays["seqs"]):
        logits[r], penalty, hist_len = regime(logits[r], history[slot])
        if penalty is not None:
            settings[slot, 3] = penalty
        if hist_len is not None:
            state[slot, 2] = hist_len
            written[slot] = False
            written[slot, hist_len:][:1] = True
    return case


def _penalised_top(v: Values, case: Case) -> Case:
    return _sample_rows(case, lambda logits, history: penalise_top(v, logits, history))


def _negative_logits(v: Values, case: Case) -> Case:
    def row(logits: np.ndarray, history: np.ndarray) -> tuple[np.ndarray, float | None, int | None]:
        logits = shift_negative(v, logits)
        if v.bool():  # a penalty on negatives multiplies: it must push them further down
            return penalise_top(v, logits, history)
        return logits, None, None

    return _sample_rows(case, row)


SAMPLE_REGIMES = (
    Regime(
        "negative_logits",
        "every logit negative, some -inf: the penalty multiplies negatives (l * penalty); "
        "-inf is never drawn while a finite logit is left",
        _negative_logits,
    ),
    Regime(
        "penalised_top",
        "the penalty on the top candidates (l / penalty if l > 0) reorders them; exact ties after the "
        "penalty go to the smallest index in a greedy draw",
        _penalised_top,
    ),
)
