"""Small writes in submission order: vkCmdUpdateBuffer into a transfer command buffer, no host wait.

`Backend.write` promises that a write is seen by every list submitted after it and by none submitted
before it. Writing in place (or through staging) keeps that only by first waiting for the lists in
flight, which stalls a run-ahead decode: the engine writes a block-table row (a few bytes) nearly
every step while the next step runs. So while the queue is busy, a write of at most MAX_UPDATE bytes
is recorded into the open batch, a command buffer the queue submits before the next list (or wait).

A batch starts with a barrier after all earlier work (what earlier lists read or wrote of the bytes
comes first) and ends with one making its updates visible to later dispatches, copies and the host,
as every list does (commands.py). Two updates of overlapping bytes in one batch get a transfer
barrier between them. A batch's command buffer and fence are reused once the queue has retired it.
"""

from __future__ import annotations

from .device import Device
from .loader import check, ffi, lib, memory_barrier, new, vk
from .memory import VulkanBuffer

MAX_UPDATE = 65536  # bytes one vkCmdUpdateBuffer may write

_TRANSFER = vk.VK_PIPELINE_STAGE_TRANSFER_BIT


class Batch:
    """One transfer command buffer and its fence; the queue holds it in flight like a list's Prepared."""

    __slots__ = ("cmdbuf_p", "fence", "fence_p", "submit_info", "pending", "completed", "written")
    query_pool = None  # never timed

    def __init__(self, gpu: Device):
        self.cmdbuf_p = gpu.alloc_cmdbuf()
        self.fence_p = gpu.create_fence()
        self.fence = self.fence_p[0]
        self.submit_info = new(
            "VkSubmitInfo", sType=vk.VK_STRUCTURE_TYPE_SUBMIT_INFO, commandBufferCount=1, pCommandBuffers=self.cmdbuf_p
        )
        self.pending = False  # submitted and not yet retired by a wait
        self.completed = 0
        self.written: list[tuple[int, int, int]] = []  # (buffer id, first byte, end byte) since the last barrier


class Transfers:
    """The batches of queued writes of one device: the open one, and those to reuse."""

    def __init__(self, gpu: Device):
        self._gpu = gpu
        self._batches: list[Batch] = []  # every batch made; as many as were ever in flight at once
        self._open: Batch | None = None
        self.updates = 0  # writes queued so far
        memory = vk.VK_ACCESS_MEMORY_READ_BIT | vk.VK_ACCESS_MEMORY_WRITE_BIT
        self._barrier_in = memory_barrier(vk.VK_ACCESS_MEMORY_WRITE_BIT, vk.VK_ACCESS_TRANSFER_WRITE_BIT)
        self._barrier_between = memory_barrier(vk.VK_ACCESS_TRANSFER_WRITE_BIT, vk.VK_ACCESS_TRANSFER_WRITE_BIT)
        self._barrier_out = memory_barrier(vk.VK_ACCESS_TRANSFER_WRITE_BIT, memory | vk.VK_ACCESS_HOST_READ_BIT)
        self._begin_info = new(
            "VkCommandBufferBeginInfo",
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
            flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,  # re-recorded for every batch
        )

    @property
    def open(self) -> bool:
        """Whether writes are recorded and not yet submitted."""
        return self._open is not None

    @property
    def batches(self) -> int:
        """Transfer command buffers made so far (they are reused: this stays small)."""
        return len(self._batches)

    def update(self, buf: VulkanBuffer, offset: int, data: memoryview) -> None:
        """Queue a write of 4 to MAX_UPDATE bytes (a multiple of 4, at a multiple of 4)."""
        batch = self._open or self._begin()
        cb = batch.cmdbuf_p[0]
        key, end = id(buf), offset + data.nbytes
        if any(k == key and s < end and offset < e for k, s, e in batch.written):
            lib.vkCmdPipelineBarrier(cb, _TRANSFER, _TRANSFER, 0, 1, self._barrier_between, 0, ffi.NULL, 0, ffi.NULL)
            batch.written.clear()
        batch.written.append((key, offset, end))
        lib.vkCmdUpdateBuffer(cb, buf.handle, offset, data.nbytes, ffi.from_buffer(data))  # copied at record time
        self.updates += 1

    def end(self) -> Batch | None:
        """Close the open batch for the queue to submit; None when there is none."""
        batch = self._open
        if batch is None:
            return None
        self._open = None
        cb = batch.cmdbuf_p[0]
        after = vk.VK_PIPELINE_STAGE_ALL_COMMANDS_BIT | vk.VK_PIPELINE_STAGE_HOST_BIT
        lib.vkCmdPipelineBarrier(cb, _TRANSFER, after, 0, 1, self._barrier_out, 0, ffi.NULL, 0, ffi.NULL)
        check(lib.vkEndCommandBuffer(cb), "vkEndCommandBuffer")
        return batch

    def _begin(self) -> Batch:
        batch = next((b for b in self._batches if not b.pending), None)
        if batch is None:
            batch = Batch(self._gpu)
            self._batches.append(batch)
        cb = batch.cmdbuf_p[0]
        check(lib.vkBeginCommandBuffer(cb, self._begin_info), "vkBeginCommandBuffer")  # resets it
        lib.vkCmdPipelineBarrier(
            cb, vk.VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, _TRANSFER, 0, 1, self._barrier_in, 0, ffi.NULL, 0, ffi.NULL
        )
        batch.written.clear()
        self._open = batch
        return batch

    def close(self) -> None:
        """Free every batch's command buffer and fence; the device must be idle."""
        dev = self._gpu.handle
        for batch in self._batches:
            lib.vkFreeCommandBuffers(dev, self._gpu.cmd_pool, 1, batch.cmdbuf_p)
            lib.vkDestroyFence(dev, batch.fence, ffi.NULL)
        self._batches.clear()
        self._open = None
