"""Compute pipelines: layouts, shader modules, a VkPipeline per kernel variant, the cache on disk.

A VulkanPipeline is a catalogue kernel with its constants. Which shipped variant runs
(subgroups or not, workgroup size) depends on the dispatch's parameters, so it is chosen,
and its VkPipeline created, the first time a command list with those parameters is
recorded. Creation goes through a VkPipelineCache kept under SHADERBAY_CACHE (one file per
driver's cache UUID) and saved on close, so a second run skips the driver's compiles.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

from shaderbay.commands import Dispatch
from shaderbay.config import cache_dir
from shaderbay.errors import KernelCompileError, LimitExceeded, UnsupportedKernel
from shaderbay.kernels import KernelSpec
from shaderbay.resources import Pipeline
from shaderbay.trace import Tracer

from ..shaders import variants as V
from ..shaders.records import Variant
from .device import Device
from .loader import check, ffi, lib, new, result_name, vk

Choice = tuple[Variant, Any, tuple[int, int, int]]  # (variant, its VkPipeline, workgroup counts)


class VulkanPipeline(Pipeline):
    def __init__(self, spec: KernelSpec, constants: dict[str, Any], set_layout: Any, layout: Any, working: bool):
        super().__init__(spec, constants)
        self.set_layout = set_layout
        self.layout = layout
        # a variant with working memory (Variant.scratch) can run: the layout has one more binding, this
        # pipeline's own buffer (commands.py grows it as dispatches need; counts zero between dispatches)
        self.working = working
        self.scratch: Any = None  # VulkanBuffer
        self.push_size = 4 * len(spec.params)
        self.handles: dict[str, Any] = {}  # variant name -> VkPipeline
        self.chosen: dict[tuple[bytes, bool], Choice] = {}  # (packed params, subgroups off) -> choice
        self.access = tuple((b.access != "write", b.access != "read") for b in self.bindings)  # (reads, writes)


class Pipelines:
    """Every Vulkan object behind a backend's pipelines, and the pipeline cache."""

    def __init__(self, gpu: Device, tracer: Tracer):
        self._gpu = gpu
        self._dev = gpu.handle
        self._tracer = tracer
        self._layouts: dict[tuple[int, int], tuple[Any, Any]] = {}  # (bindings, push bytes) -> layouts
        self._modules: dict[str, Any] = {}  # variant name -> VkShaderModule
        self._handles: list[Any] = []  # every VkPipeline, to destroy on close
        self.created = 0
        self._dirty = False  # pipelines were created since the cache was read or saved
        slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu.name).strip("-").lower()
        uuid = bytes(ffi.buffer(gpu.props.pipelineCacheUUID, 16)).hex()[:12]
        self.cache_path = cache_dir() / f"vulkan-pipelines-{slug}-{uuid}.bin"
        self._cache, self.cache_loaded = self._open_cache()

    def create(self, spec: KernelSpec, constants: dict[str, Any]) -> VulkanPipeline:
        caps = self._gpu.caps
        candidates = V.variants_for(spec.name, constants)
        if not candidates:
            raise UnsupportedKernel(f"the vulkan backend has no GPU kernel for {spec.name}({_fmt(constants)}) yet")
        if not any(V.usable(v, caps) for v in candidates):
            raise UnsupportedKernel(
                f"no variant of {spec.name}({_fmt(constants)}) runs on {caps.device} "
                f"(capabilities: {', '.join(sorted(V.capabilities(caps))) or 'none'})"
            )
        push = 4 * len(spec.params)
        if push > caps.max_push_constants:
            raise LimitExceeded(
                f"{spec.name} needs {push} bytes of push constants; {self._gpu.name} has {caps.max_push_constants}"
            )
        working = any(v.scratch is not None and V.usable(v, caps) for v in candidates)
        set_layout, layout = self._layout(len(spec.bindings_for(constants)) + working, push)
        return VulkanPipeline(spec, constants, set_layout, layout, working)

    def choose(self, pipe: VulkanPipeline, op: Dispatch, env: tuple[bool, ...]) -> Choice:
        """The variant, VkPipeline and grid for a dispatch; made once per parameter set (and `V.selection_env()`)."""
        key = (op.param_bytes, env)
        choice = pipe.chosen.get(key)
        if choice is None:
            variant = V.select(pipe.spec.name, pipe.constants, op.params, self._gpu.caps)
            handle = self._handle(pipe, variant)
            grid = tuple(int(g) for g in variant.grid(op.params))
            limits = self._gpu.max_groups
            if any(g > m for g, m in zip(grid, limits, strict=True)) or min(grid) < 1:
                raise LimitExceeded(f"{op.label}: grid {grid} exceeds {self._gpu.name}'s {limits}")
            choice = pipe.chosen[key] = (variant, handle, grid)  # type: ignore[assignment]
        return choice

    def save_cache(self) -> Path | None:
        """Write the pipeline cache to disk; None when there is nothing to write or it failed."""
        if self._cache is None:
            return None
        size = ffi.new("size_t*")
        if lib.vkGetPipelineCacheData(self._dev, self._cache, size, ffi.NULL) < 0 or size[0] == 0:
            return None
        data = ffi.new("char[]", size[0])
        if lib.vkGetPipelineCacheData(self._dev, self._cache, size, data) < 0:
            return None
        path = self.cache_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # then renamed: readers never see half a file
            tmp.write_bytes(ffi.buffer(data, size[0]))
            os.replace(tmp, path)
        except OSError as exc:
            warnings.warn(f"could not save the Vulkan pipeline cache to {path}: {exc}", stacklevel=3)
            return None
        self._dirty = False
        return path

    def close(self) -> None:
        """Destroy everything, saving the cache first if it has new pipelines."""
        dev = self._dev
        for handle in self._handles:
            lib.vkDestroyPipeline(dev, handle, ffi.NULL)
        self._handles.clear()
        for set_layout, layout in self._layouts.values():
            lib.vkDestroyPipelineLayout(dev, layout, ffi.NULL)
            lib.vkDestroyDescriptorSetLayout(dev, set_layout, ffi.NULL)
        self._layouts.clear()
        for module in self._modules.values():
            lib.vkDestroyShaderModule(dev, module, ffi.NULL)
        self._modules.clear()
        if self._cache is not None:
            if self._dirty:
                self.save_cache()
            lib.vkDestroyPipelineCache(dev, self._cache, ffi.NULL)
            self._cache = None

    def _open_cache(self) -> tuple[Any, int]:
        """The VkPipelineCache, seeded from the file when there is one, and the bytes read."""
        try:
            data = self.cache_path.read_bytes()
        except OSError:
            data = b""
        info = new(
            "VkPipelineCacheCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO,
            initialDataSize=len(data),
            pInitialData=ffi.from_buffer(data) if data else ffi.NULL,
        )
        out = ffi.new("VkPipelineCache*")
        r = lib.vkCreatePipelineCache(self._dev, info, ffi.NULL, out)
        if r < 0 and data:  # a corrupt file: start empty
            info.initialDataSize = 0
            info.pInitialData = ffi.NULL
            data = b""
            r = lib.vkCreatePipelineCache(self._dev, info, ffi.NULL, out)
        check(r, "vkCreatePipelineCache")
        return out[0], len(data)

    def _layout(self, n_bindings: int, push: int) -> tuple[Any, Any]:
        """(descriptor-set layout, pipeline layout) for n storage buffers and `push` bytes of constants."""
        key = (n_bindings, push)
        if key not in self._layouts:
            bindings = ffi.new("VkDescriptorSetLayoutBinding[]", n_bindings)
            for i in range(n_bindings):
                bindings[i].binding = i
                bindings[i].descriptorType = vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
                bindings[i].descriptorCount = 1
                bindings[i].stageFlags = vk.VK_SHADER_STAGE_COMPUTE_BIT
            info = new(
                "VkDescriptorSetLayoutCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                bindingCount=n_bindings,
                pBindings=bindings,
            )
            set_layout = ffi.new("VkDescriptorSetLayout*")
            check(lib.vkCreateDescriptorSetLayout(self._dev, info, ffi.NULL, set_layout), "vkCreateDescriptorSetLayout")
            rng = new("VkPushConstantRange", stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT, offset=0, size=push)
            layouts = ffi.new("VkDescriptorSetLayout[1]", [set_layout[0]])
            pl_info = new(
                "VkPipelineLayoutCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                setLayoutCount=1,
                pSetLayouts=layouts,
                pushConstantRangeCount=1 if push else 0,
                pPushConstantRanges=rng if push else ffi.NULL,
            )
            layout = ffi.new("VkPipelineLayout*")
            r = lib.vkCreatePipelineLayout(self._dev, pl_info, ffi.NULL, layout)
            if r < 0:
                lib.vkDestroyDescriptorSetLayout(self._dev, set_layout[0], ffi.NULL)
                check(r, "vkCreatePipelineLayout")
            self._layouts[key] = (set_layout[0], layout[0])
        return self._layouts[key]

    def _module(self, variant: Variant) -> Any:
        if variant.name not in self._modules:
            code = V.spirv(variant)
            words = ffi.new("uint32_t[]", len(code) // 4)
            ffi.memmove(words, code, len(code))
            info = new(
                "VkShaderModuleCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                codeSize=len(code),
                pCode=words,
            )
            out = ffi.new("VkShaderModule*")
            r = lib.vkCreateShaderModule(self._dev, info, ffi.NULL, out)
            if r < 0:
                raise KernelCompileError(f"vkCreateShaderModule({variant.name}) failed: {result_name(r)}")
            self._modules[variant.name] = out[0]
        return self._modules[variant.name]

    def _handle(self, pipe: VulkanPipeline, variant: Variant) -> Any:
        """The VkPipeline of one variant of `pipe`, created on first use."""
        handle = pipe.handles.get(variant.name)
        if handle is not None:
            return handle
        entry = ffi.new("char[]", b"main")
        pnext = ffi.NULL
        flags = 0
        if variant.subgroup_size and self._gpu.subgroup_size_control:
            sg_info = new(
                "VkPipelineShaderStageRequiredSubgroupSizeCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_REQUIRED_SUBGROUP_SIZE_CREATE_INFO,
                requiredSubgroupSize=variant.subgroup_size,
            )
            pnext = sg_info
            if self._gpu.full_subgroups:
                # VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT: the vulkan package
                # (1.3.275.1) exports it as None
                flags = 0x2
        stage = new(
            "VkPipelineShaderStageCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
            pNext=pnext,
            flags=flags,
            stage=vk.VK_SHADER_STAGE_COMPUTE_BIT,
            module=self._module(variant),
            pName=entry,
        )
        info = new(
            "VkComputePipelineCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
            stage=stage[0],
            layout=pipe.layout,
            basePipelineIndex=-1,
            flags=self._gpu.statistics.flags,
        )
        out = ffi.new("VkPipeline*")
        with self._tracer.span("vkCreateComputePipelines", variant=variant.name):
            r = lib.vkCreateComputePipelines(self._dev, self._cache, 1, info, ffi.NULL, out)
        if r < 0:
            raise KernelCompileError(f"creating the pipeline for {variant.name} failed: {result_name(r)}")
        pipe.handles[variant.name] = out[0]
        self._gpu.statistics.report(self._dev, out[0], variant.name)
        self._handles.append(out[0])
        self.created += 1
        self._dirty = True
        return out[0]


def _fmt(constants: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in constants.items())
