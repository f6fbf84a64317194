"""Buffers: sub-allocated from large memory blocks, reached by the host mapped or through staging.

Each buffer is one VkBuffer bound at an offset in a VkDeviceMemory block, carved first-fit
(64 MiB blocks of device memory, 4 MiB of upload/read-back memory; a buffer over half a
block gets a block of its own). Device buffers live in device-local memory; where that
memory is not host-visible (discrete GPUs) writes and reads go through a staging buffer and
a copy on the queue, otherwise (lavapipe, integrated GPUs) through the persistent mapping.
Upload and read-back buffers live in host-visible coherent memory (read-back preferring
host-cached), mapped once, so no flushes are needed.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import numpy as np
from shaderbay.backend import Backend
from shaderbay.errors import OutOfMemory
from shaderbay.resources import Buffer, Usage

from .device import Device
from .loader import check, ffi, lib, memory_barrier, new, vk

DEVICE_BLOCK = 64 << 20  # sub-allocation block for device memory
HOST_BLOCK = 4 << 20  # ... and for upload / read-back memory
STAGING_SIZE = 32 << 20  # staging buffer for device memory that is not host-visible
USAGE = (
    vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | vk.VK_BUFFER_USAGE_TRANSFER_SRC_BIT | vk.VK_BUFFER_USAGE_TRANSFER_DST_BIT
)


class Block:
    """One VkDeviceMemory allocation, carved first-fit into buffers."""

    __slots__ = ("memory", "size", "type_index", "free", "mapped", "used", "dedicated")

    def __init__(self, memory: Any, size: int, type_index: int, mapped: np.ndarray | None, dedicated: bool):
        self.memory = memory
        self.size = size
        self.type_index = type_index
        self.free: list[tuple[int, int]] = [(0, size)]  # (offset, size), sorted, coalesced
        self.mapped = mapped
        self.used = 0
        self.dedicated = dedicated  # holds one large buffer; freed with it

    def alloc(self, size: int, align: int) -> int | None:
        for i, (off, length) in enumerate(self.free):
            start = -(-off // align) * align
            if start + size <= off + length:
                pieces = []
                if start > off:
                    pieces.append((off, start - off))
                if start + size < off + length:
                    pieces.append((start + size, off + length - start - size))
                self.free[i : i + 1] = pieces
                self.used += size
                return start
        return None

    def release(self, off: int, size: int) -> None:
        self.used -= size
        free = self.free
        i = 0
        while i < len(free) and free[i][0] < off:
            i += 1
        free.insert(i, (off, size))
        # coalesce with the next, then the previous
        if i + 1 < len(free) and free[i][0] + free[i][1] == free[i + 1][0]:
            free[i] = (free[i][0], free[i][1] + free[i + 1][1])
            del free[i + 1]
        if i > 0 and free[i - 1][0] + free[i - 1][1] == free[i][0]:
            free[i - 1] = (free[i - 1][0], free[i - 1][1] + free[i][1])
            del free[i]


class VulkanBuffer(Buffer):
    def __init__(self, backend: Backend, size: int, usage: Usage):
        super().__init__(backend, size, usage)
        self.handle: Any = None  # VkBuffer
        self.block: Block | None = None
        self.block_offset = 0
        self.block_size = 0
        self.mapped: np.ndarray | None = None  # uint8 view of the persistent mapping, if host-visible


class Memory:
    """The blocks of every memory type and the buffers in them, for one backend."""

    def __init__(self, gpu: Device):
        self._gpu = gpu
        self._dev = gpu.handle
        self._blocks: dict[int, list[Block]] = {}  # memory type index -> its blocks
        # VkBuffer -> its Buffer, weakly: what refers to a buffer refers to its backend, and the
        # backend's finalizer holds this object
        self._live: dict[Any, weakref.ref[VulkanBuffer]] = {}
        self._staging: VulkanBuffer | None = None
        self._transfer: tuple[Any, Any] | None = None  # (command buffer, fence) of staging copies
        # a staging copy sees earlier submits' writes, and the host and later submits see it
        self._before = memory_barrier(
            vk.VK_ACCESS_MEMORY_WRITE_BIT, vk.VK_ACCESS_MEMORY_READ_BIT | vk.VK_ACCESS_MEMORY_WRITE_BIT
        )
        self._after = memory_barrier(
            vk.VK_ACCESS_TRANSFER_WRITE_BIT,
            vk.VK_ACCESS_MEMORY_READ_BIT | vk.VK_ACCESS_MEMORY_WRITE_BIT | vk.VK_ACCESS_HOST_READ_BIT,
        )

    def create(self, size: int, usage: Usage, owner: Backend | None) -> VulkanBuffer:
        buf = VulkanBuffer(owner, size, usage)
        info = new(
            "VkBufferCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
            size=size,
            usage=USAGE,
            sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE,
        )
        out = ffi.new("VkBuffer*")
        check(lib.vkCreateBuffer(self._dev, info, ffi.NULL, out), "vkCreateBuffer")
        buf.handle = out[0]
        try:
            req = ffi.new("VkMemoryRequirements*")
            lib.vkGetBufferMemoryRequirements(self._dev, buf.handle, req)
            self._bind(buf, int(req.size), int(req.alignment), int(req.memoryTypeBits))
        except BaseException:
            lib.vkDestroyBuffer(self._dev, buf.handle, ffi.NULL)
            raise
        self._live[buf.handle] = weakref.ref(buf)
        return buf

    def destroy(self, buf: VulkanBuffer) -> None:
        self.destroyer(buf)()
        buf.handle = None
        buf.mapped = None
        buf.block = None

    def destroyer(self, buf: VulkanBuffer) -> functools.partial[None]:
        """What destroys the buffer, without referring to it (for its finalizer)."""
        return functools.partial(self._destroy, buf.handle, buf.block, buf.block_offset, buf.block_size)

    def _destroy(self, handle: Any, block: Block, offset: int, size: int) -> None:
        if self._live.pop(handle, None) is None:  # closed meanwhile: already destroyed
            return
        lib.vkDestroyBuffer(self._dev, handle, ffi.NULL)
        block.release(offset, size)
        if block.used == 0:
            blocks = self._blocks[block.type_index]
            # keep one empty shared block of each type for reuse, release the others
            if block.dedicated or sum(1 for b in blocks if b.used == 0 and not b.dedicated) > 1:
                blocks.remove(block)
                block.mapped = None
                lib.vkFreeMemory(self._dev, block.memory, ffi.NULL)

    def write(self, buf: VulkanBuffer, offset: int, data: memoryview) -> None:
        src = np.frombuffer(data, np.uint8)
        if buf.mapped is not None:
            buf.mapped[offset : offset + len(src)] = src
            return
        staging = self._staging_buffer()
        for start in range(0, len(src), STAGING_SIZE):
            chunk = src[start : start + STAGING_SIZE]
            staging.mapped[: len(chunk)] = chunk
            self._copy(staging, buf, len(chunk), 0, offset + start)

    def read(self, buf: VulkanBuffer, offset: int, size: int) -> memoryview:
        if buf.mapped is not None:
            return memoryview(buf.mapped[offset : offset + size])
        staging = self._staging_buffer()
        out = np.empty(size, np.uint8)
        for start in range(0, size, STAGING_SIZE):
            n = min(STAGING_SIZE, size - start)
            self._copy(buf, staging, n, offset + start, 0)
            out[start : start + n] = staging.mapped[:n]
        return memoryview(out)

    def stats(self) -> dict[str, int]:
        return {
            "blocks": sum(len(b) for b in self._blocks.values()),
            "block_bytes": sum(b.size for bl in self._blocks.values() for b in bl),
            "buffers": len(self._live),
        }

    def close(self) -> None:
        """Destroy every buffer (marking it freed) and free every block; the device must be idle."""
        if self._transfer is not None:
            cmdbuf, fence = self._transfer
            lib.vkFreeCommandBuffers(self._dev, self._gpu.cmd_pool, 1, cmdbuf)
            lib.vkDestroyFence(self._dev, fence[0], ffi.NULL)
            self._transfer = None
        for handle, ref in self._live.items():
            lib.vkDestroyBuffer(self._dev, handle, ffi.NULL)
            buf = ref()
            if buf is not None:
                buf.handle = None
                buf.mapped = None
                buf.block = None
                buf.freed = True
        self._live.clear()
        self._staging = None
        for blocks in self._blocks.values():
            for block in blocks:
                block.mapped = None
                lib.vkFreeMemory(self._dev, block.memory, ffi.NULL)
        self._blocks.clear()

    # --- placing a buffer -----------------------------------------------------------------------
    def _bind(self, buf: VulkanBuffer, size: int, align: int, bits: int) -> None:
        excluded: set[int] = set()
        while True:
            type_index = self._memory_type(bits, buf.usage, excluded)
            try:
                block, off = self._suballocate(type_index, size, align, buf.usage)
                break
            except OutOfMemory:
                # e.g. the small device-local host-visible (BAR) heap is full: try the next type
                excluded.add(type_index)
                try:
                    self._memory_type(bits, buf.usage, excluded)
                except OutOfMemory:
                    raise OutOfMemory(
                        f"{self._gpu.name}: out of memory allocating a {buf.usage.value} buffer of {size} bytes "
                        f"({self._used()} bytes in use); free buffers, shorten the context or "
                        "pick a smaller model"
                    ) from None
        check(lib.vkBindBufferMemory(self._dev, buf.handle, block.memory, off), "vkBindBufferMemory")
        buf.block, buf.block_offset, buf.block_size = block, off, size
        if block.mapped is not None:
            buf.mapped = block.mapped[off : off + buf.size]

    def _used(self) -> int:
        return sum(b.used for blocks in self._blocks.values() for b in blocks)

    def _memory_type(self, bits: int, usage: Usage, excluded: set[int]) -> int:
        types = [(i, f) for i, f in enumerate(self._gpu.memory_types) if bits >> i & 1 and i not in excluded]
        host = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT

        def pick(required: int, score) -> int | None:
            ok = [(score(flags), i) for i, flags in types if flags & required == required]
            return max(ok)[1] if ok else None

        if usage is Usage.DEVICE:
            # device-local and not host-visible where the device has such memory (staging uploads),
            # else device-local and host-visible (UMA, lavapipe: written in place)
            choice = pick(
                vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT,
                lambda f: (
                    not f & vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT,
                    bool(f & vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT),
                    -bin(f).count("1"),
                ),
            )
            if choice is None:
                choice = pick(0, lambda f: 0)
        elif usage is Usage.UPLOAD:
            choice = pick(
                host,
                lambda f: (
                    bool(f & vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT),
                    not f & vk.VK_MEMORY_PROPERTY_HOST_CACHED_BIT,
                ),
            )
        else:
            choice = pick(
                host,
                lambda f: (
                    bool(f & vk.VK_MEMORY_PROPERTY_HOST_CACHED_BIT),
                    not f & vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT,
                ),
            )
        if choice is None:
            raise OutOfMemory(f"{self._gpu.name} has no memory type for {usage.value} buffers")
        return choice

    def _suballocate(self, type_index: int, size: int, align: int, usage: Usage) -> tuple[Block, int]:
        blocks = self._blocks.setdefault(type_index, [])
        block_size = DEVICE_BLOCK if usage is Usage.DEVICE else HOST_BLOCK
        dedicated = size > block_size // 2
        if dedicated:
            block_size = -(-size // 65536) * 65536
        else:
            for block in blocks:
                if not block.dedicated:
                    off = block.alloc(size, align)
                    if off is not None:
                        return block, off
        block = self._allocate_block(type_index, block_size, dedicated)
        blocks.append(block)
        off = block.alloc(size, align)
        assert off is not None
        return block, off

    def _allocate_block(self, type_index: int, size: int, dedicated: bool) -> Block:
        info = new(
            "VkMemoryAllocateInfo",
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
            allocationSize=size,
            memoryTypeIndex=type_index,
        )
        out = ffi.new("VkDeviceMemory*")
        r = lib.vkAllocateMemory(self._dev, info, ffi.NULL, out)
        if r in (vk.VK_ERROR_OUT_OF_HOST_MEMORY, vk.VK_ERROR_OUT_OF_DEVICE_MEMORY):
            raise OutOfMemory(f"vkAllocateMemory of {size} bytes failed")
        check(r, "vkAllocateMemory")
        mapped = None
        flags = self._gpu.memory_types[type_index]
        if (
            flags & vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT and flags & vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        ):  # written and read in place, no flushes
            ptr = ffi.new("void**")
            check(lib.vkMapMemory(self._dev, out[0], 0, size, 0, ptr), "vkMapMemory")
            mapped = np.frombuffer(ffi.buffer(ptr[0], size), np.uint8)
        return Block(out[0], size, type_index, mapped, dedicated)

    # --- staging ----------------------------------------------------------------------------------
    def _staging_buffer(self) -> VulkanBuffer:
        if self._staging is None:  # made on first use: UMA devices never need it
            self._transfer = self._transfer or (self._gpu.alloc_cmdbuf(), self._gpu.create_fence())
            self._staging = self.create(STAGING_SIZE, Usage.READBACK, None)
        return self._staging

    def _copy(self, src: VulkanBuffer, dst: VulkanBuffer, size: int, src_off: int, dst_off: int) -> None:
        """A synchronous buffer-to-buffer copy, ordered after earlier submits and seen by later ones."""
        cmdbuf, fence = self._transfer
        cb = cmdbuf[0]
        begin = new(  # one time: this command buffer is re-recorded for every copy
            "VkCommandBufferBeginInfo",
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
            flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
        )
        check(lib.vkBeginCommandBuffer(cb, begin), "vkBeginCommandBuffer")
        lib.vkCmdPipelineBarrier(
            cb,
            vk.VK_PIPELINE_STAGE_ALL_COMMANDS_BIT,
            vk.VK_PIPELINE_STAGE_TRANSFER_BIT,
            0,
            1,
            self._before,
            0,
            ffi.NULL,
            0,
            ffi.NULL,
        )
        region = new("VkBufferCopy", srcOffset=src_off, dstOffset=dst_off, size=size)
        lib.vkCmdCopyBuffer(cb, src.handle, dst.handle, 1, region)
        lib.vkCmdPipelineBarrier(
            cb,
            vk.VK_PIPELINE_STAGE_TRANSFER_BIT,
            vk.VK_PIPELINE_STAGE_ALL_COMMANDS_BIT | vk.VK_PIPELINE_STAGE_HOST_BIT,
            0,
            1,
            self._after,
            0,
            ffi.NULL,
            0,
            ffi.NULL,
        )
        check(lib.vkEndCommandBuffer(cb), "vkEndCommandBuffer")
        submit = new(
            "VkSubmitInfo", sType=vk.VK_STRUCTURE_TYPE_SUBMIT_INFO, commandBufferCount=1, pCommandBuffers=cmdbuf
        )
        check(lib.vkResetFences(self._dev, 1, fence), "vkResetFences")
        check(lib.vkQueueSubmit(self._gpu.queue, 1, submit, fence[0]), "vkQueueSubmit")
        self._gpu.wait_fences(1, fence)
