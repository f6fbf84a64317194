"""Writing .safetensors files, streaming: the header is fixed up front from the names, shapes and
dtypes, then tensors are written one at a time, so a converter holds one tensor in memory at once."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from shaderbay.dtypes import host_dtype
from shaderbay.errors import ModelError

from .checkpoint import SAFETENSORS_DTYPES

_TAGS = {dtype: tag for tag, dtype in SAFETENSORS_DTYPES.items()}  # f32 -> F32, f16 -> F16, bf16 -> BF16


class SafetensorsWriter:
    """``entries`` is [(name, shape, dtype)] in file order (dtype f32, f16 or bf16); ``write`` them in that order.

    Use it as a context manager: leaving the block without an exception checks every tensor was written.
    """

    def __init__(
        self, path: str | Path, entries: Sequence[tuple[str, tuple[int, ...], str]], metadata: dict[str, str] | None
    ):
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        self._expected: list[tuple[str, int, str]] = []
        offset = 0
        for name, shape, dtype in entries:
            nbytes = math.prod(shape) * host_dtype(dtype).itemsize
            header[name] = {"dtype": _TAGS[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._expected.append((name, nbytes, dtype))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-(len(blob) + 8) % 8)  # the data starts 8-byte aligned
        self.path = Path(path)
        self._f: BinaryIO = self.path.open("wb")
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)
        self._written = 0

    def write(self, name: str, array: np.ndarray) -> None:
        """Write the next tensor: ``array`` in its dtype's host form (bf16 as uint16 bit patterns)."""
        exp_name, exp_bytes, dtype = self._expected[self._written]
        data = np.ascontiguousarray(array, dtype=host_dtype(dtype).newbyteorder("<"))
        if name != exp_name or data.nbytes != exp_bytes:
            raise ModelError(f"internal error: wrote {name} ({data.nbytes} B), expected {exp_name} ({exp_bytes} B)")
        self._f.write(data.data)
        self._written += 1

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._f.close()
        if exc_type is None and self._written != len(self._expected):
            raise ModelError(f"internal error: {self.path} got {self._written} of {len(self._expected)} tensors")


def write_safetensors(
    path: str | Path, tensors: Mapping[str, tuple[np.ndarray, str]], metadata: dict[str, str] | None = None
) -> None:
    """Write {name: (array, dtype)} as one safetensors file (dtype f32/f16/bf16; bf16 as uint16 bits)."""
    entries = [(name, tuple(array.shape), dtype) for name, (array, dtype) in tensors.items()]
    with SafetensorsWriter(path, entries, metadata) as w:
        for name, (array, _) in tensors.items():
            w.write(name, array)
