"""Command lists: dispatches and copies recorded once, checked as they are recorded, and submitted
(replayed) by `Backend.submit` as often as needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .dtypes import itemsize
from .errors import BindingError, ClosedError, LimitExceeded, OutOfRange
from .resources import Buffer, Pipeline, Tensor, Usage


class RecordingLimits(Protocol):
    """The device limits a command list checks as it records (fields of Caps)."""

    @property
    def offset_alignment(self) -> int: ...

    @property
    def copy_alignment(self) -> int: ...

    @property
    def max_binding_size(self) -> int: ...


class ListOwner(Protocol):
    """What a command list needs of its backend. Backend is one; backend.py imports this module, so
    this module names what it uses instead of importing it back."""

    @property
    def caps(self) -> RecordingLimits: ...

    def check_owned(self, buffer: Buffer) -> None: ...


@dataclass(frozen=True)
class Dispatch:
    pipeline: Pipeline
    tensors: tuple[Tensor, ...]  # in the pipeline's binding order
    params: dict[str, Any]
    param_bytes: bytes
    label: str
    spans: tuple[tuple[int, int], ...]  # per tensor, the bytes of its buffer the dispatch may touch [first, end)


@dataclass(frozen=True)
class Copy:
    src: Buffer
    dst: Buffer
    size: int
    src_offset: int
    dst_offset: int


class CommandList:
    """Recorded dispatches and copies, in order; submit it as many times as you like.

    Each dispatch sees the writes of every earlier one. Recording validates everything;
    the first submit seals the list and lets the backend prepare its own form of it.
    """

    def __init__(self, backend: ListOwner, label: str = ""):
        self.backend = backend
        self.label = label
        self.ops: list[Dispatch | Copy] = []
        self.prepared: Any = None  # the backend's form, made once by Backend._prepare
        self._buffers: tuple[Buffer, ...] = ()  # every buffer it uses, gathered at the first submit
        self._checked_at = -1  # the backend's count of frees when they were last checked

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def sealed(self) -> bool:
        return self.prepared is not None

    def dispatch(self, pipeline: Pipeline, bindings: dict[str, Tensor], label: str = "", **params: Any) -> None:
        self._check_open()
        spec, constants = pipeline.spec, pipeline.constants
        values = spec.check_params(params, constants)
        expected = [b.name for b in pipeline.bindings]
        if sorted(bindings) != sorted(expected):
            raise BindingError(f"{spec.name} binds ({', '.join(expected)}); got ({', '.join(bindings)})")
        scope = {**constants, **values}
        caps = self.backend.caps
        tensors = []
        spans = []
        for b in pipeline.bindings:
            t = bindings[b.name]
            if not isinstance(t, Tensor):
                raise BindingError(f"{spec.name}.{b.name}: expected a Tensor, got {type(t).__name__}")
            self.backend.check_owned(t.buffer)
            if t.buffer.usage is Usage.READBACK:
                raise BindingError(
                    f"{spec.name}.{b.name}: a READBACK buffer cannot be bound to a kernel; bind a DEVICE "
                    "buffer and copy the result into the READBACK one (CommandList.copy)"
                )
            want = pipeline.dtypes[b.name]
            if t.dtype != want:
                raise BindingError(f"{spec.name}.{b.name} holds {want}, got a {t.dtype} tensor")
            need = b.numel(scope)
            if t.numel < need:
                raise BindingError(
                    f"{spec.name}.{b.name} needs {need} {want} elements for {values}, the tensor has {t.numel}"
                )
            if t.offset % caps.offset_alignment:
                raise OutOfRange(
                    f"{spec.name}.{b.name}: tensor offset {t.offset} is not a multiple of the device's "
                    f"offset alignment {caps.offset_alignment}; copy the data to an aligned place first"
                )
            if t.nbytes > caps.max_binding_size:
                raise LimitExceeded(
                    f"{spec.name}.{b.name}: {t.nbytes} bytes exceed the device's largest binding "
                    f"({caps.max_binding_size}); split the tensor"
                )
            tensors.append(t)
            touched = b.touched(scope)
            if touched is None:
                spans.append((t.offset, t.offset + t.nbytes))
            else:
                size = itemsize(want)
                spans.append((t.offset + touched[0] * size, t.offset + touched[1] * size))
        self.ops.append(
            Dispatch(pipeline, tuple(tensors), values, spec.pack_params(values), label or spec.name, tuple(spans))
        )

    def copy(self, src: Buffer, dst: Buffer, size: int, src_offset: int = 0, dst_offset: int = 0) -> None:
        self._check_open()
        for buf in (src, dst):
            self.backend.check_owned(buf)
        if src.usage is Usage.READBACK:
            raise BindingError("a READBACK buffer is only copied into; copy from the DEVICE buffer it was filled from")
        align = self.backend.caps.copy_alignment
        if size <= 0 or (size | src_offset | dst_offset) % align:
            raise OutOfRange(f"copy size and offsets must be positive multiples of {align} bytes")
        for buf, off, what in ((src, src_offset, "source"), (dst, dst_offset, "destination")):
            if off < 0 or off + size > buf.size:
                raise OutOfRange(f"copy of {size} bytes at {off} overruns the {what} ({buf.size} bytes)")
        if src is dst and abs(src_offset - dst_offset) < size:
            raise OutOfRange("copy source and destination overlap; copy through a second buffer")
        self.ops.append(Copy(src, dst, size, src_offset, dst_offset))

    def check_live(self, frees: int) -> None:
        """ClosedError if a buffer this list uses was freed (checked again only after a free)."""
        if self._checked_at == frees:
            return
        if not self.sealed:
            ops = self.ops
            used = [t.buffer for op in ops if isinstance(op, Dispatch) for t in op.tensors]
            used += [b for op in ops if isinstance(op, Copy) for b in (op.src, op.dst)]
            self._buffers = tuple({id(b): b for b in used}.values())
        for b in self._buffers:
            if b.freed:
                raise ClosedError(
                    f"{self.label or 'a command list'} uses {b!r}, which was freed; record a new command list "
                    "with live buffers"
                )
        self._checked_at = frees

    def _check_open(self) -> None:
        if self.sealed:
            raise BindingError("this command list was already submitted and is sealed; record a new one")
