"""What a backend allocates and a command list binds: buffers (with their Usage), typed views of
them (Tensor) and compiled kernels (Pipeline). Backends subclass Buffer and Pipeline to hold their
handles; the checks on them live in Backend and CommandList."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from .dtypes import host_dtype, nbytes, value_shape
from .errors import OutOfRange
from .kernels import KernelSpec


class Usage(Enum):
    """Where a buffer should live. Backends with one kind of memory may ignore it."""

    DEVICE = "device"  # written rarely (weights, caches, activations)
    UPLOAD = "upload"  # written by the host every step (positions, sampler state)
    READBACK = "readback"  # read by the host every step; filled by copies, never bound to a kernel


class BufferOwner(Protocol):
    """What a buffer needs of the backend that allocated it. Backend is one; backend.py imports this
    module, so this module names what it uses instead of importing it back."""

    name: str

    def free(self, buffer: Buffer) -> None: ...


class Buffer:
    """A device allocation of `size` bytes. Backends subclass it to hold their handles."""

    def __init__(self, backend: BufferOwner, size: int, usage: Usage):
        self.backend = backend
        self.size = size
        self.usage = usage
        self.freed = False
        self._collected: Any = None  # the finalizer that releases it if it is collected without free

    def tensor(self, dtype: str, shape: tuple[int, ...] | int, offset: int = 0) -> Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        t = Tensor(self, offset, dtype, shape)
        if offset < 0 or offset + t.nbytes > self.size:
            raise OutOfRange(
                f"a {dtype}{list(shape)} view at offset {offset} needs {t.nbytes} bytes but the buffer "
                f"has {self.size - max(offset, 0)} from there"
            )
        return t

    def free(self) -> None:
        self.backend.free(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.size} bytes {self.usage.value}{' freed' if self.freed else ''}>"


@dataclass(frozen=True)
class Tensor:
    """A typed view of a buffer: what a kernel binding receives."""

    buffer: Buffer
    offset: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)

    def view(self, dtype: str | None = None, shape: tuple[int, ...] | int | None = None, offset: int = 0) -> Tensor:
        """Another view of the same bytes, `offset` bytes further in."""
        dtype = dtype or self.dtype
        if shape is None:
            shape = value_shape(dtype, ((self.nbytes - offset) // host_dtype(dtype).itemsize,))
        return self.buffer.tensor(dtype, shape, self.offset + offset)


class Pipeline:
    """A catalogue kernel compiled with one choice of constants. Backends subclass it."""

    def __init__(self, spec: KernelSpec, constants: dict[str, Any]):
        self.spec = spec
        self.constants = constants
        self.bindings = spec.bindings_for(constants)
        self.dtypes = {b.name: b.resolved_dtype(constants) for b in self.bindings}

    def __repr__(self) -> str:
        consts = ", ".join(f"{k}={v}" for k, v in self.constants.items())
        return f"<Pipeline {self.spec.name}({consts})>"
