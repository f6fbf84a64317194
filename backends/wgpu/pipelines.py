"""Pipelines: the limits checked at creation, the variant chosen per dispatch, its wgpu pipeline built once.

Every kernel's SPIR-V goes through wgpu's translator (naga) the first time it is used; a
Preflight (preflight.py) tries it in a child process first, because a translator panic
aborts the whole process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shaderbay.backend import Caps
from shaderbay.errors import KernelCompileError, LimitExceeded
from shaderbay.kernels import KernelSpec, kernel
from shaderbay.resources import Pipeline
from shaderbay.trace import Tracer

from ..shaders import variants
from ..shaders.records import Variant
from .loader import ffi, handle, lib, libf, native_shader_module, wgpu
from .preflight import Preflight

ENV_CHECKS = "SHADERBAY_WGPU_CHECKS"


class WgpuPipeline(Pipeline):
    """A catalogue kernel and constants; the variant (and its wgpu pipeline) is chosen per dispatch."""

    def __init__(self, spec: KernelSpec, constants: dict[str, Any]):
        super().__init__(spec, constants)
        self.immediate_size = 4 * len(spec.params)


@dataclass
class Compiled:
    """One variant's wgpu pipeline, with its bind-group layout."""

    variant: Variant
    pipeline: Any
    layout: Any


class Pipelines:
    """Layouts and the compiled variants of one device."""

    def __init__(self, device: Any, caps: Caps, tracer: Tracer, preflight: Preflight | None, runtime_checks: bool):
        self.device = device
        self.caps = caps
        self.tracer = tracer
        self.preflight = preflight
        self.runtime_checks = runtime_checks  # wgpu's bounds checks and loop counters in the kernels (ENV_CHECKS)
        self._layouts: dict[int, tuple[Any, dict[int, Any]]] = {}  # bindings -> (bind-group layout, pipeline layouts)
        self._compiled: dict[str, Compiled] = {}  # variant name -> pipeline

    def create(self, spec: KernelSpec, constants: dict[str, Any]) -> WgpuPipeline:
        pipe = WgpuPipeline(spec, constants)
        caps = self.caps
        if len(pipe.bindings) > caps.max_storage_buffers:
            raise LimitExceeded(
                f"{spec.name} binds {len(pipe.bindings)} buffers; {caps.device} allows {caps.max_storage_buffers}"
            )
        if pipe.immediate_size > caps.max_push_constants:
            raise LimitExceeded(
                f"{spec.name} takes {pipe.immediate_size} bytes of parameters; {caps.device} allows "
                f"{caps.max_push_constants} bytes of push constants"
            )
        return pipe

    def compile(self, pipe: WgpuPipeline, params: dict[str, Any]) -> Compiled:
        """The compiled variant for a dispatch of `pipe` with these parameters."""
        variant = variants.select(pipe.spec.name, pipe.constants, params, self.caps)
        compiled = self._compiled.get(variant.name)
        if compiled is None:
            if self.preflight is not None:
                self.preflight.check(variant)  # a translator panic would abort the process: try it aside first
            compiled = self.build(variant)
        return compiled

    def build(self, variant: Variant) -> Compiled:
        """The wgpu pipeline of a variant (cached): SPIR-V through wgpu's translator, explicit layouts."""
        compiled = self._compiled.get(variant.name)
        if compiled is not None:
            return compiled
        spec = kernel(variant.kernel)
        code = variants.spirv(variant)
        group_layout, layout = self._layout(len(spec.bindings_for(dict(variant.constants))), 4 * len(spec.params))
        with self.tracer.span("compile", kernel=spec.name, variant=variant.name):
            try:
                module = self._shader_module(variant.name, code)
                pipeline = self.device.create_compute_pipeline(
                    label=variant.name, layout=layout, compute={"module": module, "entry_point": "main"}
                )
            except wgpu.GPUError as exc:
                raise KernelCompileError(
                    f"wgpu could not build {variant.name} (kernel {spec.name}) on {self.caps.device}: {exc}"
                ) from exc
        compiled = Compiled(variant, pipeline, group_layout)
        self._compiled[variant.name] = compiled
        return compiled

    def close(self) -> None:
        self._compiled.clear()
        self._layouts.clear()

    def _layout(self, bindings: int, immediate_size: int) -> tuple[Any, Any]:
        """The bind-group layout (every binding a read-write storage buffer) and pipeline layout."""
        if bindings not in self._layouts:
            entries = [
                {"binding": i, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": "storage"}}
                for i in range(bindings)
            ]
            self._layouts[bindings] = (self.device.create_bind_group_layout(entries=entries), {})
        group_layout, pipeline_layouts = self._layouts[bindings]
        if immediate_size not in pipeline_layouts:
            pipeline_layouts[immediate_size] = self.device.create_pipeline_layout(
                bind_group_layouts=[group_layout], immediate_size=immediate_size
            )
        return group_layout, pipeline_layouts[immediate_size]

    def _shader_module(self, label: str, code: bytes) -> Any:
        """A shader module from SPIR-V. Unless SHADERBAY_WGPU_CHECKS is set, without the bounds checks and
        loop counters wgpu otherwise adds to every access and loop: the kernels are the conformance-tested
        catalogue ones and every binding's size was checked when the command list was recorded (both
        checks cost wgpu's kernels about half of the raw Vulkan backend's bandwidth under the same SPIR-V).
        wgpu-py has no way to ask for that, so it goes through wgpu-native's C function."""
        if self.runtime_checks:
            return self.device.create_shader_module(label=label, code=code)
        words = ffi.new("uint8_t[]", code)
        source = ffi.new("WGPUShaderSourceSPIRV *")
        source.chain.next = ffi.NULL
        source.chain.sType = lib.WGPUSType_ShaderSourceSPIRV
        source.codeSize = len(code) // 4
        source.code = ffi.cast("uint32_t *", words)
        name = label.encode()
        desc = ffi.new("WGPUShaderModuleDescriptor *")
        desc.nextInChain = ffi.cast("WGPUChainedStruct *", source)
        desc.label.data = ffi.from_buffer(name)
        desc.label.length = len(name)
        module = libf.wgpuDeviceCreateShaderModuleTrusted(handle(self.device), desc, lib.WGPUShaderRuntimeChecks_None)
        if module == ffi.NULL:
            raise KernelCompileError(f"wgpu could not create the shader module of {label}")
        return native_shader_module(label, module, self.device)
