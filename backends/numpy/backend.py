"""The NumPy reference backend: buffers are bytearrays, dispatches call the reference kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
from shaderbay.backend import Backend, Caps
from shaderbay.commands import CommandList, Copy
from shaderbay.dtypes import host_dtype
from shaderbay.kernels import KernelSpec
from shaderbay.resources import Buffer, Pipeline, Usage

from .kernels import REFERENCE

UNLIMITED = 1 << 40  # limits a GPU has and the host does not (shared memory, push constants, bindings)


class NumpyBuffer(Buffer):
    def __init__(self, backend: Backend, size: int, usage: Usage):
        super().__init__(backend, size, usage)
        self.data = np.zeros(size, np.uint8)


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
                steps.append((_copy, (op,)))
            else:
                names = [b.name for b in op.pipeline.bindings]
                views = {
                    name: t.buffer.data[t.offset : t.offset + t.nbytes].view(host_dtype(t.dtype))
                    for name, t in zip(names, op.tensors, strict=True)
                }
                steps.append((REFERENCE[op.pipeline.spec.name], (views, op.params, op.pipeline.constants)))
        return steps

    def _submit(self, cmd: CommandList) -> None:
        for fn, args in cmd.prepared:
            fn(*args)

    def _wait(self) -> None:
        pass

    def _close(self) -> None:
        pass


def _copy(op: Copy) -> None:
    op.dst.data[op.dst_offset : op.dst_offset + op.size] = op.src.data[op.src_offset : op.src_offset + op.size]
