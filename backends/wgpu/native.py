"""The native fast path: wgpu-native's C functions, through wgpu-py's own cffi binding.

wgpu-py's wrappers cost ~3x the C calls themselves (per-call error capture, descriptor
structs built per call, a poll thread for every map). `NativeEncoder` makes the same calls
with descriptors made once; it is the default encoder (SHADERBAY_WGPU_ENCODER=python
picks commands.PythonEncoder, its reference in wgpu-py's public API). Encoding errors still
surface: wgpu reports them at finish, which goes through `libf` (loader.py).
"""

from __future__ import annotations

from typing import Any

from shaderbay.errors import OutOfMemory

from .loader import ffi, handle, lib, libf

NULL = ffi.NULL
MAX_POLLS = 100_000_000  # a map that never completes raises instead of spinning forever


class NativeEncoder:
    """Encode, submit, wait for and read back through wgpu-native's C functions.

    The pass calls take the pass first and C handles: `set_bind_group(pass, 0, group, 0, NULL)`,
    `set_immediates(pass, 0, data, size)`, as commands.encode calls them.
    """

    name = "ffi"
    null = NULL
    set_pipeline = lib.wgpuComputePassEncoderSetPipeline
    set_bind_group = lib.wgpuComputePassEncoderSetBindGroup
    set_immediates = lib.wgpuComputePassEncoderSetImmediates
    dispatch = lib.wgpuComputePassEncoderDispatchWorkgroups

    def __init__(self, device: Any):
        self.device = handle(device)
        self.queue = handle(device.queue)
        self.enc_desc = ffi.new("WGPUCommandEncoderDescriptor *")
        self.pass_desc = ffi.new("WGPUComputePassDescriptor *")
        self.cb_desc = ffi.new("WGPUCommandBufferDescriptor *")
        self.cbs = ffi.new("WGPUCommandBuffer[1]")
        self.index = ffi.new("WGPUSubmissionIndex *")
        self.map_status = [0]

        @ffi.callback("void(WGPUMapAsyncStatus, WGPUStringView, void *, void *)")
        def mapped(status, message, _u1, _u2):
            self.map_status[0] = int(status)

        self._mapped = mapped  # the callback lives as long as this object
        self.map_info = ffi.new(
            "WGPUBufferMapCallbackInfo *", {"mode": lib.WGPUCallbackMode_AllowProcessEvents, "callback": mapped}
        )

    # --- what a prepared dispatch holds ---------------------------------------------------------
    @staticmethod
    def pipeline(pipeline: Any) -> Any:
        return handle(pipeline)

    @staticmethod
    def bind_group(group: Any) -> Any:
        return handle(group)

    @staticmethod
    def immediates(data: bytes, keep: list) -> Any:
        cdata = ffi.from_buffer(data)
        keep.append(cdata)  # the C pointer is valid while this lives
        return cdata

    # --- encoding -------------------------------------------------------------------------------
    def begin(self) -> Any:
        return lib.wgpuDeviceCreateCommandEncoder(self.device, self.enc_desc)

    def begin_pass(self, encoder: Any) -> Any:
        return lib.wgpuCommandEncoderBeginComputePass(encoder, self.pass_desc)

    @staticmethod
    def end_pass(compute_pass: Any) -> None:
        lib.wgpuComputePassEncoderEnd(compute_pass)
        lib.wgpuComputePassEncoderRelease(compute_pass)

    @staticmethod
    def write_timestamp(compute_pass: Any, query_set: Any, index: int) -> None:
        lib.wgpuComputePassEncoderWriteTimestamp(compute_pass, handle(query_set), index)

    @staticmethod
    def copy(encoder: Any, src: Any, src_offset: int, dst: Any, dst_offset: int, size: int) -> None:
        lib.wgpuCommandEncoderCopyBufferToBuffer(encoder, handle(src), src_offset, handle(dst), dst_offset, size)

    @staticmethod
    def resolve(encoder: Any, query_set: Any, count: int, dst: Any, dst_offset: int) -> None:
        lib.wgpuCommandEncoderResolveQuerySet(encoder, handle(query_set), 0, count, handle(dst), dst_offset)

    @staticmethod
    def abort(encoder: Any) -> None:
        lib.wgpuCommandEncoderRelease(encoder)

    # --- submitting and waiting ------------------------------------------------------------------
    def finish(self, encoder: Any) -> Any:
        """The command buffer (raising wgpu's validation errors); the encoder is released."""
        try:
            return libf.wgpuCommandEncoderFinish(encoder, self.cb_desc)
        finally:
            lib.wgpuCommandEncoderRelease(encoder)

    def submit_finished(self, command_buffer: Any) -> int:
        """Submit once and release the command buffer at once (wgpu aborts on a second submit of one);
        the submission's index."""
        self.cbs[0] = command_buffer
        try:
            return int(libf.wgpuQueueSubmitForIndex(self.queue, 1, self.cbs))
        finally:
            self.cbs[0] = NULL
            lib.wgpuCommandBufferRelease(command_buffer)

    def submit(self, encoder: Any) -> int:
        return self.submit_finished(self.finish(encoder))

    def wait_for(self, submission: int) -> None:
        """Block until one submission is done (later ones may still run)."""
        self.index[0] = submission
        lib.wgpuDevicePoll(self.device, True, self.index)

    def wait_idle(self) -> None:
        lib.wgpuDevicePoll(self.device, True, NULL)

    # --- reading back ---------------------------------------------------------------------------
    def read(self, src: Any, offset: int, staging: Any, n: int) -> bytes:
        """Copy n bytes of src (a wgpu-py buffer) through a MAP_READ staging buffer."""
        encoder = self.begin()
        lib.wgpuCommandEncoderCopyBufferToBuffer(encoder, handle(src), offset, handle(staging), 0, n)
        self.submit(encoder)
        return self.map_read(staging, n, wait_idle=True)

    def map_read(self, buffer: Any, n: int, wait_idle: bool = False) -> bytes:
        """The first n bytes of a MAP_READ buffer (a wgpu-py buffer), once the submits that use it are done.

        wgpu maps a buffer only after every submit that touches it; a poll that waits returns once
        the whole queue is idle, so without `wait_idle` the poll does not block and the host reads a
        step's token while later steps still run.
        """
        buf = handle(buffer)
        self.map_status[0] = -1
        lib.wgpuBufferMapAsync(buf, lib.WGPUMapMode_Read, 0, n, self.map_info[0])
        polls = 0
        while self.map_status[0] == -1 and polls < MAX_POLLS:
            lib.wgpuDevicePoll(self.device, wait_idle, NULL)
            polls += 1
        if self.map_status[0] != lib.WGPUMapAsyncStatus_Success:
            raise OutOfMemory(f"mapping a {n}-byte read-back buffer failed (status {self.map_status[0]})")
        try:
            # (wgpuBufferReadMappedRange would be neater, but wgpu-native 29 panics "not implemented")
            ptr = lib.wgpuBufferGetConstMappedRange(buf, 0, n)
            if ptr == NULL:
                raise OutOfMemory(f"mapping a {n}-byte read-back buffer gave no memory")
            return bytes(ffi.buffer(ptr, n))
        finally:
            lib.wgpuBufferUnmap(buf)
