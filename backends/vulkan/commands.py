"""Command lists as Vulkan command buffers: recorded once, then submitted again and again.

The first submit of a CommandList records it into ONE command buffer: descriptor sets
allocated and written once, push constants fixed, and a barrier only where an op reads or
writes bytes an op since the last barrier wrote, or writes bytes one read (the hazard
tracker), on the pipeline stages of the ops on either side (compute, transfer), so that a
barrier between two dispatches never waits for copies; with timestamps on, one after every
op. Every later submit is one vkQueueSubmit with the list's own fence, preceded by the batch of
writes queued since the last submit, if any (transfers.py); `wait` waits for every fence in
flight, `wait_for` for one list's. A list collected by the garbage
collector is released by the next call into the backend once it is done: its finalizer, which
may run on any thread, only queues it (freeing a command buffer from one thread while another
waits on the queue deadlocked lavapipe).
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from typing import Any

from shaderbay.commands import CommandList, Dispatch
from shaderbay.resources import Usage
from shaderbay.trace import Tracer

from ..shaders import variants as V
from .device import Device
from .loader import check, ffi, lib, memory_barrier, new, vk
from .memory import Memory, VulkanBuffer
from .pipelines import Pipelines, VulkanPipeline
from .transfers import Batch, Transfers

Range = tuple[int, int, int]  # (id of the buffer, first byte, end byte)

# wait_for (a decode step's token) polls the fence this long before blocking on it: a thread woken
# from a blocking wait resumes slowly, and the host's next submit would wait for it
SPIN_NS = 2_000_000


class Prepared:
    """A command list's Vulkan form: one command buffer and what it needs, reusable until released."""

    __slots__ = (
        "cmdbuf_p",
        "pool",
        "fence",
        "fence_p",
        "submit_info",
        "query_pool",
        "labels",
        "pending",
        "completed",
        "barriers",
        "released",
        "variants",
    )

    def __init__(self, variants: list[str]):
        self.cmdbuf_p: Any = None  # the command buffer, as the 1-element array vkQueueSubmit takes
        self.pool: Any = None  # VkDescriptorPool
        self.fence: Any = None  # for vkQueueSubmit
        self.fence_p: Any = None  # the same, as the array the other fence calls take
        self.submit_info: Any = None
        self.query_pool: Any = None  # with timestamps: one before the first op, one after each
        self.labels: list[str] = []  # per op, for the timings
        self.pending = False
        self.completed = 0
        self.barriers = 0
        self.released = False
        self.variants = variants  # per dispatch


