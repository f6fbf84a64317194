"""The backend interface and its capabilities (Caps); what it allocates and binds is in resources.py,
command lists are in commands.py.

A backend implements a handful of underscore slots (`_create_buffer`, `_write`, `_read`,
`_free`, `_create_pipeline`, `_prepare`, `_submit`, `_wait`, `_close`, and optionally
`_wait_for`); this base class does every check once, at the public entry points, so the
backends stay small and every backend raises the same typed errors. A `CommandList`
validates each dispatch when it is recorded; `Backend.submit` then replays the backend's
prepared form with no further checks.

Running ahead: `submit` only queues, and `read_after(cmd, t)` reads a READBACK tensor that
`cmd` copied into once that list's last submit is done, whatever was queued after it. A
model decodes with two recordings of its step that alternate, so the host reads token n
while the device computes token n+1. `write` is ordered with submits: a write is seen by
every list submitted after it and by none submitted before it, and (on the GPU backends) a
small one does not wait for the lists in flight, so the host can write a step's inputs
while the step before runs.

Threads: every public call holds the backend's lock (see lifetime.py), so a backend may be used
from several threads and their calls run one at a time; a backend's slots never run concurrently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .commands import CommandList
from .dtypes import dtype_of, host_dtype, host_shape, nbytes, value_shape
from .errors import BindingError, ClosedError, LimitExceeded, OutOfRange
from .kernels import KernelSpec, kernel
from .lifetime import Lifetime, serialised
from .resources import Buffer, Pipeline, Tensor, Usage
from .trace import Tracer


@dataclass(frozen=True)
class CoopMatrixShape:
    """A cooperative-matrix (tensor core) product a device runs: result[m, n] = a[m, k] @ b[k, n] + c.

    Types are shaderbay dtype names ("f16", "bf16", "f32", "i8", ...); scope is the set of
    invocations that hold one matrix together ("subgroup", "workgroup", ...).
    """

    m: int
    n: int
    k: int
    a: str
    b: str
    c: str
    result: str
    scope: str


CPU_DEVICE_TYPES = ("cpu", "software")  # Caps.device_type of a device whose "GPU" is the host's cores


@dataclass(frozen=True)
class Caps:
    """What a device can do; kernel variants are picked from this, never from a backend's name."""

    device: str
    device_type: str  # "cpu", "software", "integrated", "discrete", "other"
    f16: bool
    subgroups: bool
    subgroup_size: int
    timestamps: bool
    max_buffer_size: int
    max_binding_size: int
    max_workgroup_size: int
    max_workgroups: int  # per dimension
    offset_alignment: int  # a tensor bound to a kernel starts at a multiple of this
    max_shared_memory: int  # bytes of workgroup shared memory a kernel may use
    max_push_constants: int  # bytes of push constants: a kernel's parameters
    max_storage_buffers: int  # storage buffers one kernel may bind
    copy_alignment: int = 4  # copy offsets and sizes are multiples of this
    cooperative_matrix: tuple[CoopMatrixShape, ...] = ()  # tensor-core products in shaders (Vulkan)
    translated: bool = False  # kernels reach the driver through a shader translator (wgpu's naga), not as shipped
    extras: dict[str, Any] = field(default_factory=dict)  # informative only (drivers, versions): never branched on

    def summary(self) -> str:
        feats = [name for name, on in (("f16", self.f16), ("timestamps", self.timestamps)) if on]
        if self.subgroups:
            feats.append(f"subgroups({self.subgroup_size})")
        if self.cooperative_matrix:
            feats.append("cooperative matrices")
        return ", ".join(feats) or "-"


