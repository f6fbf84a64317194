"""Value regimes of the attention family (rope, kv_write, attention, decode_attention): long
contexts' positions, values at the ends of an f16 cache's range, score ranges far from unit size.

They rewrite values only: queries, positions and cached values keep their meaning whatever
the bindings' layout (paged caches included).
"""

from __future__ import annotations

import math

import numpy as np

from ..harness import Case
from .record import Regime
from .values import Values

# rope's angle is float32(p) * inv_freq; cos_sin (common.glsl) reduces it by 2 pi in four parts,
# the first three exact products for |angle| below ~6.6e6 rad: positions up to 2^22 (4M tokens of
# context; measured 4.9e-7 on an H100 and 7.3e-7 on lavapipe of rope's 1e-3). Not promised past it.
ROPE_LARGEST_POSITION = 1 << 22

F16_LARGEST = 65504.0
F16_SMALLEST_NORMAL = 2.0**-14


def _large_positions(v: Values, case: Case) -> Case:
    # long contexts: positions of 64k .. 4M tokens, the ends included
    positions = v.uints(case.arrays["positions"].size, 1 << 16, ROPE_LARGEST_POSITION)
    positions[v.int(0, positions.size - 1)] = v.pick((1 << 16, ROPE_LARGEST_POSITION - 1, ROPE_LARGEST_POSITION))
    case.arrays["positions"] = positions
    return case


def _f16_range(v: Values, case: Case) -> Case:
    # values f16 holds only as subnormals (below 2^-14) must round to them, not flush to zero;
    # values past its largest finite (65504) round to 65504 or to infinity as NumPy's cast does
    src = case.arrays["src"]
    src = (src / np.float32(100.0) * np.float32(v.pick((F16_SMALLEST_NORMAL, 1e-6)))).astype(np.float32)
    for _ in range(v.int(0, 3)):
        edge = v.pick((F16_LARGEST, 65519.0, 65520.0, 1e6))
        src[v.int(0, src.size - 1)] = np.float32(edge if v.bool() else -edge)
    case.arrays["src"] = src
    return case


def _score_scaled(targets: tuple[float, ...]):
    def rewrite(v: Values, case: Case) -> Case:
        # queries scaled so that scale * q.k is typically of size `target` (q and k uniform in
        # [-2, 2]: q.k has a spread of 4/3 sqrt(head_dim)): peaked or flat softmax
        p = case.params
        target = v.pick(targets)
        factor = target / (p["scale"] * 4.0 / 3.0 * math.sqrt(p["head_dim"]))
        name, width = ("q", p["q_stride"]) if "q" in case.arrays else ("qkv", p["stride"])
        q = case.arrays[name].reshape(-1, width).copy()
        q[:, : p["n_heads"] * p["head_dim"]] *= np.float32(factor)
        case.arrays[name] = q.reshape(-1)
        return case

    return rewrite


ROPE_REGIMES = (
    Regime("large_positions", "positions up to 2^22: angle = float32(p) * inv_freq, its cos and sin", _large_positions),
)

KV_WRITE_REGIMES = (
    Regime(
        "f16_range",
        "rounded to cache_dtype as NumPy does: f16 subnormals kept, past 65504 to infinity",
        _f16_range,
        ({"cache_dtype": "f16"},),
    ),
)

# a float32 score s is off by ~|s| 2^-24 sqrt(head_dim), and where two top scores nearly tie the
# softmax's weights move by as much: within the f32 budget (2e-4) for scores up to ~300. Larger
# scores pass on random values (measured on lavapipe up to 1e6: the softmax is one-hot), but a
# near-tie between them is not promised
SCORE_REGIMES = (
    Regime(
        "large_scores",
        "scores of size 30 .. 300 (a peaked softmax): max-subtracted exp, float32",
        _score_scaled((30.0, 100.0, 300.0)),
        ({"cache_dtype": "f32"}, {"cache_dtype": "f16"}),
    ),
    Regime("small_scores", "scores of size 1e-6 (a flat softmax): the mean of the values", _score_scaled((1e-6,))),
)