class CommandQueue:
    """Records, submits and waits for command lists on the device's queue, and releases them."""

    def __init__(self, gpu: Device, pipes: Pipelines, tracer: Tracer, transfers: Transfers, memory: Memory):
        self._gpu = gpu
        self._dev = gpu.handle
        self._queue = gpu.queue
        self._pipes = pipes
        self._memory = memory  # for the pipelines' working memory
        self._tracer = tracer
        self._transfers = transfers  # writes queued while lists are in flight, submitted before the next
        self._inflight: list[Prepared | Batch] = []  # in submission order
        self._collected: deque[Prepared] = deque()  # queued by finalizers (any thread), released by sweep
        self._preps: set[Prepared] = set()
        written = vk.VK_ACCESS_SHADER_WRITE_BIT | vk.VK_ACCESS_TRANSFER_WRITE_BIT
        # between dependent ops of a list, on the stages the two sides run in (a transfer stage in a
        # barrier between two dispatches would make the device wait for copies there are none of)
        self._barriers = {
            (src_compute, src_copy, dst_copy): _barrier(src_compute, src_copy, dst_copy)
            for src_compute in (False, True)
            for src_copy in (False, True)
            for dst_copy in (False, True)
            if src_compute or src_copy
        }
        # from earlier submits, and to the host and later submits
        memory = vk.VK_ACCESS_MEMORY_READ_BIT | vk.VK_ACCESS_MEMORY_WRITE_BIT
        self._barrier_in = memory_barrier(vk.VK_ACCESS_MEMORY_WRITE_BIT, memory)
        self._barrier_out = memory_barrier(written, vk.VK_ACCESS_HOST_READ_BIT | vk.VK_ACCESS_HOST_WRITE_BIT)

    # --- recording --------------------------------------------------------------------------------
    def prepare(self, cmd: CommandList, timestamps: bool) -> Prepared:
        self.sweep()
        plan: list[tuple] = []  # (op, variant, VkPipeline, grid, working memory); variant None for a copy
        variants: list[str] = []
        env = V.selection_env()
        for op in cmd.ops:
            if isinstance(op, Dispatch):
                variant, handle, grid = self._pipes.choose(op.pipeline, op, env)  # type: ignore[arg-type]
                scratch = None
                if op.pipeline.working:  # type: ignore[attr-defined]
                    words = variant.scratch(op.params) if variant.scratch is not None else 1
                    scratch = self._working_memory(op.pipeline, words)  # type: ignore[arg-type]
                plan.append((op, variant, handle, grid, scratch))
                variants.append(variant.name)
            else:
                plan.append((op, None, None, None, None))
        prep = Prepared(variants)
        try:
            self._record(prep, plan, timestamps)
        except BaseException:
            self.release(prep)
            raise
        self._preps.add(prep)
        # not at exit, when the list may still be in use (a daemon thread); closing releases it
        weakref.finalize(cmd, self._collected.append, prep).atexit = False
        return prep

    def _working_memory(self, pipe: VulkanPipeline, words: int) -> VulkanBuffer:
        """The pipeline's working memory, of at least `words` u32, zeros when new. A smaller one is
        replaced, not freed: lists recorded with it may run again (Memory.close frees it)."""
        buf = pipe.scratch
        if buf is None or buf.size < 4 * words:
            buf = self._memory.create(4 * words, Usage.DEVICE, None)
            self._memory.write(buf, 0, memoryview(bytes(4 * words)))
            pipe.scratch = buf
        return buf

    def _record(self, prep: Prepared, plan: list[tuple], timestamps: bool) -> None:
        dev = self._dev
        dispatches = [(op, scratch) for op, variant, _, _, scratch in plan if variant is not None]
        sets = self._descriptor_sets(prep, dispatches) if dispatches else None
        n_ops = len(plan)
        if timestamps and n_ops:
            qinfo = new(
                "VkQueryPoolCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                queryType=vk.VK_QUERY_TYPE_TIMESTAMP,
                queryCount=n_ops + 1,
            )
            qp = ffi.new("VkQueryPool*")
            check(lib.vkCreateQueryPool(dev, qinfo, ffi.NULL, qp), "vkCreateQueryPool")
            prep.query_pool = qp[0]
        prep.cmdbuf_p = self._gpu.alloc_cmdbuf()
        cb = prep.cmdbuf_p[0]
        prep.fence_p = self._gpu.create_fence()
        prep.fence = prep.fence_p[0]
        # every push-constant byte in one C array (vkCmdPushConstants copies them while recording)
        push = ffi.new("char[]", b"".join(op.param_bytes for op, _ in dispatches) or b"\0")
        begin = new("VkCommandBufferBeginInfo", sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, flags=0)
        check(lib.vkBeginCommandBuffer(cb, begin), "vkBeginCommandBuffer")  # no ONE_TIME_SUBMIT: it is replayed
        qp = prep.query_pool
        if qp is not None:
            lib.vkCmdResetQueryPool(cb, qp, 0, n_ops + 1)
        stages = vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | vk.VK_PIPELINE_STAGE_TRANSFER_BIT
        # earlier submits' writes (any stage) become visible to this list
        lib.vkCmdPipelineBarrier(
            cb, vk.VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, stages, 0, 1, self._barrier_in, 0, ffi.NULL, 0, ffi.NULL
        )
        if qp is not None:
            lib.vkCmdWriteTimestamp(cb, vk.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, qp, 0)
        barriers = self._barriers
        bind_pipeline = lib.vkCmdBindPipeline
        bind_sets = lib.vkCmdBindDescriptorSets
        push_constants = lib.vkCmdPushConstants
        dispatch = lib.vkCmdDispatch
        # what ops did since the last barrier towards dispatches (False) and towards copies (True)
        pending = {False: _Pending(), True: _Pending()}
        current = None
        j = 0
        pc_off = 0
        labels = prep.labels
        region = new("VkBufferCopy")
        for i, (op, variant, handle, grid, scratch) in enumerate(plan):
            if variant is not None:
                reads, writes = _ranges(op)
                if variant.scratch is not None:
                    reads.append((id(scratch), 0, scratch.size))
                    writes.append((id(scratch), 0, scratch.size))
            else:
                reads = [(id(op.src), op.src_offset, op.src_offset + op.size)]
                writes = [(id(op.dst), op.dst_offset, op.dst_offset + op.size)]
            is_copy = variant is None
            since = pending[is_copy]
            if since.conflicts(reads, writes):
                src, dst, barrier = barriers[(since.computed, since.copied, is_copy)]
                lib.vkCmdPipelineBarrier(cb, src, dst, 0, 1, barrier, 0, ffi.NULL, 0, ffi.NULL)
                prep.barriers += 1
                pending[is_copy] = _Pending()
            for p in pending.values():
                p.add(reads, writes, is_copy)
            if variant is not None:
                pipe = op.pipeline
                if handle != current:
                    bind_pipeline(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, handle)
                    current = handle
                bind_sets(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe.layout, 0, 1, sets + j, 0, ffi.NULL)
                if pipe.push_size:
                    push_constants(cb, pipe.layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, pipe.push_size, push + pc_off)
                    pc_off += pipe.push_size
                dispatch(cb, grid[0], grid[1], grid[2])
                j += 1
                labels.append(op.label)
            else:
                region.srcOffset, region.dstOffset, region.size = op.src_offset, op.dst_offset, op.size
                lib.vkCmdCopyBuffer(cb, op.src.handle, op.dst.handle, 1, region)
                labels.append("copy")
            if qp is not None:
                lib.vkCmdWriteTimestamp(cb, vk.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, qp, i + 1)
        # make every write available to the host (and to later submits)
        after = vk.VK_PIPELINE_STAGE_HOST_BIT | vk.VK_PIPELINE_STAGE_ALL_COMMANDS_BIT
        lib.vkCmdPipelineBarrier(cb, stages, after, 0, 1, self._barrier_out, 0, ffi.NULL, 0, ffi.NULL)
        check(lib.vkEndCommandBuffer(cb), "vkEndCommandBuffer")
        prep.submit_info = new(
            "VkSubmitInfo",
            sType=vk.VK_STRUCTURE_TYPE_SUBMIT_INFO,
            commandBufferCount=1,
            pCommandBuffers=prep.cmdbuf_p,
        )

    def _descriptor_sets(self, prep: Prepared, dispatches: list[tuple[Dispatch, Any]]) -> Any:
        """One descriptor set per dispatch (and its pipeline's working memory, if any), from a pool of
        the list's own, written once."""
        dev = self._dev
        n_sets = len(dispatches)
        n_desc = sum(len(op.tensors) + (scratch is not None) for op, scratch in dispatches)
        size = new("VkDescriptorPoolSize", type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=max(n_desc, 1))
        pool_info = new(
            "VkDescriptorPoolCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
            maxSets=n_sets,
            poolSizeCount=1,
            pPoolSizes=size,
        )
        pool = ffi.new("VkDescriptorPool*")
        check(lib.vkCreateDescriptorPool(dev, pool_info, ffi.NULL, pool), "vkCreateDescriptorPool")
        prep.pool = pool[0]
        layouts = ffi.new("VkDescriptorSetLayout[]", [op.pipeline.set_layout for op, _ in dispatches])
        sets = ffi.new("VkDescriptorSet[]", n_sets)
        alloc = new(
            "VkDescriptorSetAllocateInfo",
            sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
            descriptorPool=prep.pool,
            descriptorSetCount=n_sets,
            pSetLayouts=layouts,
        )
        check(lib.vkAllocateDescriptorSets(dev, alloc, sets), "vkAllocateDescriptorSets")
        infos = ffi.new("VkDescriptorBufferInfo[]", max(n_desc, 1))
        writes = ffi.new("VkWriteDescriptorSet[]", n_sets)
        k = 0
        for j, (op, scratch) in enumerate(dispatches):
            w = writes[j]
            w.sType = vk.VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET
            w.dstSet = sets[j]
            w.dstBinding = 0
            w.descriptorCount = len(op.tensors) + (scratch is not None)  # consecutive bindings from 0
            w.descriptorType = vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
            w.pBufferInfo = infos + k
            for t in op.tensors:
                info = infos[k]
                info.buffer = t.buffer.handle
                info.offset = t.offset
                # real sizes (VK_WHOLE_SIZE overflows in cffi: PLATFORM.md): whole words, within the buffer
                info.range = max(4, min(-(-t.nbytes // 4) * 4, t.buffer.size - t.offset))
                k += 1
            if scratch is not None:
                info = infos[k]
                info.buffer, info.offset, info.range = scratch.handle, 0, scratch.size
                k += 1
        lib.vkUpdateDescriptorSets(dev, n_sets, writes, 0, ffi.NULL)
        return sets

    # --- submitting and waiting -------------------------------------------------------------------
    def busy(self) -> bool:
        """Whether anything is submitted and not yet waited for, or writes are queued for the next submit."""
        return bool(self._inflight) or self._transfers.open

    def submit(self, prep: Prepared) -> None:
        if prep.pending:
            self.wait()  # a command buffer is not submitted again while it runs
        self._flush()
        self._push(prep)

    def _flush(self) -> None:
        """Submit the writes queued since the last submit, if any: they come before what follows."""
        batch = self._transfers.end()
        if batch is not None:
            self._push(batch)

    def _push(self, item: Prepared | Batch) -> None:
        r = lib.vkResetFences(self._dev, 1, item.fence_p)
        if r:
            check(r, "vkResetFences")
        r = lib.vkQueueSubmit(self._queue, 1, item.submit_info, item.fence)
        if r:
            check(r, "vkQueueSubmit")
        item.pending = True
        self._inflight.append(item)

    def wait(self) -> None:
        """Wait for everything submitted and every queued write (returns at once when there is nothing)."""
        self._flush()
        inflight = self._inflight
        if not inflight:
            return
        if len(inflight) == 1:
            self._gpu.wait_fences(1, inflight[0].fence_p)
        else:
            self._gpu.wait_fences(len(inflight), ffi.new("VkFence[]", [p.fence for p in inflight]))
        done = list(inflight)
        inflight.clear()
        self._finished(done)

    def wait_for(self, prep: Prepared) -> None:
        """Wait for the last submit of one list. Every list starts with a barrier on all earlier
        work, so the lists and queued writes submitted before it are done too."""
        if not prep.pending:
            return
        status, dev, fence, now = lib.vkGetFenceStatus, self._dev, prep.fence, time.perf_counter_ns
        deadline = now() + SPIN_NS
        while status(dev, fence) and now() < deadline:  # VK_NOT_READY until signalled (VK_SUCCESS, 0)
            pass
        self._gpu.wait_fences(1, prep.fence_p)  # at once when signalled; errors and timeouts raise here
        at = self._inflight.index(prep) + 1
        done = self._inflight[:at]
        del self._inflight[:at]
        self._finished(done)

    def _finished(self, done: list[Prepared | Batch]) -> None:
        for p in done:
            p.pending = False
            p.completed += 1
        if self._tracer.enabled:
            for p in done:
                if p.query_pool is not None:
                    self._tracer.add_gpu(self.timings(p))
        if self._collected:
            self.sweep()

    def timings(self, prep: Prepared) -> list[tuple[str, float]]:
        """(label, GPU ns) per op of the last completed submit of a timed list."""
        n = len(prep.labels) + 1
        data = ffi.new("uint64_t[]", n)
        flags = vk.VK_QUERY_RESULT_64_BIT | vk.VK_QUERY_RESULT_WAIT_BIT
        r = lib.vkGetQueryPoolResults(self._dev, prep.query_pool, 0, n, 8 * n, data, 8, flags)
        check(r, "vkGetQueryPoolResults")
        bits, period = self._gpu.ts_bits, self._gpu.ts_period
        mask = (1 << bits) - 1 if bits < 64 else (1 << 64) - 1
        ts = [int(data[i]) & mask for i in range(n)]
        return [(label, ((ts[i + 1] - ts[i]) & mask) * period) for i, label in enumerate(prep.labels)]

    # --- releasing --------------------------------------------------------------------------------
    def sweep(self) -> None:
        """Release the collected lists that are no longer running (called under the backend's lock)."""
        collected = self._collected
        for _ in range(len(collected)):
            prep = collected.popleft()
            if prep.pending:
                collected.append(prep)
            else:
                self.release(prep)

    def release(self, prep: Prepared) -> None:
        if prep.released:
            return
        prep.released = True
        dev = self._dev
        if prep.cmdbuf_p is not None:
            lib.vkFreeCommandBuffers(dev, self._gpu.cmd_pool, 1, prep.cmdbuf_p)
        if prep.pool is not None:
            lib.vkDestroyDescriptorPool(dev, prep.pool, ffi.NULL)
        if prep.query_pool is not None:
            lib.vkDestroyQueryPool(dev, prep.query_pool, ffi.NULL)
        if prep.fence is not None:
            lib.vkDestroyFence(dev, prep.fence, ffi.NULL)
        self._preps.discard(prep)

    def close(self) -> None:
        """Wait for the device to idle and release every prepared list."""
        lib.vkDeviceWaitIdle(self._dev)
        self._inflight.clear()
        self._collected.clear()
        for prep in list(self._preps):
            prep.pending = False
            self.release(prep)


class _Pending:
    """Accesses since the last barrier towards one kind of op: a barrier towards dispatches (the
    compute stage) does not make writes visible to a later copy (the transfer stage)."""

    __slots__ = ("written", "read", "computed", "copied")

    def __init__(self) -> None:
        self.written: list[Range] = []
        self.read: list[Range] = []
        self.computed = False  # a dispatch among them
        self.copied = False  # a copy among them

    def conflicts(self, reads: list[Range], writes: list[Range]) -> bool:
        return _overlaps(self.written, reads) or _overlaps(self.written, writes) or _overlaps(self.read, writes)

    def add(self, reads: list[Range], writes: list[Range], is_copy: bool) -> None:
        self.written += writes
        self.read += reads
        self.copied |= is_copy
        self.computed |= not is_copy


def _barrier(src_compute: bool, src_copy: bool, dst_copy: bool) -> tuple[int, int, Any]:
    """(source stages, destination stages, VkMemoryBarrier) from earlier dispatches and/or copies to a
    dispatch or a copy."""
    compute, transfer = vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, vk.VK_PIPELINE_STAGE_TRANSFER_BIT
    src_stage = (compute if src_compute else 0) | (transfer if src_copy else 0)
    src_access = (vk.VK_ACCESS_SHADER_WRITE_BIT if src_compute else 0) | (
        vk.VK_ACCESS_TRANSFER_WRITE_BIT if src_copy else 0
    )
    if dst_copy:
        dst_access = vk.VK_ACCESS_TRANSFER_READ_BIT | vk.VK_ACCESS_TRANSFER_WRITE_BIT
        return src_stage, transfer, memory_barrier(src_access, dst_access)
    dst_access = vk.VK_ACCESS_SHADER_READ_BIT | vk.VK_ACCESS_SHADER_WRITE_BIT
    return src_stage, compute, memory_barrier(src_access, dst_access)


def _ranges(op: Dispatch) -> tuple[list[Range], list[Range]]:
    """The byte ranges a dispatch reads and writes."""
    reads, writes = [], []
    for (reading, writing), t, (first, end) in zip(op.pipeline.access, op.tensors, op.spans, strict=True):
        r = (id(t.buffer), first, end)
        if reading:
            reads.append(r)
        if writing:
            writes.append(r)
    return reads, writes


def _overlaps(done: list[Range], new: list[Range]) -> bool:
    for key, s, e in new:
        for k2, s2, e2 in done:
            if key == k2 and s < e2 and s2 < e:
                return True
    return False
