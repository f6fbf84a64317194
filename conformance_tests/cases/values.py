"""Where a case's values come from: Hypothesis (generated cases) or a seeded NumPy generator (the ladder).

Hypothesis draws through `hypothesis.extra.numpy.arrays` with bounded floats of the storage
width, so edge values and shrinking apply; the large ladder uses a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from shaderbay.dtypes import f32_to_bf16, host_dtype

SMALL = 256  # arrays up to this many elements are drawn element by element by Hypothesis
U32_MAX = 2**32 - 1


class Values:
    """Where a case's values come from."""

    def int(self, lo: int, hi: int) -> int:  # inclusive
        raise NotImplementedError

    def pick(self, seq: Sequence[Any]) -> Any:
        raise NotImplementedError

    def floats(self, n: int, lo: float, hi: float, dtype: str = "f32") -> np.ndarray:
        """n values in [lo, hi] stored as dtype (host form: float32, float16, or bf16 bits as uint16)."""
        raise NotImplementedError

    def uints(self, n: int, lo: int, hi: int) -> np.ndarray:
        raise NotImplementedError

    def distinct_uints(self, n: int, lo: int, hi: int) -> np.ndarray:
        raise NotImplementedError

    def bool(self) -> bool:
        return bool(self.pick((False, True)))


def subnormals(v: Values, n: int, dtype: str) -> np.ndarray:
    """n subnormal numbers of dtype (f32 or f16, host form) of either sign, signed zeros among them
    (Hypothesis' floats are drawn without subnormals: these come from bit patterns)."""
    mantissa, sign, bits = {"f32": (23, 31, np.uint32), "f16": (10, 15, np.uint16)}[dtype]
    pattern = v.uints(n, 0, (1 << mantissa) - 1) | (v.uints(n, 0, 1) << np.uint32(sign))
    return pattern.astype(bits).view(host_dtype(dtype))


def _to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return f32_to_bf16(np.asarray(x, np.float32))
    return np.asarray(x).astype(host_dtype(dtype))


def _float_elements(lo: float, hi: float, dtype: str) -> st.SearchStrategy[float]:
    width = 16 if dtype == "f16" else 32
    cast = np.float16 if width == 16 else np.float32
    lo, hi = float(cast(lo)), float(cast(hi))
    return st.floats(lo, hi, width=width, allow_nan=False, allow_infinity=False, allow_subnormal=False)


class HypothesisValues(Values):
    """Values drawn by Hypothesis. Arrays up to SMALL elements are drawn element by element;
    larger ones are a dense seeded background (the seed drawn by Hypothesis) with elements
    drawn by Hypothesis sprinkled over it (so edge values and shrinking still apply)."""

    def __init__(self, draw: Callable):
        self.draw = draw

    def int(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def pick(self, seq: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(list(seq)))

    def floats(self, n: int, lo: float, hi: float, dtype: str = "f32") -> np.ndarray:
        np_dtype = np.float16 if dtype == "f16" else np.float32
        elements = _float_elements(lo, hi, dtype)
        if n <= SMALL:
            arr = self.draw(hnp.arrays(np_dtype, n, elements=elements, fill=st.nothing()))
        else:
            seed = self.draw(st.integers(0, U32_MAX))
            arr = np.random.default_rng(seed).uniform(lo, hi, n).astype(np_dtype)
            sprinkle = self.draw(hnp.arrays(np_dtype, n, elements=elements, fill=st.just(np.nan)))
            arr = np.where(np.isnan(sprinkle), arr, sprinkle).astype(np_dtype)
        return _to_storage(arr, dtype)

    def uints(self, n: int, lo: int, hi: int) -> np.ndarray:
        elements = st.integers(lo, hi)
        if n <= SMALL:
            return self.draw(hnp.arrays(np.uint32, n, elements=elements, fill=st.nothing()))
        seed = self.draw(st.integers(0, U32_MAX))
        return np.random.default_rng(seed).integers(lo, hi, n, endpoint=True).astype(np.uint32)

    def distinct_uints(self, n: int, lo: int, hi: int) -> np.ndarray:
        values = self.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n, unique=True))
        return np.array(values, np.uint32)


class RngValues(Values):
    """Values from a seeded NumPy generator (the large-shape ladder)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def int(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi, endpoint=True))

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[int(self.rng.integers(len(seq)))]

    def floats(self, n: int, lo: float, hi: float, dtype: str = "f32") -> np.ndarray:
        return _to_storage(self.rng.uniform(lo, hi, n).astype(np.float32), dtype)

    def uints(self, n: int, lo: int, hi: int) -> np.ndarray:
        return self.rng.integers(lo, hi, n, endpoint=True).astype(np.uint32)

    def distinct_uints(self, n: int, lo: int, hi: int) -> np.ndarray:
        return (lo + self.rng.permutation(hi - lo + 1)[:n]).astype(np.uint32)
