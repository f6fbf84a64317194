"""A GGUF file's header, metadata and tensor directory, with the tensor data memory-mapped.

The header parser is our own rather than ``gguf.GGUFReader`` because it is faster where it
matters, at start-up: on the default model's file (SmolLM2-135M-Instruct Q4_1, 98 MB, 49,152
tokens and 48,900 merges; gguf 0.19, this 2-core machine) ``GGUFReader`` took 1.9 s to open it
(5 to 6 s with the machine loaded) and this parser 0.2 to 0.3 s, since ``GGUFReader`` builds a
NumPy view for every part of every string of the vocabulary. The value and tensor types, block
sizes and key names come from the ``gguf`` package.

Everything read is checked against the file's real size before anything is sized from it:
counts of keys, tensors, array elements and string lengths, tensor dimensions and data ranges.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Keys

from ..validate import check_bool, check_float, check_int, check_str
from .errors import GGUFFileError, GGUFTensorTypeError

GGUF_MAGIC = b"GGUF"

# scalar value type -> little-endian NumPy dtype (bool is a byte, nonzero meaning true)
_SCALARS = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
_U64 = struct.Struct("<Q")
_MAX_ARRAY_DEPTH = 3  # arrays of arrays are legal GGUF; no model nests deeper, a hostile file could recurse
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_ALIGNMENT = 1 << 16
# The fewest bytes an entry can take: a key/value pair (key length, type, one byte of value) and
# a tensor entry (name length, dimension count, type, offset). Counts are checked against them.
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8
_REQUIRED: Any = object()  # the default of a getter whose key must be present
_FIX = "the file is corrupt or not a supported model: download or re-export it again"


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's directory entry, its data a zero-copy view of the memory-mapped file.

    ``ne`` is GGUF's dimension list (innermost first); ``shape`` is the project's row-major order
    (``ne`` reversed), so a matrix is ``(rows, cols)`` = ``[out, in]``.
    """

    name: str
    type_id: int
    ne: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int | None  # None for a ggml type the installed gguf package does not know
    source: str = field(repr=False)
    _map: np.ndarray = field(repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def ggml_type(self) -> GGMLQuantizationType:
        """The tensor's block format; GGUFTensorTypeError if the gguf package does not know it."""
        try:
            return GGMLQuantizationType(self.type_id)
        except ValueError:
            raise GGUFTensorTypeError(
                f"{self.source}: tensor {self.name!r} uses ggml type {self.type_id}, unknown to the installed gguf "
                "package; upgrade it (`pip install -U gguf`) or re-export the model as Q8_0 or F16"
            ) from None

    @property
    def type_name(self) -> str:
        try:
            return GGMLQuantizationType(self.type_id).name
        except ValueError:
            return f"ggml type {self.type_id}"

    def raw(self) -> np.ndarray:
        """The stored bytes, a read-only uint8 view of the memory-mapped file (nothing is copied)."""
        self.ggml_type  # noqa: B018 - raises GGUFTensorTypeError for an unknown type
        return self._map[self.offset : self.offset + self.nbytes]

    def rows(self) -> np.ndarray:
        """The stored bytes as (rows, bytes per row): each row a whole number of blocks, as ggml requires."""
        return self.raw().reshape(math.prod(self.shape[:-1]), -1)


class _Cursor:
    """Reads little-endian values from the mapped header, refusing any read past the file's end."""

    def __init__(self, buf: np.ndarray, name: str):
        # a memoryview: slicing it costs a tenth of slicing the np.memmap, for each of ~100k strings
        self.buf, self.name, self.pos, self.size = memoryview(buf), name, 8, int(buf.shape[0])
        self.where = "its header"

    def truncated(self) -> GGUFFileError:
        return GGUFFileError(
            f"{self.name}: {self.where} reaches past the end of the file ({self.size} bytes): "
            "the file is truncated; download it again"
        )

    def corrupt(self, what: str) -> GGUFFileError:
        return GGUFFileError(f"{self.name}: {self.where}: {what}; {_FIX}")

    def need(self, n: int) -> None:
        if n > self.size - self.pos:
            raise self.truncated()

    def take(self, n: int) -> memoryview:
        self.need(n)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def string(self) -> str:
        raw = self.take(self.u64())
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise self.corrupt("a string is not valid UTF-8") from None

    def strings(self, n: int) -> list[str]:
        """An array of n strings: `string()`'s checks in one loop over local names (the vocabulary and
        merges are ~100k strings: 0.06 s instead of 0.10 s on this 2-core VM)."""
        self.need(n * 8)  # each string has at least its 8-byte length
        buf, pos, size = self.buf, self.pos, self.size
        out = [""] * n
        length_at = _U64.unpack_from
        try:
            for i in range(n):
                (length,) = length_at(buf, pos)
                pos += 8
                if length > size - pos:
                    raise self.truncated()
                out[i] = str(buf[pos : pos + length], "utf-8")
                pos += length
        except struct.error:  # a length field past the end of the file
            raise self.truncated() from None
        except UnicodeDecodeError:
            raise self.corrupt("a string is not valid UTF-8") from None
        finally:
            self.pos = pos
        return out

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise self.corrupt(f"arrays nest more than {_MAX_ARRAY_DEPTH} deep")
            item, n = self.u32(), self.u64()
            if item == GGUFValueType.STRING:
                return self.strings(n)
            if item == GGUFValueType.ARRAY:
                self.need(n * 12)  # each array has at least its type and length
                return [self.value(item, depth + 1) for _ in range(n)]
            dt = self._scalar(item)
            values = np.frombuffer(self.take(n * dt.itemsize), dtype=dt)
            return (values != 0).tolist() if item == GGUFValueType.BOOL else values.tolist()
        dt = self._scalar(vtype)
        v = np.frombuffer(self.take(dt.itemsize), dtype=dt)[0]
        return bool(v) if vtype == GGUFValueType.BOOL else v.item()

    def _scalar(self, vtype: int) -> np.dtype:
        if vtype not in _SCALARS:
            raise self.corrupt(f"unknown value type {vtype}")
        return _SCALARS[GGUFValueType(vtype)]


class GGUFFile:
    """A parsed GGUF file: ``metadata`` (key -> value) and ``tensors`` (name -> GGUFTensor)."""

    def __init__(self, path: str | os.PathLike[str]):
        p = Path(path)
        self.path = p
        self.name = p.name
        if not p.exists():
            raise GGUFFileError(f"GGUF file not found: {str(p)!r}; check the path (and that the download finished)")
        if not p.is_file():
            raise GGUFFileError(f"{str(p)!r} is not a file; pass the path of a .gguf model file")
        try:
            with open(p, "rb") as f:
                head = f.read(8)
            mm = np.memmap(p, dtype=np.uint8, mode="r") if len(head) == 8 else None
        except (OSError, ValueError) as e:
            raise GGUFFileError(f"{str(p)!r} cannot be read ({e}); check the file's permissions") from None
        if head[:4] != GGUF_MAGIC:
            raise GGUFFileError(
                f"{str(p)!r} is not a GGUF file (it starts with {head[:4]!r}, not b'GGUF'); "
                "pass a llama.cpp .gguf model file, or load a Hugging Face directory directly"
            )
        version = int.from_bytes(head[4:8], "little") if mm is not None else 0
        if version not in (2, 3):
            hint = "a big-endian GGUF" if version > 0xFFFF else f"GGUF version {version}"
            raise GGUFFileError(
                f"{str(p)!r} is {hint}, which is not supported (little-endian v2/v3 only); "
                "re-export the model with a recent llama.cpp convert_hf_to_gguf.py"
            )
        self.version = version
        self._map = mm
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, GGUFTensor] = {}
        self._parse(_Cursor(mm, p.name))

    def _parse(self, cur: _Cursor) -> None:
        n_tensors, n_kv = cur.u64(), cur.u64()
        if n_kv * _MIN_KV_BYTES > cur.size - cur.pos or n_tensors * _MIN_TENSOR_BYTES > cur.size - cur.pos:
            raise cur.corrupt(f"it claims {n_kv} metadata keys and {n_tensors} tensors, more than the file can hold")
        for i in range(n_kv):
            cur.where = f"metadata entry {i}"
            key = cur.string()
            cur.where = f"metadata key {key!r}"
            if key in self.metadata:
                raise cur.corrupt("the key appears twice")
            self.metadata[key] = cur.value(cur.u32())
        entries = []
        for i in range(n_tensors):
            cur.where = f"tensor entry {i}"
            name = cur.string()
            cur.where = f"tensor {name!r}"
            n_dims = cur.u32()
            if not 1 <= n_dims <= _MAX_DIMS:
                raise cur.corrupt(f"it has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
            ne = tuple(cur.u64() for _ in range(n_dims))
            entries.append((name, ne, cur.u32(), cur.u64()))
        align = self.alignment()
        data_start = cur.pos + (-cur.pos % align)
        for name, ne, type_id, offset in entries:
            cur.where = f"tensor {name!r}"
            if name in self.tensors:
                raise cur.corrupt("the name appears twice")
            self.tensors[name] = self._tensor(cur, name, ne, type_id, data_start, offset, align)

    def _tensor(self, cur: _Cursor, name: str, ne: tuple, type_id: int, start: int, offset: int, align: int):
        if min(ne) < 1 or math.prod(ne) > cur.size * 8:  # no format stores more than 8 elements a byte
            raise cur.corrupt(f"its dimensions {list(ne)} are impossible for a file of {cur.size} bytes")
        nbytes = None
        if type_id in GGMLQuantizationType._value2member_map_:
            qtype = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[qtype]
            if ne[0] % block:
                raise cur.corrupt(f"its rows of {ne[0]} elements are not whole {qtype.name} blocks of {block}")
            nbytes = math.prod(ne) // block * type_size
        if offset % align:
            raise cur.corrupt(f"its data offset {offset} is not a multiple of the alignment {align}")
        begin = start + offset
        if begin + (nbytes or 0) > cur.size:
            raise GGUFFileError(
                f"{self.name}: tensor {name!r} reaches past the end of the file: the file is truncated "
                f"(the tensor ends at byte {begin + (nbytes or 0)}, the file has {cur.size}); download it again"
            )
        return GGUFTensor(name, type_id, ne, begin, nbytes, self.name, self._map)

    # -- typed metadata access -------------------------------------------------------------------

    def _what(self, key: str) -> str:
        return f"{self.name}: metadata key {key!r}"

    def __contains__(self, key: str) -> bool:
        return key in self.metadata

    def get(self, key: str, default: Any = None) -> Any:
        """The raw value of ``key`` (unchecked: for values only displayed or recorded)."""
        return self.metadata.get(key, default)

    def _absent(self, key: str, default: Any) -> Any:
        if default is _REQUIRED:
            raise GGUFFileError(
                f"{self.name}: metadata key {key!r} is missing; the GGUF was not written by a llama.cpp "
                "converter this tool understands; re-export it with a recent convert_hf_to_gguf.py"
            )
        return default

    # Each getter returns ``default`` when the key is absent (or raises when no default is given)
    # and otherwise the value checked for type and range: GGUFFileError naming the file and key.

    def get_int(self, key: str, default: Any = _REQUIRED, *, lo: int = 1, hi: int = 2**31 - 1) -> Any:
        if key not in self.metadata:
            return self._absent(key, default)
        return check_int(self.metadata[key], self._what(key), lo=lo, hi=hi, error=GGUFFileError, fix=_FIX)

    def get_float(
        self, key: str, default: Any = _REQUIRED, *, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False
    ) -> Any:
        if key not in self.metadata:
            return self._absent(key, default)
        v = self.metadata[key]
        return check_float(v, self._what(key), lo=lo, hi=hi, lo_open=lo_open, error=GGUFFileError, fix=_FIX)

    def get_str(self, key: str, default: Any = _REQUIRED) -> Any:
        if key not in self.metadata:
            return self._absent(key, default)
        return check_str(self.metadata[key], self._what(key), error=GGUFFileError, fix=_FIX)

    def get_bool(self, key: str, default: Any = _REQUIRED) -> Any:
        if key not in self.metadata:
            return self._absent(key, default)
        return check_bool(self.metadata[key], self._what(key), error=GGUFFileError, fix=_FIX)

    def get_list(self, key: str, item: type, default: Any = _REQUIRED) -> Any:
        """``key`` as a list whose items are all of type ``item`` (str, int or float)."""
        if key not in self.metadata:
            return self._absent(key, default)
        v = self.metadata[key]
        if not isinstance(v, list) or not all(type(x) is item for x in v):
            raise GGUFFileError(f"{self._what(key)} must be an array of {item.__name__}; {_FIX}")
        return v

    def alignment(self) -> int:
        align = self.get_int(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT, hi=_MAX_ALIGNMENT)
        if align & (align - 1):
            raise GGUFFileError(f"{self._what(Keys.General.ALIGNMENT)} must be a power of two, got {align}; {_FIX}")
        return align


def read_gguf_metadata(gguf_path: str | os.PathLike[str]) -> dict[str, Any]:
    """All metadata key/values of a GGUF file (long arrays such as the vocabulary included)."""
    return dict(GGUFFile(gguf_path).metadata)
