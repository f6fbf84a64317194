"""Checked reads of untrusted input: the values in model files (config.json, generation_config.json,
an index, GGUF metadata) and the files themselves.

Every value that sizes something (layers, heads, vocabulary, context, dimensions) passes through
one of these before it is used, so a hostile or corrupt file gives a typed error (`error`, e.g.
CheckpointError or GGUFFileError) naming the file and the key instead of a raw exception or an
allocation sized by garbage. Files are read only if they are regular (a FIFO hung the loader) and
only inside the checkpoint folder.

    n_layers = check_int(raw.get("num_hidden_layers"), f"{path}: num_hidden_layers", hi=4096)
"""

from __future__ import annotations

import json
import math
import numbers
import os
import reprlib
import stat
from pathlib import Path
from typing import Any

from shaderbay.errors import CheckpointError, ShaderbayError

__all__ = [
    "check_int",
    "check_ints",
    "check_float",
    "check_bool",
    "check_str",
    "check_mapping",
    "inside",
    "open_regular",
    "read_json",
    "short_repr",
]

JSON_LIMIT = 64 << 20  # bytes: a config or index file larger than this is not one

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


def check_ints(
    value: Any, what: str, *, lo: int = 0, hi: int = 2**31 - 1, error: type[ShaderbayError] = CheckpointError
) -> tuple[int, ...]:
    """One integer or a list of them (token ids) in [lo, hi], as a tuple; None as ()."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(check_int(v, what, lo=lo, hi=hi, error=error) for v in items)


def check_mapping(value: Any, what: str, *, error: type[ShaderbayError] = CheckpointError) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(error, what, "a JSON object", value, _FIX)
    return value


def open_regular(path: Path, error: type[ShaderbayError] = CheckpointError) -> int:
    """A file descriptor of `path` opened for reading, if it is a regular file (never blocks: a FIFO
    would hang a plain open for ever)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path}: not a regular file; a checkpoint holds plain files")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_json(path: Path, error: type[ShaderbayError] = CheckpointError) -> Any:
    """A JSON file's value; `error` for a file that is not regular, too large, or not JSON."""
    with os.fdopen(open_regular(path, error), "rb") as f:
        # checked on the (regular) file's size: read(JSON_LIMIT + 1) would allocate the whole limit at once
        if os.fstat(f.fileno()).st_size > JSON_LIMIT:
            raise error(f"{path}: larger than {JSON_LIMIT >> 20} MB, which no config or index is")
        data = f.read()
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise error(f"{path}: its JSON is nested too deeply to be a config or an index") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: cannot be read as JSON ({exc})") from None


def inside(folder: Path, name: Any, what: str, error: type[ShaderbayError] = CheckpointError) -> Path:
    """folder/name, for a relative name that stays inside the folder (no absolute path, no '..')."""
    name = check_str(name, what, error=error)
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or "\0" in name:
        raise error(f"{what}: {short_repr(name)} is outside the checkpoint folder; shards are named relative to it")
    return folder / name
