"""Command lists for wgpu: prepared once into typed steps, encoded again by one loop on every submit.

wgpu translates the SPIR-V (it does not pass it through) and cannot replay a command buffer
(a second submit of one aborts the process), so a command list is prepared once into a list
of steps, `ComputePass`es of `DispatchStep`s and `CopyStep`s, with every bind group created
then, and `encode` turns the steps into one command encoder, one compute pass per run of
consecutive dispatches (a copy ends the pass), and one submit, every time. With timestamps on
the same loop writes one before and one after every dispatch.

The loop calls one of two encoders with the same calls: native.NativeEncoder (wgpu-native's
C functions, the default) or `PythonEncoder` (wgpu-py's public API, SHADERBAY_WGPU_ENCODER=python).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from shaderbay.commands import CommandList, Copy, Dispatch
from shaderbay.errors import BindingError, LimitExceeded
from shaderbay.trace import Tracer

from .loader import extras, native, wait_idle, wgpu
from .pipelines import Compiled, Pipelines

ENV_ENCODER = "SHADERBAY_WGPU_ENCODER"
MAX_QUERIES = 4096  # wgpu's largest query set
RESOLVE_ALIGN = 256  # resolve_query_set destination offsets


class DispatchStep(NamedTuple):
    """One dispatch in the form its encoder's calls take (C handles for the native encoder).

    A NamedTuple: the encoding loop unpacks it as fast as a plain tuple."""

    pipeline: Any
    bind_group: Any
    immediates: Any  # the parameter bytes (a C pointer for the native encoder)
    size: int  # bytes of parameters
    x: int  # workgroup counts
    y: int
    z: int


@dataclass
class ComputePass:
    dispatches: list[DispatchStep] = field(default_factory=list)


@dataclass(frozen=True)
class CopyStep:
    src: Any  # wgpu-py buffers
    src_offset: int
    dst: Any
    dst_offset: int
    size: int


@dataclass
class Timestamps:
    sets: list  # query sets of up to MAX_QUERIES
    resolve: Any  # QUERY_RESOLVE | COPY_SRC
    staging: Any  # MAP_READ | COPY_DST
    nbytes: int
    submitted_ns: int = 0
    pending: bool = False


@dataclass
class Prepared:
    steps: list[ComputePass | CopyStep]
    labels: list[str]  # one per dispatch
    keep: list  # wgpu objects (and C data) the steps' handles belong to
    timestamps: Timestamps | None = None
    timings: list[tuple[str, float]] | None = None
    submission: int | None = None  # wgpu-native's index of its last submit (native encoder, untimed)


class PythonEncoder:
    """The encoder calls through wgpu-py's public API, in the native encoder's argument order."""

    name = "python"
    null = None

    def __init__(self, device: Any):
        self.device = device
        self.queue = device.queue

    pipeline = staticmethod(lambda pipeline: pipeline)
    bind_group = staticmethod(lambda group: group)
    immediates = staticmethod(lambda data, keep: data)
    set_pipeline = staticmethod(native.GPUComputePassEncoder.set_pipeline)
    dispatch = staticmethod(native.GPUComputePassEncoder.dispatch_workgroups)
    write_timestamp = staticmethod(extras.write_timestamp)

    @staticmethod
    def set_bind_group(compute_pass: Any, index: int, group: Any, _offset_count: int, _offsets: Any) -> None:
        compute_pass.set_bind_group(index, group)

    @staticmethod
    def set_immediates(compute_pass: Any, offset: int, data: bytes, size: int) -> None:
        compute_pass.set_immediates(offset, data, 0, size)

    def begin(self) -> Any:
        return self.device.create_command_encoder()

    @staticmethod
    def begin_pass(encoder: Any) -> Any:
        return encoder.begin_compute_pass()

    @staticmethod
    def end_pass(compute_pass: Any) -> None:
        compute_pass.end()

    @staticmethod
    def copy(encoder: Any, src: Any, src_offset: int, dst: Any, dst_offset: int, size: int) -> None:
        encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, size)

    @staticmethod
    def resolve(encoder: Any, query_set: Any, count: int, dst: Any, dst_offset: int) -> None:
        encoder.resolve_query_set(query_set, 0, count, dst, dst_offset)

    @staticmethod
    def abort(encoder: Any) -> None:
        pass

    def submit(self, encoder: Any) -> None:
        self.queue.submit([encoder.finish()])

    def wait_idle(self) -> None:
        wait_idle(self.device)

    def read(self, src: Any, offset: int, staging: Any, n: int) -> bytes:
        encoder = self.begin()
        encoder.copy_buffer_to_buffer(src, offset, staging, 0, n)
        self.submit(encoder)
        return self.map_read(staging, n)

    @staticmethod
    def map_read(buffer: Any, n: int, wait_idle: bool = False) -> bytes:
        buffer.map_sync("READ", 0, n)  # once every submit that uses it is done
        try:
            return bytes(buffer.read_mapped(0, n, copy=True))
        finally:
            buffer.unmap()


Encoder = Any  # native.NativeEncoder or PythonEncoder: the same calls


def encode(encoder: Encoder, steps: list[ComputePass | CopyStep], timestamps: Timestamps | None = None) -> Any:
    """The one encoding loop: the steps into a new command encoder (returned, not yet finished)."""
    set_pipeline, set_group, set_imm = encoder.set_pipeline, encoder.set_bind_group, encoder.set_immediates
    dispatch, null, stamp = encoder.dispatch, encoder.null, encoder.write_timestamp
    sets = timestamps.sets if timestamps is not None else None
    q = 0
    enc = encoder.begin()
    try:
        for step in steps:
            if type(step) is CopyStep:
                encoder.copy(enc, step.src, step.src_offset, step.dst, step.dst_offset, step.size)
                continue
            h = encoder.begin_pass(enc)
            last = None
            for pipeline, group, data, n, x, y, z in step.dispatches:
                if sets:
                    stamp(h, sets[q // MAX_QUERIES], q % MAX_QUERIES)
                if pipeline is not last:
                    set_pipeline(h, pipeline)
                    last = pipeline
                set_group(h, 0, group, 0, null)
                set_imm(h, 0, data, n)
                dispatch(h, x, y, z)
                if sets:
                    stamp(h, sets[(q + 1) // MAX_QUERIES], (q + 1) % MAX_QUERIES)
                    q += 2
            encoder.end_pass(h)
        if timestamps is not None:
            for i, query_set in enumerate(timestamps.sets):
                count = min(MAX_QUERIES, q - i * MAX_QUERIES)
                encoder.resolve(enc, query_set, count, timestamps.resolve, i * MAX_QUERIES * 8)
            encoder.copy(enc, timestamps.resolve, 0, timestamps.staging, 0, timestamps.nbytes)
    except BaseException:
        encoder.abort(enc)
        raise
    return enc


class CommandQueue:
    """Prepares command lists, submits them (timed when asked), waits, and collects GPU timings."""

    def __init__(self, device: Any, caps: Any, pipelines: Pipelines, encoder: Encoder, tracer: Tracer):
        self.device = device
        self.caps = caps
        self.pipelines = pipelines
        self.encoder = encoder
        self.tracer = tracer
        self.period_ns = 1.0  # per timestamp tick
        self._pending_timestamps: list[Prepared] = []

    # --- preparing --------------------------------------------------------------------------------
    def prepare(self, cmd: CommandList) -> Prepared:
        steps: list[ComputePass | CopyStep] = []
        labels: list[str] = []
        keep: list = []
        groups: dict[tuple, Any] = {}
        current: ComputePass | None = None
        encoder, max_groups = self.encoder, self.caps.max_workgroups
        for op in cmd.ops:
            if isinstance(op, Copy):
                current = None
                steps.extend(self._copy_steps(op, keep))
                continue
            compiled = self.pipelines.compile(op.pipeline, op.params)
            grid = tuple(int(g) for g in compiled.variant.grid(op.params))
            grid = grid + (1,) * (3 - len(grid))
            if any(g > max_groups for g in grid):
                raise LimitExceeded(
                    f"{op.label}: variant {compiled.variant.name} asks for {grid} workgroups for {op.params}; "
                    f"{self.caps.device} allows {max_groups} per dimension"
                )
            group = self._bind_group(op, compiled, groups)
            if current is None:
                current = ComputePass()
                steps.append(current)
            data = op.param_bytes
            current.dispatches.append(
                DispatchStep(
                    encoder.pipeline(compiled.pipeline),
                    encoder.bind_group(group),
                    encoder.immediates(data, keep),
                    len(data),
                    *grid,
                )
            )
            keep.append(compiled.pipeline)
            labels.append(op.label)
        keep.extend(groups.values())
        return Prepared(steps, labels, keep)

    def _copy_steps(self, op: Copy, keep: list) -> list[CopyStep]:
        if op.src is not op.dst:
            return [CopyStep(op.src.gpu, op.src_offset, op.dst.gpu, op.dst_offset, op.size)]
        # wgpu refuses copies within one buffer: bounce through a scratch buffer
        U = wgpu.BufferUsage
        scratch = self.device.create_buffer(size=op.size, usage=U.COPY_SRC | U.COPY_DST)
        keep.append(scratch)
        return [
            CopyStep(op.src.gpu, op.src_offset, scratch, 0, op.size),
            CopyStep(scratch, 0, op.dst.gpu, op.dst_offset, op.size),
        ]

    def _bind_group(self, op: Dispatch, compiled: Compiled, cache: dict) -> Any:
        """A bind group binding each tensor as a window [offset, offset + nbytes) of its buffer."""
        windows = []
        limit = self.caps.max_binding_size
        for t in op.tensors:
            buf = t.buffer
            size = min(max(4, -(-t.nbytes // 4) * 4), buf.size - t.offset)
            if size > limit:  # the command list checks this too; never hand wgpu an over-limit binding
                raise LimitExceeded(f"{op.label}: a {size}-byte binding exceeds {limit}; split the tensor")
            windows.append((buf, t.offset, size))
        key = (id(compiled.layout), tuple((id(b), o, s) for b, o, s in windows))
        group = cache.get(key)
        if group is None:
            entries = [
                {"binding": i, "resource": {"buffer": b.gpu, "offset": o, "size": s}}
                for i, (b, o, s) in enumerate(windows)
            ]
            try:
                group = self.device.create_bind_group(label=op.label, layout=compiled.layout, entries=entries)
            except wgpu.GPUError as exc:
                raise BindingError(f"{op.label}: wgpu refused the bindings of {compiled.variant.name}: {exc}") from exc
            cache[key] = group
        return group

    # --- submitting and waiting -----------------------------------------------------------------
    def submit(self, cmd: CommandList, timed: bool) -> None:
        prep: Prepared = cmd.prepared
        timed = timed and bool(prep.labels)
        timestamps = (prep.timestamps or self._make_timestamps(prep)) if timed else None
        try:
            submission = self.encoder.submit(encode(self.encoder, prep.steps, timestamps))
        except wgpu.GPUError as exc:
            raise BindingError(f"wgpu rejected {cmd.label or 'a command list'}: {exc}") from exc
        # a timed submit is waited for with every other, so that its timestamps are collected
        prep.submission = None if timed else submission
        if timestamps is not None:
            timestamps.submitted_ns = time.perf_counter_ns()
            timestamps.pending = True
            if prep not in self._pending_timestamps:
                self._pending_timestamps.append(prep)

    def wait_for(self, prep: Prepared) -> None:
        if prep.submission is not None:
            self.encoder.wait_for(prep.submission)
        else:
            self.wait()

    def wait(self) -> None:
        self.encoder.wait_idle()
        if self._pending_timestamps:
            pending, self._pending_timestamps = self._pending_timestamps, []
            for prep in pending:
                self._harvest(prep)

    def close(self) -> None:
        self._pending_timestamps.clear()

    # --- timestamps -------------------------------------------------------------------------------
    def _make_timestamps(self, prep: Prepared) -> Timestamps:
        U = wgpu.BufferUsage
        queries = 2 * len(prep.labels)
        sets = [
            self.device.create_query_set(type="timestamp", count=min(MAX_QUERIES, queries - start))
            for start in range(0, queries, MAX_QUERIES)
        ]
        nbytes = 8 * queries
        padded = -(-nbytes // RESOLVE_ALIGN) * RESOLVE_ALIGN
        resolve = self.device.create_buffer(size=padded, usage=U.QUERY_RESOLVE | U.COPY_SRC)
        staging = self.device.create_buffer(size=padded, usage=U.MAP_READ | U.COPY_DST)
        prep.timestamps = Timestamps(sets, resolve, staging, nbytes)
        return prep.timestamps

    def _harvest(self, prep: Prepared) -> None:
        """Read a finished submit's timestamps into prep.timings (the caller has waited)."""
        ts = prep.timestamps
        if ts is None or not ts.pending:
            return
        ts.pending = False
        ticks = np.frombuffer(self.encoder.map_read(ts.staging, ts.nbytes, wait_idle=True), np.uint64)
        dur = (ticks[1::2].astype(np.int64) - ticks[0::2].astype(np.int64)) * self.period_ns
        prep.timings = [(label, float(max(d, 0.0))) for label, d in zip(prep.labels, dur, strict=True)]
        self.tracer.add_gpu(prep.timings, start_ns=ts.submitted_ns)
