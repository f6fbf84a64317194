"""Cases of the token-choosing kernels: argmax, sample, advance; and the sampler's acceptable answers."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from shaderbay.kernels import ARGMAX_SCRATCH_ROW, SAMPLE_SETTINGS, uniform

from ..harness import Case
from .record import KernelCases, dim
from .values import U32_MAX, Values

TINY_PROBABILITY = 1e-9


def _argmax(v: Values, c: dict, s: dict) -> Case:
    rows, n = s["rows"], s["n"]
    mode = v.pick(("ties", "floats", "special"))
    if mode == "ties":  # few distinct values: the first of equal maxima must win
        x = (v.uints(rows * n, 0, 6).astype(np.float32) - 3.0).astype(np.float32)
    else:
        x = v.floats(rows * n, -50.0, 50.0)
    if mode == "special":  # NaN never wins; infinities do
        x = x.copy()
        for _ in range(v.int(1, 4)):
            x[v.int(0, rows * n - 1)] = v.pick((np.nan, np.inf, -np.inf, np.nan))
        grid = x.reshape(rows, n)
        for r in range(rows):
            if np.isnan(grid[r]).all():
                grid[r, v.int(0, n - 1)] = 0.0
    scratch = np.zeros(rows * ARGMAX_SCRATCH_ROW, np.uint32)  # zeros in; the reference leaves zeros
    return Case("argmax", c, {"rows": rows, "n": n}, {"x": x, "scratch": scratch}, sizes={"out": rows}, note=mode)


SAMPLER_REGIMES = ("greedy", "plain", "top_k", "top_p", "top_k+top_p", "min_p", "top_k+top_p+min_p")


def _settings(v: Values, n: int) -> tuple[np.ndarray, str]:
    """One slot's settings row ([temperature, top_k, top_p, penalty, min_p, 0, 0, 0]) and its regime."""
    regime = v.pick(SAMPLER_REGIMES)
    if regime == "greedy":
        temperature = v.pick((0.0, -1.0))
    elif regime == "plain":
        temperature = v.pick((0.1, 0.5, 0.8, 1.0, 1.7))
    else:  # warm enough that the filters decide something
        temperature = v.pick((0.5, 1.0, 1.7))
    top_k, top_p = 0, 1.0
    if "top_k" in regime:
        top_k = v.pick((1, 2, 3, 5, 13, 40, n + 3))
    if "top_p" in regime:
        top_p = v.pick((0.95, 0.9, 0.5, 0.1, 0.001))
    min_p = v.pick((0.05, 0.1, 0.3, 0.9)) if "min_p" in regime else 0.0
    if regime == "greedy":  # the filters must not matter
        top_k, top_p, min_p = v.pick((0, 3)), v.pick((1.0, 0.5)), v.pick((0.0, 0.5))
    penalty = v.pick((1.0, 1.1, 1.3, 0.9))
    row = np.zeros(SAMPLE_SETTINGS, np.float32)
    row[:5] = (temperature, top_k, top_p, penalty, min_p)
    return row, regime


def _sample(v: Values, c: dict, s: dict) -> Case:
    rows, n, hist_cap = s["rows"], s["n"], s["hist_cap"]
    n_seqs = rows + s["spare_slots"]
    spread = v.pick((2.0, 8.0, 20.0))  # flat to peaked distributions
    if v.bool():
        logits = v.floats(rows * n, -spread, spread)
    else:  # ties and plateaus
        logits = (v.uints(rows * n, 0, 8).astype(np.float32) * np.float32(spread / 8)).astype(np.float32)
    seqs = v.distinct_uints(rows, 0, n_seqs - 1)  # distinct slots, in any order
    settings = np.zeros((n_seqs, SAMPLE_SETTINGS), np.float32)
    state = np.zeros((n_seqs, 4), np.uint32)
    regimes = []
    written_history = np.zeros((n_seqs, hist_cap), bool)
    for slot in range(n_seqs):  # every row its own settings and counters
        settings[slot], regime = _settings(v, n)
        hist_len = v.int(0, hist_cap + 2)
        state[slot, :3] = (v.int(0, U32_MAX), v.int(0, U32_MAX), hist_len)
        if slot in seqs:
            regimes.append(regime)
            if hist_len < hist_cap:
                written_history[slot, hist_len] = True
    return Case(
        "sample",
        c,
        {"rows": rows, "n": n, "n_seqs": n_seqs, "hist_cap": hist_cap},
        {
            "logits": logits,
            "seqs": seqs,
            "settings": settings.reshape(-1),
            "state": state.reshape(-1),
            "history": v.uints(n_seqs * hist_cap, 0, n + 3),
        },
        written={"history": written_history.reshape(-1)},
        sizes={"out": rows},
        note=",".join(regimes),
    )


def _advance(v: Values, c: dict, s: dict) -> Case:
    rows, n_seqs = s["rows"], s["rows"] + s["spare_slots"]
    near_wrap = v.bool()  # counters close to 2**32 must wrap, not saturate
    lo = U32_MAX - 3 if near_wrap else 0
    return Case(
        "advance",
        c,
        {"rows": rows, "n_seqs": n_seqs, "steps": s["steps"]},
        {
            "positions": v.uints(rows, lo, U32_MAX),
            "seqs": v.distinct_uints(rows, 0, n_seqs - 1),
            "state": v.uints(n_seqs * 4, lo, U32_MAX),
        },
        note="near 2**32" if near_wrap else "",
    )


