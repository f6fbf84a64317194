"""Checked reads of untrusted values: the numbers and names in a checkpoint's JSON files (and any
other metadata a model is sized from), and the files themselves.

Each check returns the value in its Python type or raises the given error type (CheckpointError
by default) naming where the value came from (`what`, e.g. "config.json: hidden_size"), so that
nothing is sized, divided or allocated from a value of the wrong type or range.
"""

from __future__ import annotations

import json
import os
import reprlib
import stat
from pathlib import Path
from typing import Any

from shaderbay.errors import CheckpointError

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 40
_SHORT.maxlevel = 2

JSON_LIMIT = 64 << 20  # bytes: a config or index file larger than this is not one


def show(value: Any) -> str:
    """A value, shortened for a message (a hostile one may be huge or deeply nested)."""
    return _SHORT.repr(value)


def integer(value: Any, what: str, low: int = 1, high: int = 1 << 31, error: type[Exception] = CheckpointError) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"{what} must be an integer from {low} to {high}, got {show(value)}")
    return value


def number(
    value: Any, what: str, low: float = 0.0, high: float = 1e30, error: type[Exception] = CheckpointError
) -> float:
    """A finite number above `low` (exclusive) and at most `high`, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise error(f"{what} must be a number above {low:g} and at most {high:g}, got {show(value)}")
    return float(value)


def boolean(value: Any, what: str, error: type[Exception] = CheckpointError) -> bool:
    if not isinstance(value, bool):
        raise error(f"{what} must be true or false, got {show(value)}")
    return value


def string(value: Any, what: str, error: type[Exception] = CheckpointError) -> str:
    if not isinstance(value, str):
        raise error(f"{what} must be a string, got {show(value)}")
    return value


def integers(value: Any, what: str, high: int, error: type[Exception] = CheckpointError) -> tuple[int, ...]:
    """One non-negative integer or a list of them (token ids), as a tuple; None as ()."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(integer(v, what, 0, high, error) for v in items)


def mapping(value: Any, what: str, error: type[Exception] = CheckpointError) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object, got {show(value)}")
    return value


def open_regular(path: Path, error: type[Exception] = CheckpointError) -> int:
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


def read_json(path: Path, error: type[Exception] = CheckpointError) -> Any:
    """A JSON file's value; `error` for a file that is not regular, too large, or not JSON."""
    with os.fdopen(open_regular(path, error), "rb") as f:
        data = f.read(JSON_LIMIT + 1)
    if len(data) > JSON_LIMIT:
        raise error(f"{path}: larger than {JSON_LIMIT >> 20} MB, which no config or index is")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise error(f"{path}: its JSON is nested too deeply to be a config or an index") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: cannot be read as JSON ({exc})") from None


def inside(folder: Path, name: Any, what: str, error: type[Exception] = CheckpointError) -> Path:
    """folder/name, for a relative name that stays inside the folder (no absolute path, no '..')."""
    name = string(name, what, error)
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\0" in name:
        raise error(f"{what}: {show(name)} is outside the checkpoint folder; shards are named relative to it")
    return folder / name
