"""The raw Vulkan backend, through the `vulkan` package (cffi): record once, replay per token.

The shared GLSL kernels (shaderbay.backends.shaders) run from their shipped SPIR-V. A
command list is recorded into one Vulkan command buffer the first time it is submitted and
re-submitted with one `vkQueueSubmit` ever after, so the host's work per token is one
submit and, a step behind, one fence wait (polled for up to 2 ms before it blocks) and a
4-byte read of a token. Hot paths call `vk.lib` directly with prebuilt cffi objects. A write
is ordered with submits without waiting: while lists are in flight, a small one is queued
(transfers.py); otherwise, or when large, it waits for the queue and writes in place or through
staging.

The modules, in reading order:
  loader.py     the `vulkan` package, error checks, struct helpers
  device.py     instance, validation messenger, device choice, logical device and queue, Caps
  coopmat.py    VK_KHR_cooperative_matrix: the feature to enable, the shapes for Caps
  statistics.py what the driver made of each pipeline (registers, shared memory), on request
  memory.py     memory blocks, sub-allocation, staging, VulkanBuffer
  pipelines.py  layouts, shader modules, variant choice, the pipeline cache, VulkanPipeline
  transfers.py  small writes queued in submission order while lists run (vkCmdUpdateBuffer)
  commands.py   recording a command list (with its barriers and timestamps), submit, wait, release
  backend.py    VulkanBackend, which wires them to the core interface, and `create`

Environment:
  SHADERBAY_VULKAN_DEVICE      device by index (enumeration order) or by name substring
  SHADERBAY_VULKAN_VALIDATE=1  enable VK_LAYER_KHRONOS_validation (with synchronization
                               validation) and collect its messages in
                               `backend.validation_messages`
  SHADERBAY_VULKAN_TIMESTAMPS=1 time every dispatch on the GPU (also on while the tracer is)
  SHADERBAY_VULKAN_STATS=1     print each pipeline's statistics (registers, ...) as it is created,
                               where the driver lists VK_KHR_pipeline_executable_properties
  SHADERBAY_CACHE              directory of the pipeline cache (see shaderbay.config.cache_dir)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shaderbay.backend import Backend
from shaderbay.commands import CommandList
from shaderbay.config import env_flag
from shaderbay.errors import BackendUnavailable, ShaderbayError
from shaderbay.kernels import KernelSpec
from shaderbay.resources import Buffer, Usage

from ..shaders import variants as V
from .commands import CommandQueue, Prepared
from .device import ENV_DEVICE, ENV_VALIDATE, Device
from .memory import Memory, VulkanBuffer
from .pipelines import Pipelines, VulkanPipeline
from .transfers import MAX_UPDATE, Transfers

ENV_TIMESTAMPS = "SHADERBAY_VULKAN_TIMESTAMPS"


class VulkanBackend(Backend):
    name = "vulkan"

    def __init__(self, device: str | int | None = None, validate: bool | None = None, timestamps: bool | None = None):
        super().__init__()
        self.timestamps = env_flag(ENV_TIMESTAMPS) if timestamps is None else timestamps
        self.gpu = Device(
            os.environ.get(ENV_DEVICE) if device is None else device,
            env_flag(ENV_VALIDATE) if validate is None else validate,
        )
        try:
            self._pipes = Pipelines(self.gpu, self.tracer)
        except BaseException:
            self.gpu.close()
            raise
        self.caps = self.gpu.caps
        self.device_index = self.gpu.index
        self.validation = self.gpu.validation
        self.validation_messages = self.gpu.messages
        self._memory = Memory(self.gpu)
        self._transfers = Transfers(self.gpu)
        self._queue = CommandQueue(self.gpu, self._pipes, self.tracer, self._transfers, self._memory)
        # closed, collected or left at exit: the device is released (and the pipeline cache saved)
        self._release = self._release_when_collected(
            _Release(self._queue, self._transfers, self._pipes, self._memory, self.gpu)
        )

    # --- the core interface's slots -----------------------------------------------------------
    def _create_buffer(self, size: int, usage: Usage) -> VulkanBuffer:
        self._queue.sweep()  # collected command lists give their memory back first
        return self._memory.create(size, usage, self)

    def _write(self, buffer: VulkanBuffer, offset: int, data: memoryview) -> None:
        if 0 < data.nbytes <= MAX_UPDATE and self._queue.busy():
            self._transfers.update(buffer, offset, data)  # after the lists in flight, before the next
            return
        self._queue.wait()  # submitted work may still read it
        self._memory.write(buffer, offset, data)

    def _read(self, buffer: VulkanBuffer, offset: int, size: int) -> memoryview:
        return self._memory.read(buffer, offset, size)  # Backend.read has waited

    def _free(self, buffer: VulkanBuffer) -> None:
        self._queue.wait()  # submitted work may still use it
        self._memory.destroy(buffer)

    def _create_pipeline(self, spec: KernelSpec, constants: dict[str, Any]) -> VulkanPipeline:
        return self._pipes.create(spec, constants)

    def _prepare(self, cmd: CommandList) -> Prepared:
        return self._queue.prepare(cmd, self.caps.timestamps and (self.timestamps or self.tracer.enabled))

    def _submit(self, cmd: CommandList) -> None:
        self._queue.submit(cmd.prepared)

    def _wait(self) -> None:
        self._queue.wait()

    def _wait_for(self, cmd: CommandList) -> None:
        self._queue.wait_for(cmd.prepared)

    def _close(self) -> None:
        self._release()

    def _release_on_collect(self, buffer: Buffer) -> Callable[[], None]:
        queue, destroy = self._queue, self._memory.destroyer(buffer)

        def release() -> None:
            queue.wait()  # work submitted before the buffer was dropped may still use it
            destroy()

        return release

    def supports(self, kernel_name: str) -> bool:
        return V.supported(kernel_name, self.caps)

    def gpu_timings(self, cmd: CommandList) -> list[tuple[str, float]] | None:
        prep = cmd.prepared
        if not isinstance(prep, Prepared) or prep.query_pool is None or prep.released:
            return None
        if prep.pending:
            self.wait()
        if prep.completed == 0:
            return None
        return self._queue.timings(prep)

    # --- Vulkan's own -------------------------------------------------------------------------
    @property
    def pipeline_cache_path(self) -> Path:
        return self._pipes.cache_path

    @property
    def pipeline_cache_loaded(self) -> int:
        """Bytes of pipeline cache data read at start."""
        return self._pipes.cache_loaded

    @property
    def pipelines_created(self) -> int:
        return self._pipes.created

    def stats(self) -> dict[str, Any]:
        """Memory blocks, queued writes and pipelines, for benches and tests."""
        return {
            **self._memory.stats(),
            "queued_writes": self._transfers.updates,
            "transfer_batches": self._transfers.batches,
            "pipelines_created": self._pipes.created,
            "pipeline_cache_loaded": self._pipes.cache_loaded,
        }

    @staticmethod
    def prepared_info(cmd: CommandList) -> dict[str, Any]:
        """How a submitted command list was recorded: dispatches, barriers, variants."""
        prep = cmd.prepared
        if not isinstance(prep, Prepared):
            return {}
        return {
            "dispatches": len(prep.variants),
            "barriers": prep.barriers,
            "variants": list(prep.variants),
            "timestamps": prep.query_pool is not None,
        }


class _Release:
    """Releases a backend's Vulkan objects; holds nothing that refers to the backend."""

    def __init__(self, queue: CommandQueue, transfers: Transfers, pipes: Pipelines, memory: Memory, gpu: Device):
        self.parts = (queue, transfers, pipes, memory, gpu)

    def __call__(self) -> None:
        queue, transfers, pipes, memory, gpu = self.parts
        queue.close()
        transfers.close()
        pipes.close()
        memory.close()
        gpu.close()


def create(**kwargs: Any) -> VulkanBackend:
    """A Vulkan backend on the best device (or SHADERBAY_VULKAN_DEVICE); BackendUnavailable if none."""
    try:
        return VulkanBackend(**kwargs)
    except BackendUnavailable:
        raise
    except ShaderbayError as exc:
        raise BackendUnavailable("vulkan", str(exc)) from exc
