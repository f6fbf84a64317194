"""WgpuBackend, which wires the wgpu modules to the core interface, and `create`."""

from __future__ import annotations

import os
from typing import Any

from shaderbay.backend import Backend
from shaderbay.commands import CommandList
from shaderbay.config import env_flag
from shaderbay.kernels import KernelSpec
from shaderbay.resources import Usage

from ..shaders import variants
from .adapter import find_adapter
from .buffers import Buffers, WgpuBuffer
from .commands import ENV_ENCODER, CommandQueue, Prepared, PythonEncoder
from .device import device_caps, open_device, timestamp_period
from .loader import VERSION
from .native import NativeEncoder
from .pipelines import ENV_CHECKS, Pipelines, WgpuPipeline
from .preflight import ENV_PREFLIGHT, Preflight

ENV_TIMESTAMPS = "SHADERBAY_WGPU_TIMESTAMPS"


class WgpuBackend(Backend):
    name = "wgpu"

    def __init__(self, adapter: Any, timestamps: bool = False):
        super().__init__()
        self.adapter = adapter
        self.device = open_device(adapter)
        self.gpu_timestamps = timestamps  # time every dispatch even when the tracer is off
        python = os.environ.get(ENV_ENCODER, "ffi").strip().lower() == "python"
        self.encoder = PythonEncoder(self.device) if python else NativeEncoder(self.device)
        period = timestamp_period(self.device)
        checks = bool(env_flag(ENV_CHECKS))
        self.caps = device_caps(
            adapter,
            self.device,
            {"timestamp_period_ns": period, "encoder": self.encoder.name, "shader_runtime_checks": checks},
        )
        preflight = None
        if env_flag(ENV_PREFLIGHT, default=True):
            info = dict(adapter.info)  # translation differs per API (SPIR-V, GLSL, MSL, HLSL out)
            preflight = Preflight(info, self.caps, f"{VERSION}-{info.get('backend_type', '?')}")
        self.pipelines = Pipelines(self.device, self.caps, self.tracer, preflight, runtime_checks=checks)
        self._buffers = Buffers(self, self.device, self.encoder)
        self._queue = CommandQueue(self.device, self.caps, self.pipelines, self.encoder, self.tracer)
        self._queue.period_ns = period

    # --- the core interface's slots -----------------------------------------------------------
    def _create_buffer(self, size: int, usage: Usage) -> WgpuBuffer:
        return self._buffers.create(size, usage)

    def _write(self, buffer: WgpuBuffer, offset: int, data: memoryview) -> None:
        self._buffers.write(buffer, offset, data)

    def _read(self, buffer: WgpuBuffer, offset: int, size: int) -> bytes | memoryview:
        return self._buffers.read(buffer, offset, size)

    def _free(self, buffer: WgpuBuffer) -> None:
        self._buffers.free(buffer)

    def _create_pipeline(self, spec: KernelSpec, constants: dict[str, Any]) -> WgpuPipeline:
        return self.pipelines.create(spec, constants)

    def _prepare(self, cmd: CommandList) -> Prepared:
        return self._queue.prepare(cmd)

    def _submit(self, cmd: CommandList) -> None:
        timed = (self.gpu_timestamps or self.tracer.enabled) and self.caps.timestamps
        self._queue.submit(cmd, timed)

    def _wait_for(self, cmd: CommandList) -> None:
        self._queue.wait_for(cmd.prepared)

    def _wait(self) -> None:
        self._queue.wait()

    def _close(self) -> None:
        self._queue.close()
        self.pipelines.close()
        self._buffers.close()
        try:
            self.device.destroy()
        except Exception:
            pass

    def supports(self, kernel_name: str) -> bool:
        return variants.supported(kernel_name, self.caps)

    def gpu_timings(self, cmd: CommandList) -> list[tuple[str, float]] | None:
        """Per-dispatch GPU durations (ns) of the last submit of `cmd` that was timed (waits for it)."""
        prep: Prepared | None = cmd.prepared
        if prep is None or prep.timestamps is None:
            return None
        if prep.timestamps.pending:
            self.wait()
        return prep.timings


def create(adapter: str | None = None, allow_any: bool | None = None, timestamps: bool | None = None) -> WgpuBackend:
    """A wgpu backend on the best Vulkan adapter (see the package doc for the environment variables)."""
    chosen = find_adapter(adapter, allow_any)
    return WgpuBackend(chosen, timestamps=env_flag(ENV_TIMESTAMPS) if timestamps is None else timestamps)