CASES = (
    KernelCases(
        "argmax",
        shapes=st.fixed_dictionaries({"rows": dim(5), "n": dim(700)}),
        ladder=({"rows": 1, "n": 49152}, {"rows": 4, "n": 128256}, {"rows": 16, "n": 256000}),
        build=_argmax,
        tolerance={"f32": 0.0},  # an index: exact
    ),
    KernelCases(
        "sample",
        shapes=st.fixed_dictionaries(
            {"rows": dim(4), "spare_slots": st.integers(0, 2), "n": dim(700), "hist_cap": dim(40)}
        ),
        ladder=(
            {"rows": 1, "spare_slots": 0, "n": 49152, "hist_cap": 64},
            {"rows": 4, "spare_slots": 1, "n": 128256, "hist_cap": 256},
            {"rows": 16, "spare_slots": 0, "n": 256000, "hist_cap": 1024},
        ),
        build=_sample,
        # the drawn token is checked against sample_candidates (within tolerances.SAMPLE_MARGIN);
        # every other written element exactly
        tolerance={"f32": 0.0},
        cost=lambda s: s["rows"] * s["n"],
        examples=3.0,  # cheap cases with discrete outcomes: more of them
    ),
    KernelCases(
        "advance",
        shapes=st.fixed_dictionaries(
            {"rows": dim(4), "spare_slots": st.integers(0, 2), "steps": st.one_of(st.just(1), st.integers(0, U32_MAX))}
        ),
        ladder=({"rows": 1, "spare_slots": 0, "steps": 1}, {"rows": 64, "spare_slots": 3, "steps": 1}),
        build=_advance,
        cost=lambda s: s["rows"],
        tolerance={"f32": 0.0},  # counters: exact
    ),
)


# --- the sampler's acceptable answers ----------------------------------------------------------------


def sample_candidates(case: Case, margin: float, row: int = 0) -> tuple[int | None, np.ndarray]:
    """(the token the device must draw for `row`, or None when the draw is near a decision boundary;
    the tokens the reference's rules allow within `margin`)."""
    n, hist_cap = case.params["n"], case.params["hist_cap"]
    slot = int(case.arrays["seqs"][row])
    temperature, top_k, top_p, penalty, min_p = (
        float(x) for x in case.arrays["settings"][slot * SAMPLE_SETTINGS : slot * SAMPLE_SETTINGS + 5]
    )
    p = {"temperature": temperature, "top_k": int(top_k), "top_p": top_p, "penalty": penalty, "min_p": min_p}
    logits = case.arrays["logits"][row * n : (row + 1) * n].astype(np.float64)
    seed, step, hist_len = (int(x) for x in case.arrays["state"][4 * slot : 4 * slot + 3])
    history = case.arrays["history"][slot * hist_cap : slot * hist_cap + min(hist_len, hist_cap)]
    n = len(logits)
    if p["penalty"] != 1.0:
        seen = np.unique(history[history < n].astype(np.int64))
        logits[seen] = np.where(logits[seen] > 0, logits[seen] / p["penalty"], logits[seen] * p["penalty"])
    if p["temperature"] <= 0:  # greedy
        best = logits.max()
        near = np.flatnonzero(logits >= best - margin * max(1.0, abs(best)))
        exact = int(np.argmax(logits))
        if np.all(logits[near] == best):  # exact ties: the first index, deterministically
            return exact, np.array([exact])
        return None, near
    probs = np.exp((logits - logits.max()) / p["temperature"])
    probs /= probs.sum()
    ordered = np.sort(probs)[::-1]
    threshold = 0.0
    top_k, top_p = p["top_k"], p["top_p"]
    if 0 < top_k < n:
        threshold = ordered[top_k - 1]
    ambiguous = False
    low_threshold = threshold
    if top_p < 1.0:
        cumulative = np.cumsum(ordered)
        cut = int(np.searchsorted(cumulative, top_p))
        threshold = max(threshold, ordered[min(cut, n - 1)])
        if np.any(np.abs(cumulative - top_p) <= margin):
            ambiguous = True
        loose_cut = int(np.searchsorted(cumulative, top_p + margin))
        low_threshold = max(low_threshold, ordered[min(loose_cut, n - 1)])
    if p["min_p"] > 0:
        threshold = max(threshold, p["min_p"] * ordered[0])
    low_threshold = min(low_threshold, threshold)
    # Whether an element just under the threshold is kept can differ between devices; only
    # elements likely enough to matter count (tinier ones shift the walk by far less than margin).
    band = (probs < threshold) & (probs >= threshold * (1 - 2 * margin)) & (probs > TINY_PROBABILITY)
    if band.any():
        ambiguous = True
    loose = np.flatnonzero(probs >= low_threshold * (1 - 2 * margin))
    if ambiguous:
        return None, loose
    kept = np.flatnonzero(probs >= threshold)
    mass = probs[kept].sum()
    target = uniform(seed, step) * mass
    cumulative = np.cumsum(probs[kept])
    chosen = min(int(np.searchsorted(cumulative, target, side="right")), len(kept) - 1)
    near = np.abs(cumulative - target) <= margin * mass
    if near.any():
        idx = np.flatnonzero(near)
        options = set(idx.tolist()) | {min(i + 1, len(kept) - 1) for i in idx.tolist()} | {chosen}
        return None, kept[sorted(options)]
    return int(kept[chosen]), np.array([kept[chosen]])