class Backend(ABC):
    """A compute device. Subclasses fill in the underscore slots and set `caps`."""

    name: str = "?"
    caps: Caps

    # public methods a backend may override, serialised like the base class's own
    _SERIALISED_OVERRIDES = ("gpu_timings",)

    def __init__(self) -> None:
        self._life = Lifetime()
        self.tracer = Tracer()
        self.bytes_allocated = 0
        self.peak_bytes_allocated = 0
        self._frees = 0  # buffers freed so far: a command list re-checks its buffers when this moved
        self._pipelines: dict[tuple, Pipeline] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in cls._SERIALISED_OVERRIDES:
            if name in cls.__dict__:
                setattr(cls, name, serialised(cls.__dict__[name]))

    @property
    def closed(self) -> bool:
        return self._life.closed

    # --- slots -----------------------------------------------------------------
    @abstractmethod
    def _create_buffer(self, size: int, usage: Usage) -> Buffer: ...

    @abstractmethod
    def _write(self, buffer: Buffer, offset: int, data: memoryview) -> None: ...

    @abstractmethod
    def _read(self, buffer: Buffer, offset: int, size: int) -> bytes | memoryview: ...

    @abstractmethod
    def _free(self, buffer: Buffer) -> None: ...

    @abstractmethod
    def _create_pipeline(self, spec: KernelSpec, constants: dict[str, Any]) -> Pipeline: ...

    @abstractmethod
    def _prepare(self, cmd: CommandList) -> Any:
        """Turn a finished command list into the backend's replayable form (once)."""

    @abstractmethod
    def _submit(self, cmd: CommandList) -> None: ...

    @abstractmethod
    def _wait(self) -> None: ...

    def _wait_for(self, cmd: CommandList) -> None:
        """Block until the last submit of `cmd` is done; backends that can tell submits apart override it."""
        self._wait()

    @abstractmethod
    def _close(self) -> None: ...

    def _release_on_collect(self, buffer: Buffer) -> Callable[[], None] | None:
        """What releases `buffer`'s device memory once it is garbage-collected without free, run at the
        next call into the backend; it must not refer to the buffer or the backend. None (the default)
        when collecting the Buffer object releases everything itself (host memory, wgpu's objects)."""
        return None

    def _release_when_collected(self, release: Callable[[], None]) -> Callable[[], None]:
        """Call `release` (which frees the device and must not refer to the backend) exactly once: when
        the returned function is called (from `_close`), when the backend is garbage-collected or at
        interpreter exit. Backends holding driver objects call this once they are made."""
        return self._life.release_when_collected(self, release)

    def supports(self, kernel_name: str) -> bool:
        """Whether this backend implements a catalogue kernel (`shaderbay check` lists the rest)."""
        return True

    def gpu_timings(self, cmd: CommandList) -> list[tuple[str, float]] | None:
        """Per-dispatch GPU durations in ns of the last completed submit of `cmd`, if measured."""
        return None

    # --- buffers -----------------------------------------------------------------
    @serialised
    def buffer(self, size: int, usage: Usage = Usage.DEVICE) -> Buffer:
        self._check_alive()
        if not isinstance(size, int) or size <= 0:
            raise BindingError(f"a buffer needs a positive integer size in bytes, got {size!r}")
        if size > self.caps.max_buffer_size:
            raise LimitExceeded(
                f"a buffer of {size} bytes exceeds {self.caps.device}'s limit of "
                f"{self.caps.max_buffer_size}; split the data into several buffers"
            )
        size = -(-size // 4) * 4
        buf = self._create_buffer(size, usage)
        buf._collected = self._life.collected(buf, size, self._release_on_collect(buf))
        self.bytes_allocated += size
        self.peak_bytes_allocated = max(self.peak_bytes_allocated, self.bytes_allocated)
        return buf

    def empty(self, shape: tuple[int, ...] | int, dtype: str = "f32", usage: Usage = Usage.DEVICE) -> Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return self.buffer(max(nbytes(dtype, shape), 4), usage).tensor(dtype, shape)

    def upload(self, array: np.ndarray, dtype: str | None = None, usage: Usage = Usage.DEVICE) -> Tensor:
        """A new tensor holding `array` (uint16 arrays need dtype='bf16' to be read as bfloat16; uint8
        rows of GGUF blocks need their block dtype, e.g. 'q4_0')."""
        array = np.ascontiguousarray(array)
        dtype = dtype or dtype_of(array)
        if array.dtype != host_dtype(dtype):
            raise BindingError(f"a {array.dtype} array cannot be uploaded as {dtype}; convert it first")
        t = self.empty(value_shape(dtype, array.shape), dtype, usage)
        if array.nbytes % 4:  # writes cover whole 4-byte words: pad an odd count of 16-bit elements
            self.write(t.buffer, array.tobytes() + bytes(-array.nbytes % 4), offset=t.offset)
        else:
            self.write(t, array)
        return t

    @serialised
    def write(self, target: Buffer | Tensor, data: np.ndarray | bytes, offset: int = 0) -> None:
        """Host to device. `offset` is in bytes, from the start of the buffer or tensor. The write is seen
        by every list submitted after it and by none submitted before it (`_write` keeps that order)."""
        buf, base = _buffer_and_offset(target)
        self.check_owned(buf)
        view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        start = base + offset
        if (
            offset < 0
            or start + view.nbytes > buf.size
            or (isinstance(target, Tensor) and offset + view.nbytes > target.nbytes)
        ):
            raise OutOfRange(f"writing {view.nbytes} bytes at offset {offset} overruns the target")
        if start % 4 or view.nbytes % 4:
            raise OutOfRange("writes must start at and cover a multiple of 4 bytes")
        self._write(buf, start, view)

    @serialised
    def read(self, target: Buffer | Tensor, offset: int = 0, size: int | None = None) -> np.ndarray:
        """Device to host, after waiting for submitted work. A Tensor reads back with its dtype and shape."""
        buf, base = _buffer_and_offset(target)
        self.check_owned(buf)
        limit = target.nbytes if isinstance(target, Tensor) else buf.size
        size = limit - offset if size is None else size
        if offset < 0 or size < 0 or offset + size > limit:
            raise OutOfRange(f"reading {size} bytes at offset {offset} overruns the {limit}-byte target")
        self.wait()
        data = np.frombuffer(bytes(self._read(buf, base + offset, size)), np.uint8)
        if isinstance(target, Tensor) and offset == 0 and size == target.nbytes:
            return data.view(host_dtype(target.dtype)).reshape(host_shape(target.dtype, target.shape))
        return data

    @serialised
    def read_after(self, cmd: CommandList, target: Tensor) -> np.ndarray:
        """Read a READBACK tensor that `cmd` fills, once the last submit of `cmd` is done, without waiting
        for anything submitted after it: the host reads step n's token while step n+1 runs."""
        self.check_owned(target.buffer)
        if target.buffer.usage is not Usage.READBACK:
            raise BindingError(f"read_after reads READBACK tensors, got a {target.buffer.usage.value} one; use read")
        if cmd.backend is not self or not cmd.sealed:
            raise BindingError("read_after needs a command list submitted on this backend")
        self.wait_for(cmd)
        data = np.frombuffer(bytes(self._read(target.buffer, target.offset, target.nbytes)), np.uint8)
        return data.view(host_dtype(target.dtype)).reshape(host_shape(target.dtype, target.shape))

    @serialised
    def free(self, buffer: Buffer) -> None:
        self.check_owned(buffer)
        if buffer._collected is not None:
            buffer._collected.detach()
        self._free(buffer)
        self._frees += 1
        buffer.freed = True
        self.bytes_allocated -= buffer.size

    def check_owned(self, buffer: Buffer) -> None:
        self._check_alive()
        if buffer.backend is not self:
            raise BindingError(f"{buffer!r} belongs to backend {buffer.backend.name!r}, not {self.name!r}")
        if buffer.freed:
            raise ClosedError(f"{buffer!r} was freed; allocate a new buffer")

    # --- pipelines and command lists ------------------------------------------------
    @serialised
    def pipeline(self, kernel_name: str, **constants: Any) -> Pipeline:
        """The compiled pipeline for a catalogue kernel and constants (cached)."""
        self._check_alive()
        spec = kernel(kernel_name)
        resolved = spec.resolve_constants(constants)
        key = (kernel_name, tuple(sorted(resolved.items())))
        if key not in self._pipelines:
            with self.tracer.span("create_pipeline", kernel=kernel_name):
                self._pipelines[key] = self._create_pipeline(spec, resolved)
        return self._pipelines[key]

    def command_list(self, label: str = "") -> CommandList:
        self._check_alive()
        return CommandList(self, label)

    @serialised
    def submit(self, cmd: CommandList) -> None:
        """Queue a command list; it runs after everything submitted before it."""
        self._check_alive()
        if cmd.backend is not self:
            raise BindingError("this command list was recorded on another backend")
        cmd.check_live(self._frees)
        if cmd.prepared is None:
            with self.tracer.span("prepare", ops=len(cmd)):
                cmd.prepared = self._prepare(cmd)
        with self.tracer.span("submit", label=cmd.label):
            self._submit(cmd)

    @serialised
    def wait(self) -> None:
        """Block until all submitted work is done."""
        self._check_alive()
        with self.tracer.span("wait"):
            self._wait()

    @serialised
    def wait_for(self, cmd: CommandList) -> None:
        """Block until the last submit of `cmd` (and everything submitted before it) is done."""
        self._check_alive()
        with self.tracer.span("wait"):
            self._wait_for(cmd)

    @serialised
    def run(self, cmd: CommandList) -> None:
        self.submit(cmd)
        self.wait()

    @serialised
    def close(self) -> None:
        if not self.closed:
            self._life.deferred.clear()  # closing releases everything they would
            try:
                self._close()
            finally:
                self._life.closed = True

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_alive(self) -> None:
        if self.closed:
            raise ClosedError(f"backend {self.name!r} was closed; create a new one")


def _buffer_and_offset(target: Buffer | Tensor) -> tuple[Buffer, int]:
    if isinstance(target, Tensor):
        return target.buffer, target.offset
    if isinstance(target, Buffer):
        return target, 0
    raise BindingError(f"expected a Buffer or Tensor, got {type(target).__name__}")
