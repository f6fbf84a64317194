"""Checkpoint directories: `config.json` plus safetensors weights, memory-mapped.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw data. The header is parsed here and the
file memory-mapped with NumPy, so a tensor is a view of the page cache: nothing is read into
Python memory until it is uploaded to the device, one tensor at a time, in its stored
precision (float32, float16, or bfloat16 as raw uint16 bits, which NumPy has no dtype for).
Every problem is reported with the file and the tensor it concerns.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from shaderbay.dtypes import BLOCK_DTYPES, host_dtype, host_shape, nbytes, value_shape
from shaderbay.errors import CheckpointError, MissingTensor, ShapeMismatch, UnsupportedDtype

from . import validate as V
from .config import ModelConfig

if TYPE_CHECKING:
    from shaderbay.backend import Backend

    from .tokenizer import Tokenizer

#: safetensors dtype tag -> shaderbay dtype, for the dtypes weights may be stored in
SAFETENSORS_DTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
# GGUF block formats (tensors held in memory by synthetic checkpoints: safetensors has no such tags)
BLOCK_TAGS = {name.upper(): name for name in BLOCK_DTYPES}
_ALL_TAGS = {  # every tag the format defines, with its size, so that sizes can be checked
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
    "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
_HEADER_LIMIT = 100 << 20
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    tag: str  # the stored safetensors dtype tag (F32, F16, BF16, ...)
    shape: tuple[int, ...]
    source: str  # the file it lives in (for messages)

    @property
    def dtype(self) -> str:
        """The shaderbay dtype (f32, f16, bf16); UnsupportedDtype for anything else."""
        try:
            return SAFETENSORS_DTYPES.get(self.tag) or BLOCK_TAGS[self.tag]
        except KeyError:
            raise UnsupportedDtype(
                f"{self.source}: tensor {self.name!r} is stored as {self.tag}, which is not supported; "
                f"weights must be {', '.join(SAFETENSORS_DTYPES)} (convert the checkpoint, e.g. to float16)"
            ) from None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.tag in BLOCK_TAGS:
            return nbytes(BLOCK_TAGS[self.tag], self.shape)
        return self.numel * _ALL_TAGS.get(self.tag, 0)


class Checkpoint:
    """Tensors by name. `array(name)` gives a host array in the stored dtype (bf16 as uint16)."""

    config: ModelConfig
    path: Path | None = None

    def infos(self) -> Mapping[str, TensorInfo]:
        raise NotImplementedError

    def array(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def prepare(self, backend: Backend) -> None:
        """Settle the dtypes the tensors go to ``backend`` in (a GGUF converts the formats it cannot run)."""

    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer: tokenizer.json beside the weights, if there is one."""
        if self.path is None or not (self.path / "tokenizer.json").is_file():
            return None
        from .tokenizer import Tokenizer

        return Tokenizer.from_dir(self.path)

    # --- checks -----------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.infos()

    def expect(self, name: str, shape: Iterable[int]) -> TensorInfo:
        """The tensor's info, checked: present, of a supported dtype, of this shape."""
        shape = tuple(int(s) for s in shape)
        info = self.infos().get(name)
        if info is None:
            raise MissingTensor(f"{self.describe()}: tensor {name!r} is missing (expected shape {list(shape)})")
        if info.shape != shape:
            raise ShapeMismatch(
                f"{info.source}: tensor {name!r} has shape {list(info.shape)} but the config "
                f"({self.config.architecture}) needs {list(shape)}"
            )
        info.dtype  # noqa: B018 - raises UnsupportedDtype
        return info

    def describe(self) -> str:
        return str(self.path) if self.path else "checkpoint"

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafetensorsFile:
    """One memory-mapped .safetensors file with its parsed and validated header."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with os.fdopen(V.open_regular(path), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes, no header)")
                (n,) = struct.unpack("<Q", head)
                if n > _HEADER_LIMIT or 8 + n > size:
                    raise CheckpointError(
                        f"{path}: corrupt or truncated safetensors file: its header claims {n} bytes but the "
                        f"file has {size}"
                    )
                header_bytes = f.read(n)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        try:
            header = json.loads(header_bytes.decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
        self.data_start = 8 + n
        self.size = size
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries: dict[str, tuple[TensorInfo, int, int]] = {}
        for name, entry in header.items():
            try:
                tag = V.check_str(entry["dtype"], "dtype")
                shape = tuple(V.check_int(s, "a dimension", lo=0, hi=1 << 62) for s in entry["shape"])
                begin, end = (V.check_int(v, "an offset", lo=0, hi=1 << 62) for v in entry["data_offsets"])
            except (KeyError, TypeError, ValueError, CheckpointError):
                raise CheckpointError(
                    f"{path}: corrupt safetensors header entry for tensor {V.short_repr(name)}"
                ) from None
            info = TensorInfo(name, tag, shape, str(path))
            if tag in _ALL_TAGS and end - begin != info.nbytes or begin < 0 or end < begin:
                raise CheckpointError(
                    f"{path}: corrupt safetensors header: tensor {name!r} ({tag} {list(shape)}) is given bytes "
                    f"[{begin}, {end}), which do not match its size of {info.nbytes} bytes"
                )
            if self.data_start + end > size:
                raise CheckpointError(
                    f"{path}: truncated: tensor {name!r} needs bytes up to {self.data_start + end} but the file "
                    f"has {size} (re-download or re-convert it)"
                )
            self.entries[name] = (info, begin, end)
        self._map: np.memmap | None = None

    def array(self, name: str) -> np.ndarray:
        info, begin, end = self.entries[name]
        if self._map is None:
            try:
                self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{self.path}: cannot be memory-mapped ({exc})") from None
            if len(self._map) != self.size:
                raise CheckpointError(f"{self.path}: the file changed size while loading")
        raw = self._map[self.data_start + begin : self.data_start + end]
        return raw.view(host_dtype(info.dtype)).reshape(host_shape(info.dtype, info.shape))

    def close(self) -> None:
        self._map = None


class SafetensorsCheckpoint(Checkpoint):
    """A Hugging Face-style directory: config.json and model.safetensors, or shards with their index."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a checkpoint directory (expected config.json and *.safetensors)")
        self.path = path
        self.config = ModelConfig.from_dir(path)
        self.files: list[SafetensorsFile] = []
        self._where: dict[str, SafetensorsFile] = {}
        index_path = path / INDEX_NAME
        single = path / "model.safetensors"
        if index_path.exists():
            self._open_index(index_path)
        elif single.exists():
            self._add(SafetensorsFile(single))
        else:
            shards = sorted(path.glob("*.safetensors"))
            if not shards:
                raise CheckpointError(
                    f"{path}: no model.safetensors, {INDEX_NAME} or *.safetensors shards found "
                    "(for a GGUF file, run `shaderbay convert MODEL.gguf OUT_DIR` first)"
                )
            for shard in shards:
                self._add(SafetensorsFile(shard))
        self._infos = {name: f.entries[name][0] for name, f in self._where.items()}

    def describe(self) -> str:
        if len(self.files) == 1:
            return str(self.files[0].path)
        index = self.path / INDEX_NAME
        return str(index if index.is_file() else self.path)

    def _open_index(self, index_path: Path) -> None:
        index = V.read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: corrupt index (expected JSON with a weight_map object)")
        opened: dict[str, SafetensorsFile] = {}
        for name, filename in weight_map.items():
            V.check_str(name, f"{index_path}: a tensor name")
            shard = V.inside(self.path, filename, f"{index_path}: the shard of tensor {V.short_repr(name)}")
            if filename not in opened:
                if not shard.exists():
                    raise CheckpointError(f"{index_path}: shard {filename!r} (holding tensor {name!r}) is missing")
                opened[filename] = SafetensorsFile(shard)
                self.files.append(opened[filename])
            if name not in opened[filename].entries:
                raise MissingTensor(f"{opened[filename].path}: tensor {name!r} is missing (the index places it here)")
            self._where[name] = opened[filename]

    def _add(self, f: SafetensorsFile) -> None:
        self.files.append(f)
        for name in f.entries:
            self._where.setdefault(name, f)

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def array(self, name: str) -> np.ndarray:
        return self._where[name].array(name)

    def close(self) -> None:
        for f in self.files:
            f.close()


class MemoryCheckpoint(Checkpoint):
    """Tensors held in host arrays (synthetic models); bf16 arrays are uint16 bit patterns."""

    _TAGS = {"f32": "F32", "f16": "F16", "bf16": "BF16", **{v: k for k, v in BLOCK_TAGS.items()}}

    def __init__(self, config: ModelConfig, arrays: dict[str, np.ndarray], dtypes: dict[str, str], name: str = ""):
        self.config = config
        self.arrays = arrays
        self.name = name
        self._infos = {
            k: TensorInfo(k, self._TAGS[dtypes[k]], value_shape(dtypes[k], a.shape), name or "memory")
            for k, a in arrays.items()
        }

    def describe(self) -> str:
        return f"synthetic checkpoint {self.name!r}" if self.name else "in-memory checkpoint"

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def array(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def close(self) -> None:
        pass
