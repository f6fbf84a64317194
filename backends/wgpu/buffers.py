"""Buffers: storage buffers written through the queue and read back through a kept staging buffer.

Read-back buffers (Usage.READBACK) are MAP_READ buffers mapped directly: no staging copy, and
no wait for submits after the one that fills them.
"""

from __future__ import annotations

from typing import Any

from shaderbay.backend import Backend
from shaderbay.errors import LimitExceeded, OutOfMemory
from shaderbay.resources import Buffer, Usage

from .loader import wgpu

STAGING_KEEP = 4 << 20  # the read-back staging buffer kept between reads
CHUNK = 64 << 20  # reads and writes larger than this go in pieces


class WgpuBuffer(Buffer):
    def __init__(self, backend: Backend, size: int, usage: Usage, gpu: Any):
        super().__init__(backend, size, usage)
        self.gpu = gpu


class Buffers:
    """Creates, writes, reads and frees one backend's buffers; `encoder` does the read-backs."""

    def __init__(self, owner: Backend, device: Any, encoder: Any):
        self.owner = owner
        self.device = device
        self.queue = device.queue
        self.encoder = encoder
        self._staging: Any = None

    def create(self, size: int, usage: Usage) -> WgpuBuffer:
        U = wgpu.BufferUsage
        flags = U.MAP_READ | U.COPY_DST if usage is Usage.READBACK else U.STORAGE | U.COPY_SRC | U.COPY_DST
        try:
            gpu = self.device.create_buffer(size=size, usage=flags)
        except wgpu.GPUOutOfMemoryError as exc:
            raise OutOfMemory(
                f"{self.owner.caps.device} could not allocate {size} bytes ({self.owner.bytes_allocated} in use): "
                "free buffers, shorten the context or pick a smaller model"
            ) from exc
        except wgpu.GPUError as exc:
            raise LimitExceeded(f"wgpu refused a buffer of {size} bytes: {exc}") from exc
        return WgpuBuffer(self.owner, size, usage, gpu)

    def write(self, buffer: WgpuBuffer, offset: int, data: memoryview) -> None:
        # queue.write_buffer is ordered with submits and does not wait for them, as Backend.write promises
        for start in range(0, data.nbytes, CHUNK):
            self.queue.write_buffer(buffer.gpu, offset + start, data[start : start + CHUNK])

    def read(self, buffer: WgpuBuffer, offset: int, size: int) -> bytes | memoryview:
        if size == 0:
            return b""
        if buffer.usage is Usage.READBACK:
            return memoryview(self.encoder.map_read(buffer.gpu, buffer.size))[offset : offset + size]
        begin = offset // 4 * 4  # copies move whole 4-byte words
        end = -(-(offset + size) // 4) * 4
        skip = offset - begin
        if end - begin <= CHUNK:
            data = self._read_piece(buffer.gpu, begin, end - begin)
            return data if skip == 0 and len(data) == size else memoryview(data)[skip : skip + size]
        out = bytearray(end - begin)
        for start in range(begin, end, CHUNK):
            n = min(CHUNK, end - start)
            out[start - begin : start - begin + n] = self._read_piece(buffer.gpu, start, n)
        return memoryview(out)[skip : skip + size]

    def _read_piece(self, gpu: Any, offset: int, n: int) -> bytes:
        U = wgpu.BufferUsage
        if n <= STAGING_KEEP:
            if self._staging is None:
                self._staging = self.device.create_buffer(size=STAGING_KEEP, usage=U.MAP_READ | U.COPY_DST)
            staging = self._staging
        else:
            staging = self.device.create_buffer(size=n, usage=U.MAP_READ | U.COPY_DST)
        try:
            return self.encoder.read(gpu, offset, staging, n)
        finally:
            if staging is not self._staging:
                staging.destroy()

    @staticmethod
    def free(buffer: WgpuBuffer) -> None:
        buffer.gpu.destroy()
        buffer.gpu = None

    def close(self) -> None:
        self._staging = None
