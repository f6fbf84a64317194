"""The NumPy reference backend: buffers are bytearrays, dispatches call the reference kernels.

A decode step's products with q8_0/q4_0/q4_1 weights need each block's scales (blockdot.scales: a
quarter of the default model's decode step here when made every token, benches/RESULTS.md 2026-12-05),
which depend on the weights' bytes alone. A buffer counts the writes into it (host writes, copies,
kernels binding it writable), and a recorded product keeps its weights' scales until the count moves.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from shaderbay.backend import Backend, Caps
from shaderbay.commands import CommandList, Copy
from shaderbay.dtypes import host_dtype
from shaderbay.kernels import KernelSpec
from shaderbay.resources import Buffer, Pipeline, Usage

from . import blockdot
from .kernels import REFERENCE

UNLIMITED = 1 << 40  # limits a GPU has and the host does not (shared memory, push constants, bindings)


class NumpyBuffer(Buffer):
    def __init__(self, backend: Backend, size: int, usage: Usage):
        super().__init__(backend, size, usage)
        self.data = np.zeros(size, np.uint8)
        self.writes = 0  # what is derived from the bytes is stale once this moves


class Scales:
    """blockdot.scales of one recorded product's weights, made again only after a write to their buffer."""

    def __init__(self, buffer: NumpyBuffer):
        self.buffer = buffer
        self.made: dict[tuple[str, bool], tuple[int, Any]] = {}  # (wdtype, by_block) -> (writes, scales)

    def __call__(self, w: np.ndarray, wdtype: str, by_block: bool) -> Any:
        key = (wdtype, by_block)
        writes, scales = self.made.get(key, (-1, None))
        if writes != self.buffer.writes:
            scales = blockdot.scales(w, wdtype, by_block)
            self.made[key] = (self.buffer.writes, scales)
        return scales


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self) -> None:
        super().__init__()
        self.caps = Caps(
            device="NumPy " + np.__version__,
            device_type="cpu",
            f16=True,
            subgroups=False,
            subgroup_size=1,
            timestamps=False,
            max_buffer_size=1 << 40,
            max_binding_size=1 << 40,
            max_workgroup_size=1,
            max_workgroups=1 << 31,
            offset_alignment=4,
            max_shared_memory=UNLIMITED,
            max_push_constants=UNLIMITED,
            max_storage_buffers=UNLIMITED,
        )

    def _create_buffer(self, size: int, usage: Usage) -> Buffer:
        return NumpyBuffer(self, size, usage)

    def _write(self, buffer: NumpyBuffer, offset: int, data: memoryview) -> None:
        # submits run at once, so a write is ordered with them as Backend.write promises
        buffer.data[offset : offset + data.nbytes] = np.frombuffer(data, np.uint8)
        buffer.writes += 1

    def _read(self, buffer: NumpyBuffer, offset: int, size: int) -> memoryview:
        return memoryview(buffer.data[offset : offset + size])

    def _free(self, buffer: NumpyBuffer) -> None:
        buffer.data = np.zeros(0, np.uint8)

    def _create_pipeline(self, spec: KernelSpec, constants: dict[str, Any]) -> Pipeline:
        return Pipeline(spec, constants)

    def _prepare(self, cmd: CommandList) -> list:
        steps = []
        for op in cmd.ops:
            if isinstance(op, Copy):
                steps.append((_copy, (op,), (op.dst,)))
                continue
            bindings = dict(zip((b.name for b in op.pipeline.bindings), op.tensors, strict=True))
            views = {name: t.buffer.data[t.offset : t.offset + t.nbytes].view(host_dtype(t.dtype))
                     for name, t in bindings.items()}  # fmt: skip
            written = tuple(bindings[b.name].buffer for b in op.pipeline.bindings if b.access != "read")
            args = (views, op.params, op.pipeline.constants)
            fn = REFERENCE[op.pipeline.spec.name]
            if op.pipeline.spec.name == "matmul":
                fn = partial(fn, scales=Scales(bindings["w"].buffer))
            steps.append((fn, args, written))
        return steps

    def _submit(self, cmd: CommandList) -> None:
        for fn, args, written in cmd.prepared:
            fn(*args)
            for buffer in written:
                buffer.writes += 1

    def _wait(self) -> None:
        pass

    def _close(self) -> None:
        pass


def _copy(op: Copy) -> None:
    op.dst.data[op.dst_offset : op.dst_offset + op.size] = op.src.data[op.src_offset : op.src_offset + op.size]
