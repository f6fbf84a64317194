"""Type and range checks for numbers read from model files (config.json, GGUF metadata, indexes).

Every value that sizes something (layers, heads, vocabulary, context, dimensions) passes through
one of these before it is used, so a hostile or corrupt file gives a typed error naming the file
and the key instead of a raw exception or an allocation sized by garbage.

    n_layers = check_int(raw.get("num_hidden_layers"), f"{path}: num_hidden_layers", hi=4096)
"""

from __future__ import annotations

import math
import numbers
import reprlib
from typing import Any

from shaderbay.errors import CheckpointError, ShaderbayError

__all__ = ["check_int", "check_float", "check_bool", "check_str", "short_repr"]

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = 6
_REPR.maxlevel = 2


def short_repr(value: Any) -> str:
    """A bounded repr for messages (a hostile value may be a million-element nested list)."""
    return _REPR.repr(value)


def _fail(error: type[ShaderbayError], what: str, expected: str, value: Any, fix: str) -> ShaderbayError:
    return error(f"{what} must be {expected}, got {short_repr(value)}; {fix}")


_FIX = "the file is corrupt or not a supported model: re-download or re-export it"


def check_int(
    value: Any,
    what: str,
    *,
    lo: int = 1,
    hi: int = 2**31 - 1,
    error: type[ShaderbayError] = CheckpointError,
    fix: str = _FIX,
) -> int:
    """``value`` as an int in [lo, hi]; bools, floats, strings and lists are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise _fail(error, what, f"an integer in [{lo}, {hi}]", value, fix)
    return int(value)


def check_float(
    value: Any,
    what: str,
    *,
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    error: type[ShaderbayError] = CheckpointError,
    fix: str = _FIX,
) -> float:
    """``value`` (an int or float) as a finite float in [lo, hi] (or (lo, hi] when ``lo_open``)."""
    low = "(" if lo_open else "["
    expected = f"a finite number in {low}{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(error, what, expected, value, fix)
    x = float(value)
    if not math.isfinite(x) or x > hi or x < lo or (lo_open and x == lo):
        raise _fail(error, what, expected, value, fix)
    return x


def check_bool(value: Any, what: str, *, error: type[ShaderbayError] = CheckpointError, fix: str = _FIX) -> bool:
    if not isinstance(value, bool):
        raise _fail(error, what, "true or false", value, fix)
    return value


def check_str(value: Any, what: str, *, error: type[ShaderbayError] = CheckpointError, fix: str = _FIX) -> str:
    if not isinstance(value, str):
        raise _fail(error, what, "a string", value, fix)
    return value
