"""The raw Vulkan backend, through the `vulkan` package (cffi): record once, replay per token.

The shared GLSL kernels (shaderbay.backends.shaders) run from their shipped SPIR-V. A
command list is recorded into ONE Vulkan command buffer the first time it is submitted
(descriptor sets allocated and written once, barriers only where a dispatch touches
bytes an earlier one wrote, or writes bytes an earlier one read); every later submit
re-submits that command buffer with one `vkQueueSubmit`. Per-token work on the host is
then: write the parameter buffer (persistently mapped), one submit, one fence wait, one
read of the sampled token. Hot paths call `vk.lib` directly with prebuilt cffi objects
(the package's Python wrappers cost ~3 us a call).

Memory: buffers are sub-allocated from large `VkDeviceMemory` blocks (64 MiB for device
memory, 4 MiB for upload/readback), one `VkBuffer` each bound at its offset. Device
buffers live in device-local memory; when that memory is not host-visible (discrete
GPUs) writes and reads go through a staging buffer, otherwise (lavapipe, integrated
GPUs) through the persistent mapping. Upload and read-back buffers live in host-visible
coherent memory (read-back preferring host-cached).

Environment:
  SHADERBAY_VULKAN_DEVICE      device by index (enumeration order) or by name substring
  SHADERBAY_VULKAN_VALIDATE=1  enable VK_LAYER_KHRONOS_validation (with synchronization
                               validation) and collect its messages in
                               `backend.validation_messages`
  SHADERBAY_VULKAN_TIMESTAMPS=1 time every dispatch on the GPU (also on while the tracer is)
  SHADERBAY_CACHE              directory of the pipeline cache (default ~/.cache/shaderbay)
"""

from __future__ import annotations

import atexit
import math
import os
import re
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from shaderbay.backend import Backend, Buffer, Caps, CommandList, Dispatch, Pipeline, Usage
from shaderbay.errors import (
    BackendUnavailable,
    ClosedError,
    KernelCompileError,
    LimitExceeded,
    OutOfMemory,
    ShaderbayError,
    UnsupportedKernel,
)
from shaderbay.kernels import KernelSpec

from ..shaders import variants as V

ENV_DEVICE = "SHADERBAY_VULKAN_DEVICE"
ENV_VALIDATE = "SHADERBAY_VULKAN_VALIDATE"
ENV_TIMESTAMPS = "SHADERBAY_VULKAN_TIMESTAMPS"
ENV_CACHE = "SHADERBAY_CACHE"
VALIDATION_LAYER = "VK_LAYER_KHRONOS_validation"

DEVICE_BLOCK = 64 << 20  # sub-allocation block for device memory
HOST_BLOCK = 4 << 20  # ... and for upload / read-back memory
STAGING_SIZE = 32 << 20  # staging buffer for device memory that is not host-visible
WAIT_TIMEOUT_NS = 600 * 10**9

# the fixed values of the Vulkan API we use (the package exposes them too; literals keep hot code lean)
VK_SUCCESS = 0
VK_TIMEOUT = 2
MEM_DEVICE_LOCAL, MEM_HOST_VISIBLE, MEM_HOST_COHERENT, MEM_HOST_CACHED = 1, 2, 4, 8
SG_BASIC, SG_VOTE, SG_ARITHMETIC, SG_BALLOT, SG_SHUFFLE = 1, 2, 4, 8, 16
SUBGROUP_OPS = {
    1: "basic",
    2: "vote",
    4: "arithmetic",
    8: "ballot",
    16: "shuffle",
    32: "shuffle_relative",
    64: "clustered",
    128: "quad",
}
DEVICE_TYPES = {0: "other", 1: "integrated", 2: "discrete", 3: "other", 4: "software"}
TYPE_RANK = {2: 0, 1: 1, 3: 2, 4: 3, 0: 4}  # discrete first

vk: Any = None
ffi: Any = None
lib: Any = None


def _load() -> None:
    global vk, ffi, lib
    if vk is not None:
        return
    try:
        import vulkan as _vk
    except ImportError:
        raise BackendUnavailable(
            "vulkan", "the `vulkan` Python package is not installed: pip install vulkan==1.3.275.1"
        ) from None
    except OSError:
        raise BackendUnavailable(
            "vulkan",
            "the Vulkan loader (libvulkan.so.1) was not found: install libvulkan1 and a driver "
            "(your GPU's, or mesa-vulkan-drivers for a software one)",
        ) from None
    vk, ffi, lib = _vk, _vk.ffi, _vk.lib


def _version(major: int, minor: int, patch: int = 0) -> int:
    return (major << 22) | (minor << 12) | patch


def _version_str(v: int) -> str:
    return f"{v >> 22 & 0x7F}.{v >> 12 & 0x3FF}.{v & 0xFFF}"


_RESULT_NAMES: dict[int, str] = {}


def _result_name(r: int) -> str:
    if not _RESULT_NAMES:
        for name in dir(vk):
            if name.startswith(("VK_ERROR_", "VK_SUCCESS", "VK_NOT_READY", "VK_TIMEOUT", "VK_INCOMPLETE")):
                _RESULT_NAMES.setdefault(getattr(vk, name), name)
    return _RESULT_NAMES.get(r, f"VkResult {r}")


def _check(r: int, what: str) -> int:
    if r >= 0:
        return r
    if r in (-1, -2):  # VK_ERROR_OUT_OF_HOST_MEMORY, VK_ERROR_OUT_OF_DEVICE_MEMORY
        raise OutOfMemory(f"{what}: {_result_name(r)}; free buffers, shorten the context or pick a smaller model")
    if r == -4:  # VK_ERROR_DEVICE_LOST
        raise ShaderbayError(
            f"{what}: the Vulkan device was lost (a driver reset or a kernel fault); close this backend and "
            "create a new one (SHADERBAY_VULKAN_VALIDATE=1 may say why)"
        )
    raise ShaderbayError(f"{what} failed: {_result_name(r)}")


def _new(ctype: str, **fields: Any) -> Any:
    """A zeroed C struct (pointer) with its sType filled in from the struct's name."""
    return ffi.new(ctype + "*", fields)


_STYPES = {
    "VkPhysicalDeviceFeatures2": "PHYSICAL_DEVICE_FEATURES_2",
    "VkPhysicalDeviceVulkan11Features": "PHYSICAL_DEVICE_VULKAN_1_1_FEATURES",
    "VkPhysicalDeviceVulkan12Features": "PHYSICAL_DEVICE_VULKAN_1_2_FEATURES",
    "VkPhysicalDeviceVulkan13Features": "PHYSICAL_DEVICE_VULKAN_1_3_FEATURES",
    "VkPhysicalDeviceProperties2": "PHYSICAL_DEVICE_PROPERTIES_2",
    "VkPhysicalDeviceVulkan11Properties": "PHYSICAL_DEVICE_VULKAN_1_1_PROPERTIES",
    "VkPhysicalDeviceVulkan12Properties": "PHYSICAL_DEVICE_VULKAN_1_2_PROPERTIES",
    "VkPhysicalDeviceVulkan13Properties": "PHYSICAL_DEVICE_VULKAN_1_3_PROPERTIES",
    "VkDebugUtilsMessengerCreateInfoEXT": "DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT",
    "VkValidationFeaturesEXT": "VALIDATION_FEATURES_EXT",
    "VkPipelineShaderStageRequiredSubgroupSizeCreateInfo": "PIPELINE_SHADER_STAGE_REQUIRED_SUBGROUP_SIZE_CREATE_INFO",
}


def _struct(name: str, **fields: Any) -> Any:
    return ffi.new(name + "*", {"sType": getattr(vk, "VK_STRUCTURE_TYPE_" + _STYPES[name]), **fields})


def _string(chars: Any) -> str:
    return ffi.string(chars).decode("utf-8", "replace")


def _cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "shaderbay"


# --- the debug messenger: one C callback for the process, routed by pUserData ----------------

_MESSENGER_CALLBACK = None


def _messenger_callback() -> Any:
    global _MESSENGER_CALLBACK
    if _MESSENGER_CALLBACK is None:

        def on_message(severity: int, types: int, data: Any, user: Any) -> int:
            try:
                sink = ffi.from_handle(user)
                text = _string(data.pMessage) if data.pMessage != ffi.NULL else "?"
                level = "error" if severity >= 0x1000 else "warning" if severity >= 0x100 else "info"
                sink.append(f"[{level}] {text}")
            except Exception:  # noqa: BLE001 - never raise into the driver
                pass
            return 0

        _MESSENGER_CALLBACK = ffi.callback("PFN_vkDebugUtilsMessengerCallbackEXT", on_message)
    return _MESSENGER_CALLBACK


# --- memory ---------------------------------------------------------------------------------


class _Block:
    """One VkDeviceMemory allocation, carved first-fit into buffers."""

    __slots__ = ("memory", "size", "type_index", "free", "mapped", "used", "dedicated")

    def __init__(self, memory: Any, size: int, type_index: int, mapped: np.ndarray | None):
        self.dedicated = False  # holds one large buffer; freed with it
        self.memory = memory
        self.size = size
        self.type_index = type_index
        self.free: list[tuple[int, int]] = [(0, size)]  # (offset, size), sorted, coalesced
        self.mapped = mapped
        self.used = 0

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
    def __init__(self, backend: VulkanBackend, size: int, usage: Usage):
        super().__init__(backend, size, usage)
        self.handle: Any = None  # VkBuffer
        self.block: _Block | None = None
        self.block_offset = 0
        self.block_size = 0
        self.mapped: np.ndarray | None = None  # uint8 view of the persistent mapping, if host-visible


class VulkanPipeline(Pipeline):
    def __init__(self, spec: KernelSpec, constants: dict[str, Any], set_layout: Any, layout: Any):
        super().__init__(spec, constants)
        self.set_layout = set_layout
        self.layout = layout
        self.push_size = 4 * len(spec.params)
        self.handles: dict[str, Any] = {}  # variant name -> VkPipeline
        # (packed params, subgroups off) -> (variant, VkPipeline, grid): chosen once per parameter set
        self.chosen: dict[tuple[bytes, bool], tuple[V.Variant, Any, tuple[int, int, int]]] = {}
        self.access = tuple((b.access != "write", b.access != "read") for b in self.bindings)  # (reads, writes)


class _Prepared:
    """A command list's Vulkan form: one command buffer and what it needs, reusable forever."""

    __slots__ = (
        "cmdbuf",
        "cmdbuf_p",
        "pool",
        "sets",
        "fence",
        "fence_p",
        "submit_info",
        "query_pool",
        "labels",
        "buffers",
        "generation",
        "pending",
        "completed",
        "keep",
        "dispatches",
        "barriers",
        "released",
        "variants",
    )

    def __init__(self) -> None:
        self.cmdbuf = None
        self.pool = None
        self.query_pool = None
        self.fence = None
        self.labels: list[str] = []
        self.buffers: tuple[VulkanBuffer, ...] = ()
        self.generation = 0
        self.pending = False
        self.completed = 0
        self.keep: list[Any] = []
        self.dispatches = 0
        self.barriers = 0
        self.released = False
        self.variants: list[str] = []


class VulkanBackend(Backend):
    name = "vulkan"

    def __init__(self, device: str | int | None = None, validate: bool | None = None, timestamps: bool | None = None):
        super().__init__()
        _load()
        self._handles_ready = False
        self.validation_messages: list[str] = []
        self.validation = False
        self.timestamps = _env_flag(ENV_TIMESTAMPS) if timestamps is None else timestamps
        self._messenger = None
        self._instance = None
        self._device = None
        self._preps: set[_Prepared] = set()
        self._inflight: list[_Prepared] = []
        self._deferred: list[_Prepared] = []
        self._blocks: dict[int, list[_Block]] = {}
        self._live_buffers: set[VulkanBuffer] = set()
        self._layouts: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._modules: dict[str, Any] = {}
        self._vk_pipelines: list[Any] = []
        self._free_generation = 0
        self._staging: VulkanBuffer | None = None
        self._transfer = None
        self._cache = None
        self._cache_dirty = False
        self.pipeline_cache_path: Path | None = None
        self.pipeline_cache_loaded = 0  # bytes of pipeline cache data read at start
        self.pipelines_created = 0
        try:
            self._create_instance(_env_flag(ENV_VALIDATE) if validate is None else validate)
            self._choose_device(os.environ.get(ENV_DEVICE) if device is None else device)
            self._create_device()
        except BaseException:
            self._destroy_all()
            raise
        self._handles_ready = True
        _LIVE.add(self)

    # --- instance and device ------------------------------------------------------------------
    def _create_instance(self, validate: bool) -> None:
        count = ffi.new("uint32_t*")
        lib.vkEnumerateInstanceLayerProperties(count, ffi.NULL)
        layer_props = ffi.new("VkLayerProperties[]", count[0])
        lib.vkEnumerateInstanceLayerProperties(count, layer_props)
        layers = {_string(layer_props[i].layerName) for i in range(count[0])}

        def extensions(layer: str | None) -> set[str]:
            name = ffi.new("char[]", layer.encode()) if layer else ffi.NULL
            n = ffi.new("uint32_t*")
            lib.vkEnumerateInstanceExtensionProperties(name, n, ffi.NULL)
            props = ffi.new("VkExtensionProperties[]", n[0])
            lib.vkEnumerateInstanceExtensionProperties(name, n, props)
            return {_string(props[i].extensionName) for i in range(n[0])}

        available = extensions(None)
        want_layers: list[str] = []
        want_ext: list[str] = []
        flags = 0
        if "VK_KHR_portability_enumeration" in available:
            want_ext.append("VK_KHR_portability_enumeration")
            flags |= 1  # VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR
        keep: list[Any] = []
        pnext = ffi.NULL
        if validate:
            if VALIDATION_LAYER not in layers:
                warnings.warn(
                    f"{ENV_VALIDATE}=1 but {VALIDATION_LAYER} is not installed "
                    "(apt install vulkan-validationlayers); running without validation",
                    stacklevel=3,
                )
            else:
                want_layers.append(VALIDATION_LAYER)
                layer_ext = extensions(VALIDATION_LAYER)
                if "VK_EXT_debug_utils" in available | layer_ext:
                    want_ext.append("VK_EXT_debug_utils")
                    self._sink_handle = ffi.new_handle(self.validation_messages)
                    messenger_info = _struct(
                        "VkDebugUtilsMessengerCreateInfoEXT",
                        messageSeverity=0x100 | 0x1000,  # WARNING | ERROR
                        messageType=0x1 | 0x2 | 0x4,  # GENERAL | VALIDATION | PERFORMANCE
                        pfnUserCallback=_messenger_callback(),
                        pUserData=self._sink_handle,
                    )
                    keep.append(messenger_info)
                    pnext = messenger_info
                if "VK_EXT_validation_features" in layer_ext:
                    want_ext.append("VK_EXT_validation_features")
                    enables = ffi.new("VkValidationFeatureEnableEXT[]", [4])  # SYNCHRONIZATION_VALIDATION
                    features = _struct(
                        "VkValidationFeaturesEXT",
                        pNext=pnext,
                        enabledValidationFeatureCount=1,
                        pEnabledValidationFeatures=enables,
                    )
                    keep += [enables, features]
                    pnext = features
                self.validation = True
        version = ffi.new("uint32_t*")
        lib.vkEnumerateInstanceVersion(version)
        if version[0] < _version(1, 2):
            raise BackendUnavailable(
                "vulkan", f"the Vulkan loader is version {_version_str(version[0])}; shaderbay needs 1.2 or newer"
            )
        app_name = ffi.new("char[]", b"shaderbay")
        app = _new(
            "VkApplicationInfo",
            sType=vk.VK_STRUCTURE_TYPE_APPLICATION_INFO,
            pApplicationName=app_name,
            pEngineName=app_name,
            apiVersion=_version(1, 3),
        )
        layer_c = [ffi.new("char[]", s.encode()) for s in want_layers]
        ext_c = [ffi.new("char[]", s.encode()) for s in want_ext]
        layer_arr = ffi.new("char*[]", layer_c)
        ext_arr = ffi.new("char*[]", ext_c)
        info = _new(
            "VkInstanceCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
            pNext=pnext,
            flags=flags,
            pApplicationInfo=app,
            enabledLayerCount=len(layer_c),
            ppEnabledLayerNames=layer_arr,
            enabledExtensionCount=len(ext_c),
            ppEnabledExtensionNames=ext_arr,
        )
        out = ffi.new("VkInstance*")
        r = lib.vkCreateInstance(info, ffi.NULL, out)
        if r == -9:  # VK_ERROR_INCOMPATIBLE_DRIVER
            raise BackendUnavailable(
                "vulkan",
                "no Vulkan driver found: install a GPU driver, or mesa-vulkan-drivers for a software one",
            )
        if r < 0:
            raise BackendUnavailable("vulkan", f"vkCreateInstance failed ({_result_name(r)}); check the Vulkan driver")
        self._instance = out[0]
        if self.validation and "VK_EXT_debug_utils" in want_ext:
            fn = lib.vkGetInstanceProcAddr(self._instance, b"vkCreateDebugUtilsMessengerEXT")
            self._destroy_messenger_fn = ffi.cast(
                "PFN_vkDestroyDebugUtilsMessengerEXT",
                lib.vkGetInstanceProcAddr(self._instance, b"vkDestroyDebugUtilsMessengerEXT"),
            )
            create = ffi.cast("PFN_vkCreateDebugUtilsMessengerEXT", fn)
            messenger = ffi.new("VkDebugUtilsMessengerEXT*")
            messenger_info.pNext = ffi.NULL
            _check(create(self._instance, messenger_info, ffi.NULL, messenger), "vkCreateDebugUtilsMessengerEXT")
            self._messenger = messenger[0]
            self._messenger_info = messenger_info

    def _choose_device(self, wanted: str | int | None) -> None:
        count = ffi.new("uint32_t*")
        _check(lib.vkEnumeratePhysicalDevices(self._instance, count, ffi.NULL), "vkEnumeratePhysicalDevices")
        devices = ffi.new("VkPhysicalDevice[]", count[0])
        _check(lib.vkEnumeratePhysicalDevices(self._instance, count, devices), "vkEnumeratePhysicalDevices")
        if count[0] == 0:
            raise BackendUnavailable(
                "vulkan", "no Vulkan driver found: install a GPU driver, or mesa-vulkan-drivers for a software one"
            )
        found = []
        for i in range(count[0]):
            props = ffi.new("VkPhysicalDeviceProperties*")
            lib.vkGetPhysicalDeviceProperties(devices[i], props)
            found.append((i, devices[i], props, _string(props.deviceName)))
        listing = "; ".join(f"{i}: {name} ({DEVICE_TYPES.get(p.deviceType, '?')})" for i, _, p, name in found)
        if wanted is not None and str(wanted).strip() != "":
            w = str(wanted).strip()
            if w.isdigit():
                chosen = [f for f in found if f[0] == int(w)]
            else:
                chosen = [f for f in found if w.lower() in f[3].lower()]
            if not chosen:
                raise BackendUnavailable(
                    "vulkan", f"{ENV_DEVICE}={w} matches no Vulkan device; the devices are: {listing}"
                )
        else:
            chosen = sorted(found, key=lambda f: (TYPE_RANK.get(f[2].deviceType, 9), f[0]))
        reasons = []
        for i, pd, props, name in chosen:
            if props.apiVersion < _version(1, 2):
                reasons.append(f"{name} supports Vulkan {_version_str(props.apiVersion)} only (1.2 needed)")
                continue
            family = self._compute_family(pd)
            if family is None:
                reasons.append(f"{name} has no compute queue")
                continue
            self._physical = pd
            self._props = props
            self.device_index = i
            self.device_name = name
            self._family = family
            return
        raise BackendUnavailable("vulkan", "no usable Vulkan device: " + "; ".join(reasons))

    def _compute_family(self, pd: Any) -> tuple[int, int] | None:
        n = ffi.new("uint32_t*")
        lib.vkGetPhysicalDeviceQueueFamilyProperties(pd, n, ffi.NULL)
        fams = ffi.new("VkQueueFamilyProperties[]", n[0])
        lib.vkGetPhysicalDeviceQueueFamilyProperties(pd, n, fams)
        best = None
        for i in range(n[0]):
            f = fams[i]
            if not f.queueFlags & 2:  # VK_QUEUE_COMPUTE_BIT
                continue
            # prefer timestamps, then a compute queue without graphics (dedicated compute)
            rank = (f.timestampValidBits == 0, bool(f.queueFlags & 1), i)
            if best is None or rank < best[0]:
                best = (rank, i, f.timestampValidBits)
        return None if best is None else (best[1], best[2])

    def _create_device(self) -> None:
        pd = self._physical
        api13 = self._props.apiVersion >= _version(1, 3)
        # features: query the whole chain and enable what is there (PLATFORM.md)
        f13 = _struct("VkPhysicalDeviceVulkan13Features") if api13 else None
        f12 = _struct("VkPhysicalDeviceVulkan12Features", pNext=f13 if f13 is not None else ffi.NULL)
        f11 = _struct("VkPhysicalDeviceVulkan11Features", pNext=f12)
        f2 = _struct("VkPhysicalDeviceFeatures2", pNext=f11)
        lib.vkGetPhysicalDeviceFeatures2(pd, f2)
        f2.features.robustBufferAccess = 0  # costs speed; kernels stay in bounds themselves
        if f13 is not None:
            f13.robustImageAccess = 0
        self._features = {
            "shaderFloat16": bool(f12.shaderFloat16),
            "shaderInt8": bool(f12.shaderInt8),
            "storageBuffer16BitAccess": bool(f11.storageBuffer16BitAccess),
            "timelineSemaphore": bool(f12.timelineSemaphore),
            "hostQueryReset": bool(f12.hostQueryReset),
            "subgroupSizeControl": bool(f13.subgroupSizeControl) if f13 is not None else False,
            "computeFullSubgroups": bool(f13.computeFullSubgroups) if f13 is not None else False,
            "shaderInt64": bool(f2.features.shaderInt64),
        }
        # properties
        p13 = _struct("VkPhysicalDeviceVulkan13Properties") if api13 else None
        p12 = _struct("VkPhysicalDeviceVulkan12Properties", pNext=p13 if p13 is not None else ffi.NULL)
        p11 = _struct("VkPhysicalDeviceVulkan11Properties", pNext=p12)
        p2 = _struct("VkPhysicalDeviceProperties2", pNext=p11)
        lib.vkGetPhysicalDeviceProperties2(pd, p2)
        mem = ffi.new("VkPhysicalDeviceMemoryProperties*")
        lib.vkGetPhysicalDeviceMemoryProperties(pd, mem)
        self._mem_props = mem
        self._memory_types = [
            (mem.memoryTypes[i].propertyFlags, mem.memoryTypes[i].heapIndex) for i in range(mem.memoryTypeCount)
        ]
        self._heaps = [(mem.memoryHeaps[i].size, mem.memoryHeaps[i].flags) for i in range(mem.memoryHeapCount)]

        family, ts_bits = self._family
        priority = ffi.new("float[]", [1.0])
        queue_info = _new(
            "VkDeviceQueueCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
            queueFamilyIndex=family,
            queueCount=1,
            pQueuePriorities=priority,
        )
        dev_info = _new(
            "VkDeviceCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
            pNext=f2,
            queueCreateInfoCount=1,
            pQueueCreateInfos=queue_info,
        )
        out = ffi.new("VkDevice*")
        _check(lib.vkCreateDevice(pd, dev_info, ffi.NULL, out), "vkCreateDevice")
        self._device = out[0]
        q = ffi.new("VkQueue*")
        lib.vkGetDeviceQueue(self._device, family, 0, q)
        self._queue = q[0]

        limits = self._props.limits
        sg_ops = p11.subgroupSupportedOperations
        sg_compute = bool(p11.subgroupSupportedStages & 0x20)  # VK_SHADER_STAGE_COMPUTE_BIT
        need = SG_BASIC | SG_VOTE | SG_ARITHMETIC | SG_BALLOT | SG_SHUFFLE
        subgroups = sg_compute and (sg_ops & need) == need and p11.subgroupSize > 0
        self._ts_bits = ts_bits
        self._ts_period = float(limits.timestampPeriod)
        timestamps = ts_bits > 0 and self._ts_period > 0
        max_alloc = int(p11.maxMemoryAllocationSize)
        if p13 is not None and p13.maxBufferSize:
            max_alloc = min(max_alloc, int(p13.maxBufferSize))
        self._max_push = int(limits.maxPushConstantsSize)
        self._max_groups = tuple(int(limits.maxComputeWorkGroupCount[i]) for i in range(3))
        self._atom = int(limits.nonCoherentAtomSize)
        self._device_local_host_visible = not any(
            flags & MEM_DEVICE_LOCAL and not flags & MEM_HOST_VISIBLE for flags, _ in self._memory_types
        )
        self.caps = Caps(
            device=self.device_name,
            device_type=DEVICE_TYPES.get(self._props.deviceType, "other"),
            f16=self._features["shaderFloat16"],
            subgroups=subgroups,
            subgroup_size=int(p11.subgroupSize) if subgroups else 0,
            timestamps=timestamps,
            max_buffer_size=max_alloc,
            max_binding_size=int(limits.maxStorageBufferRange),
            max_workgroup_size=int(min(limits.maxComputeWorkGroupInvocations, limits.maxComputeWorkGroupSize[0])),
            max_workgroups=min(self._max_groups),
            offset_alignment=max(4, int(limits.minStorageBufferOffsetAlignment)),
            copy_alignment=4,
            extras={
                "api_version": _version_str(self._props.apiVersion),
                "driver": f"{_string(p12.driverName)} {_string(p12.driverInfo)}".strip(),
                "vendor_id": int(self._props.vendorID),
                "device_id": int(self._props.deviceID),
                "device_index": self.device_index,
                "subgroup_ops": [name for bit, name in SUBGROUP_OPS.items() if sg_ops & bit],
                "min_subgroup_size": int(p13.minSubgroupSize) if p13 is not None else int(p11.subgroupSize),
                "max_subgroup_size": int(p13.maxSubgroupSize) if p13 is not None else int(p11.subgroupSize),
                "timestamp_period_ns": self._ts_period,
                "max_shared_memory": int(limits.maxComputeSharedMemorySize),
                "max_push_constants": self._max_push,
                "max_workgroup_count": self._max_groups,
                "storage_16bit": self._features["storageBuffer16BitAccess"],
                "device_local_host_visible": self._device_local_host_visible,
                "validation": self.validation,
                "features": (),
            },
        )
        # command pool, transfer command buffer + fence
        pool_info = _new(
            "VkCommandPoolCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
            flags=2,  # RESET_COMMAND_BUFFER
            queueFamilyIndex=family,
        )
        pool = ffi.new("VkCommandPool*")
        _check(lib.vkCreateCommandPool(self._device, pool_info, ffi.NULL, pool), "vkCreateCommandPool")
        self._cmd_pool = pool[0]
        self._transfer = (self._alloc_cmdbuf(), self._create_fence())
        # prebuilt barriers
        self._barrier = _new(
            "VkMemoryBarrier",
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
            srcAccessMask=0x40 | 0x1000,  # SHADER_WRITE | TRANSFER_WRITE
            dstAccessMask=0x20 | 0x40 | 0x800 | 0x1000,  # SHADER_READ|WRITE, TRANSFER_READ|WRITE
        )
        self._barrier_in = _new(
            "VkMemoryBarrier",
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
            srcAccessMask=0x10000,  # MEMORY_WRITE
            dstAccessMask=0x8000 | 0x10000,  # MEMORY_READ | MEMORY_WRITE
        )
        self._barrier_out = _new(
            "VkMemoryBarrier",
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
            srcAccessMask=0x40 | 0x1000,
            dstAccessMask=0x2000 | 0x4000,  # HOST_READ | HOST_WRITE
        )
        self._open_pipeline_cache()

    # --- small helpers -------------------------------------------------------------------------
    def _alloc_cmdbuf(self) -> Any:
        info = _new(
            "VkCommandBufferAllocateInfo",
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
            commandPool=self._cmd_pool,
            level=0,  # PRIMARY
            commandBufferCount=1,
        )
        out = ffi.new("VkCommandBuffer[1]")
        _check(lib.vkAllocateCommandBuffers(self._device, info, out), "vkAllocateCommandBuffers")
        return out

    def _create_fence(self) -> Any:
        info = _new("VkFenceCreateInfo", sType=vk.VK_STRUCTURE_TYPE_FENCE_CREATE_INFO)
        out = ffi.new("VkFence[1]")
        _check(lib.vkCreateFence(self._device, info, ffi.NULL, out), "vkCreateFence")
        return out

    # --- pipeline cache ------------------------------------------------------------------------
    def _open_pipeline_cache(self) -> None:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.device_name).strip("-").lower()
        uuid = bytes(ffi.buffer(self._props.pipelineCacheUUID, 16)).hex()[:12]
        self.pipeline_cache_path = _cache_dir() / f"vulkan-pipelines-{slug}-{uuid}.bin"
        data = b""
        try:
            data = self.pipeline_cache_path.read_bytes()
        except OSError:
            pass
        blob = ffi.from_buffer(data) if data else ffi.NULL
        info = _new(
            "VkPipelineCacheCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO,
            initialDataSize=len(data),
            pInitialData=blob,
        )
        out = ffi.new("VkPipelineCache*")
        r = lib.vkCreatePipelineCache(self._device, info, ffi.NULL, out)
        if r < 0 and data:  # a corrupt file: start empty
            info.initialDataSize = 0
            info.pInitialData = ffi.NULL
            data = b""
            r = lib.vkCreatePipelineCache(self._device, info, ffi.NULL, out)
        _check(r, "vkCreatePipelineCache")
        self._cache = out[0]
        self.pipeline_cache_loaded = len(data)

    def save_pipeline_cache(self) -> Path | None:
        """Write the pipeline cache to disk (done on close when new pipelines were created)."""
        if self._cache is None or self.pipeline_cache_path is None:
            return None
        size = ffi.new("size_t*")
        if lib.vkGetPipelineCacheData(self._device, self._cache, size, ffi.NULL) < 0 or size[0] == 0:
            return None
        data = ffi.new("char[]", size[0])
        if lib.vkGetPipelineCacheData(self._device, self._cache, size, data) < 0:
            return None
        path = self.pipeline_cache_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(ffi.buffer(data, size[0]))
            os.replace(tmp, path)
        except OSError as exc:
            warnings.warn(f"could not save the Vulkan pipeline cache to {path}: {exc}", stacklevel=2)
            return None
        self._cache_dirty = False
        return path

    # --- buffers ------------------------------------------------------------------------------
    def _memory_type(self, bits: int, usage: Usage, exclude: frozenset[int] = frozenset()) -> int:
        types = [(i, flags) for i, (flags, _) in enumerate(self._memory_types) if bits >> i & 1 and i not in exclude]
        host = MEM_HOST_VISIBLE | MEM_HOST_COHERENT

        def pick(required: int, score) -> int | None:
            ok = [(score(flags), i) for i, flags in types if flags & required == required]
            return max(ok)[1] if ok else None

        if usage is Usage.DEVICE:
            # device-local and not host-visible where the device has such memory (staging uploads),
            # else device-local and host-visible (UMA, lavapipe: written in place)
            choice = pick(
                MEM_DEVICE_LOCAL,
                lambda f: (not f & MEM_HOST_VISIBLE, bool(f & MEM_HOST_COHERENT), -bin(f).count("1")),
            )
            if choice is None:
                choice = pick(0, lambda f: 0)
        elif usage is Usage.UPLOAD:
            choice = pick(host, lambda f: (bool(f & MEM_DEVICE_LOCAL), not f & MEM_HOST_CACHED))
        else:
            choice = pick(host, lambda f: (bool(f & MEM_HOST_CACHED), not f & MEM_DEVICE_LOCAL))
        if choice is None:
            raise OutOfMemory(f"{self.device_name} has no memory type for {usage.value} buffers")
        return choice

    def _create_buffer(self, size: int, usage: Usage) -> VulkanBuffer:
        self._sweep_deferred()
        buf = VulkanBuffer(self, size, usage)
        info = _new(
            "VkBufferCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
            size=size,
            usage=0x20 | 0x1 | 0x2,  # STORAGE_BUFFER | TRANSFER_SRC | TRANSFER_DST
            sharingMode=0,
        )
        out = ffi.new("VkBuffer*")
        _check(lib.vkCreateBuffer(self._device, info, ffi.NULL, out), "vkCreateBuffer")
        buf.handle = out[0]
        try:
            req = ffi.new("VkMemoryRequirements*")
            lib.vkGetBufferMemoryRequirements(self._device, buf.handle, req)
            self._bind_memory(buf, int(req.size), int(req.alignment), int(req.memoryTypeBits))
        except BaseException:
            lib.vkDestroyBuffer(self._device, buf.handle, ffi.NULL)
            raise
        self._live_buffers.add(buf)
        return buf

    def _bind_memory(self, buf: VulkanBuffer, size: int, align: int, bits: int) -> None:
        excluded: set[int] = set()
        while True:
            type_index = self._memory_type(bits, buf.usage, frozenset(excluded))
            try:
                block, off = self._suballocate(type_index, size, align, buf.usage)
                break
            except OutOfMemory:
                # e.g. the small device-local host-visible (BAR) heap is full: try the next type
                excluded.add(type_index)
                try:
                    self._memory_type(bits, buf.usage, frozenset(excluded))
                except OutOfMemory:
                    raise OutOfMemory(
                        f"{self.device_name}: out of memory allocating a {buf.usage.value} buffer of {size} bytes "
                        f"({self.bytes_allocated} bytes in use); free buffers, shorten the context or pick a "
                        "smaller model"
                    ) from None
        _check(lib.vkBindBufferMemory(self._device, buf.handle, block.memory, off), "vkBindBufferMemory")
        buf.block, buf.block_offset, buf.block_size = block, off, size
        if block.mapped is not None:
            buf.mapped = block.mapped[off : off + buf.size]

    def _suballocate(self, type_index: int, size: int, align: int, usage: Usage) -> tuple[_Block, int]:
        blocks = self._blocks.setdefault(type_index, [])
        block_size = DEVICE_BLOCK if usage is Usage.DEVICE else HOST_BLOCK
        dedicated = size > block_size // 2
        if not dedicated:
            for block in blocks:
                if not block.dedicated:
                    off = block.alloc(size, align)
                    if off is not None:
                        return block, off
        else:
            block_size = -(-size // 65536) * 65536
        block = self._allocate_block(type_index, block_size)
        block.dedicated = dedicated
        blocks.append(block)
        off = block.alloc(size, align)
        assert off is not None
        return block, off

    def _allocate_block(self, type_index: int, size: int) -> _Block:
        info = _new(
            "VkMemoryAllocateInfo",
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
            allocationSize=size,
            memoryTypeIndex=type_index,
        )
        out = ffi.new("VkDeviceMemory*")
        r = lib.vkAllocateMemory(self._device, info, ffi.NULL, out)
        if r in (-1, -2):
            raise OutOfMemory(f"vkAllocateMemory of {size} bytes failed")
        _check(r, "vkAllocateMemory")
        mapped = None
        flags = self._memory_types[type_index][0]
        if flags & MEM_HOST_VISIBLE and flags & MEM_HOST_COHERENT:  # written and read in place, no flushes
            ptr = ffi.new("void**")
            _check(lib.vkMapMemory(self._device, out[0], 0, size, 0, ptr), "vkMapMemory")
            mapped = np.frombuffer(ffi.buffer(ptr[0], size), np.uint8)
        return _Block(out[0], size, type_index, mapped)

    def _free(self, buffer: VulkanBuffer) -> None:
        if self._inflight:
            self._wait()  # the GPU may still use it
        self._free_generation += 1
        self._destroy_buffer(buffer)

    def _destroy_buffer(self, buffer: VulkanBuffer) -> None:
        if buffer.handle is None:
            return
        lib.vkDestroyBuffer(self._device, buffer.handle, ffi.NULL)
        buffer.handle = None
        buffer.mapped = None
        self._live_buffers.discard(buffer)
        block = buffer.block
        if block is not None:
            block.release(buffer.block_offset, buffer.block_size)
            buffer.block = None
            if block.used == 0:
                blocks = self._blocks[block.type_index]
                # keep one empty shared block of each type for reuse, release the others
                if block.dedicated or sum(1 for b in blocks if b.used == 0 and not b.dedicated) > 1:
                    blocks.remove(block)
                    block.mapped = None
                    lib.vkFreeMemory(self._device, block.memory, ffi.NULL)

    def _write(self, buffer: VulkanBuffer, offset: int, data: memoryview) -> None:
        if self._inflight:
            self._wait()
        if buffer.mapped is not None:
            buffer.mapped[offset : offset + data.nbytes] = np.frombuffer(data, np.uint8)
            return
        src = np.frombuffer(data, np.uint8)
        staging = self._staging_buffer()
        for start in range(0, len(src), STAGING_SIZE):
            chunk = src[start : start + STAGING_SIZE]
            staging.mapped[: len(chunk)] = chunk
            self._transfer_copy(staging, buffer, len(chunk), 0, offset + start)

    def _read(self, buffer: VulkanBuffer, offset: int, size: int) -> memoryview | bytes:
        if self._inflight:
            self._wait()
        if buffer.mapped is not None:
            return memoryview(buffer.mapped[offset : offset + size])
        staging = self._staging_buffer()
        out = np.empty(size, np.uint8)
        for start in range(0, size, STAGING_SIZE):
            n = min(STAGING_SIZE, size - start)
            self._transfer_copy(buffer, staging, n, offset + start, 0)
            out[start : start + n] = staging.mapped[:n]
        return memoryview(out)

    def _staging_buffer(self) -> VulkanBuffer:
        if self._staging is None:
            self._staging = self._create_buffer(STAGING_SIZE, Usage.READBACK)
        return self._staging

    def _transfer_copy(self, src: VulkanBuffer, dst: VulkanBuffer, size: int, src_off: int, dst_off: int) -> None:
        """A synchronous buffer-to-buffer copy (staging traffic), ordered after earlier submits."""
        cmdbuf, fence = self._transfer
        cb = cmdbuf[0]
        begin = _new(
            "VkCommandBufferBeginInfo", sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, flags=1
        )  # ONE_TIME_SUBMIT: this buffer is re-recorded every time
        _check(lib.vkBeginCommandBuffer(cb, begin), "vkBeginCommandBuffer")
        lib.vkCmdPipelineBarrier(cb, 0x10000, 0x1000, 0, 1, self._barrier_in, 0, ffi.NULL, 0, ffi.NULL)
        region = _new("VkBufferCopy", srcOffset=src_off, dstOffset=dst_off, size=size)
        lib.vkCmdCopyBuffer(cb, src.handle, dst.handle, 1, region)
        # ALL_COMMANDS after, so later submits and the host see the copy
        lib.vkCmdPipelineBarrier(cb, 0x1000, 0x10000 | 0x4000, 0, 1, self._barrier_out_all(), 0, ffi.NULL, 0, ffi.NULL)
        _check(lib.vkEndCommandBuffer(cb), "vkEndCommandBuffer")
        submit = _new(
            "VkSubmitInfo", sType=vk.VK_STRUCTURE_TYPE_SUBMIT_INFO, commandBufferCount=1, pCommandBuffers=cmdbuf
        )
        _check(lib.vkResetFences(self._device, 1, fence), "vkResetFences")
        _check(lib.vkQueueSubmit(self._queue, 1, submit, fence[0]), "vkQueueSubmit")
        self._wait_fences(1, fence)

    def _barrier_out_all(self) -> Any:
        if not hasattr(self, "_barrier_copy"):
            self._barrier_copy = _new(
                "VkMemoryBarrier",
                sType=vk.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                srcAccessMask=0x1000,  # TRANSFER_WRITE
                dstAccessMask=0x8000 | 0x10000 | 0x2000,  # MEMORY_READ | MEMORY_WRITE | HOST_READ
            )
        return self._barrier_copy

    # --- pipelines ------------------------------------------------------------------------------
    def _create_pipeline(self, spec: KernelSpec, constants: dict[str, Any]) -> VulkanPipeline:
        candidates = V.variants_for(spec.name, constants)
        if not candidates:
            raise UnsupportedKernel(f"the vulkan backend has no GPU kernel for {spec.name}({_fmt(constants)}) yet")
        if not any(V.usable(v, self.caps) for v in candidates):
            raise UnsupportedKernel(
                f"no variant of {spec.name}({_fmt(constants)}) runs on {self.caps.device} "
                f"(capabilities: {', '.join(sorted(V.capabilities(self.caps))) or 'none'})"
            )
        n_bindings = len(spec.bindings_for(constants))
        push = 4 * len(spec.params)
        if push > self._max_push:
            raise LimitExceeded(
                f"{spec.name} needs {push} bytes of push constants; {self.device_name} has {self._max_push}"
            )
        set_layout, layout = self._layout(n_bindings, push)
        return VulkanPipeline(spec, constants, set_layout, layout)

    def _layout(self, n_bindings: int, push: int) -> tuple[Any, Any]:
        key = (n_bindings, push)
        if key not in self._layouts:
            bindings = ffi.new("VkDescriptorSetLayoutBinding[]", n_bindings)
            for i in range(n_bindings):
                bindings[i].binding = i
                bindings[i].descriptorType = vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
                bindings[i].descriptorCount = 1
                bindings[i].stageFlags = vk.VK_SHADER_STAGE_COMPUTE_BIT
            info = _new(
                "VkDescriptorSetLayoutCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                bindingCount=n_bindings,
                pBindings=bindings,
            )
            set_layout = ffi.new("VkDescriptorSetLayout*")
            _check(
                lib.vkCreateDescriptorSetLayout(self._device, info, ffi.NULL, set_layout), "vkCreateDescriptorSetLayout"
            )
            rng = _new("VkPushConstantRange", stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT, offset=0, size=push)
            layouts = ffi.new("VkDescriptorSetLayout[1]", [set_layout[0]])
            pl_info = _new(
                "VkPipelineLayoutCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                setLayoutCount=1,
                pSetLayouts=layouts,
                pushConstantRangeCount=1 if push else 0,
                pPushConstantRanges=rng if push else ffi.NULL,
            )
            layout = ffi.new("VkPipelineLayout*")
            r = lib.vkCreatePipelineLayout(self._device, pl_info, ffi.NULL, layout)
            if r < 0:
                lib.vkDestroyDescriptorSetLayout(self._device, set_layout[0], ffi.NULL)
                _check(r, "vkCreatePipelineLayout")
            self._layouts[key] = (set_layout[0], layout[0])
        return self._layouts[key]

    def _module(self, variant: V.Variant) -> Any:
        if variant.name not in self._modules:
            code = V.spirv(variant)
            words = ffi.new("uint32_t[]", len(code) // 4)
            ffi.memmove(words, code, len(code))
            info = _new(
                "VkShaderModuleCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                codeSize=len(code),
                pCode=words,
            )
            out = ffi.new("VkShaderModule*")
            r = lib.vkCreateShaderModule(self._device, info, ffi.NULL, out)
            if r < 0:
                raise KernelCompileError(f"vkCreateShaderModule({variant.name}) failed: {_result_name(r)}")
            self._modules[variant.name] = out[0]
        return self._modules[variant.name]

    def _vk_pipeline(self, pipe: VulkanPipeline, variant: V.Variant) -> Any:
        handle = pipe.handles.get(variant.name)
        if handle is not None:
            return handle
        entry = ffi.new("char[]", b"main")
        pnext = ffi.NULL
        flags = 0
        sg_info = None
        if variant.subgroup_size and self._features["subgroupSizeControl"]:
            sg_info = _struct(
                "VkPipelineShaderStageRequiredSubgroupSizeCreateInfo", requiredSubgroupSize=variant.subgroup_size
            )
            pnext = sg_info
            if self._features["computeFullSubgroups"]:
                flags = 0x2  # REQUIRE_FULL_SUBGROUPS
        stage = _new(
            "VkPipelineShaderStageCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
            pNext=pnext,
            flags=flags,
            stage=vk.VK_SHADER_STAGE_COMPUTE_BIT,
            module=self._module(variant),
            pName=entry,
        )
        info = _new(
            "VkComputePipelineCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
            stage=stage[0],
            layout=pipe.layout,
            basePipelineIndex=-1,
        )
        out = ffi.new("VkPipeline*")
        with self.tracer.span("vkCreateComputePipelines", variant=variant.name):
            r = lib.vkCreateComputePipelines(self._device, self._cache, 1, info, ffi.NULL, out)
        del sg_info, entry
        if r < 0:
            raise KernelCompileError(f"creating the pipeline for {variant.name} failed: {_result_name(r)}")
        pipe.handles[variant.name] = out[0]
        self._vk_pipelines.append(out[0])
        self.pipelines_created += 1
        self._cache_dirty = True
        return out[0]

    def supports(self, kernel_name: str) -> bool:
        return V.supported(kernel_name, self.caps)

    # --- command lists ----------------------------------------------------------------------------
    def _prepare(self, cmd: CommandList) -> _Prepared:
        self._sweep_deferred()
        prep = _Prepared()
        ops = cmd.ops
        plan: list[tuple] = []
        buffers: dict[int, VulkanBuffer] = {}
        n_sets = 0
        n_desc = 0
        no_sg = V.subgroups_disabled()
        for op in ops:
            if isinstance(op, Dispatch):
                pipe: VulkanPipeline = op.pipeline  # type: ignore[assignment]
                key = (op.param_bytes, no_sg)
                entry = pipe.chosen.get(key)
                if entry is None:
                    entry = pipe.chosen[key] = self._choose(pipe, op)
                variant, handle, grid = entry
                plan.append((op, variant, handle, grid))
                prep.variants.append(variant.name)
                n_sets += 1
                n_desc += len(op.tensors)
                for t in op.tensors:
                    buffers[id(t.buffer)] = t.buffer
            else:
                plan.append((op, None, None, None))
                buffers[id(op.src)] = op.src
                buffers[id(op.dst)] = op.dst
        prep.buffers = tuple(buffers.values())
        prep.generation = self._free_generation
        prep.dispatches = n_sets
        try:
            self._record(prep, plan, n_sets, n_desc)
        except BaseException:
            self._release(prep)
            raise
        self._preps.add(prep)
        weakref.finalize(cmd, self._release_later, prep)
        return prep

    def _choose(self, pipe: VulkanPipeline, op: Dispatch) -> tuple[V.Variant, Any, tuple[int, int, int]]:
        variant = V.select(pipe.spec.name, pipe.constants, op.params, self.caps)
        handle = self._vk_pipeline(pipe, variant)
        grid = tuple(int(g) for g in variant.grid(op.params))
        if any(g > m for g, m in zip(grid, self._max_groups, strict=True)) or min(grid) < 1:
            raise LimitExceeded(f"{op.label}: grid {grid} exceeds {self.device_name}'s {self._max_groups}")
        return variant, handle, grid  # type: ignore[return-value]

    def _record(self, prep: _Prepared, plan: list[tuple], n_sets: int, n_desc: int) -> None:
        dev = self._device
        keep = prep.keep
        sets = None
        if n_sets:
            size = _new(
                "VkDescriptorPoolSize", type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=max(n_desc, 1)
            )
            pool_info = _new(
                "VkDescriptorPoolCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                maxSets=n_sets,
                poolSizeCount=1,
                pPoolSizes=size,
            )
            pool = ffi.new("VkDescriptorPool*")
            _check(lib.vkCreateDescriptorPool(dev, pool_info, ffi.NULL, pool), "vkCreateDescriptorPool")
            prep.pool = pool[0]
            layouts = ffi.new("VkDescriptorSetLayout[]", [p[0].pipeline.set_layout for p in plan if p[1] is not None])
            sets = ffi.new("VkDescriptorSet[]", n_sets)
            alloc = _new(
                "VkDescriptorSetAllocateInfo",
                sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                descriptorPool=prep.pool,
                descriptorSetCount=n_sets,
                pSetLayouts=layouts,
            )
            _check(lib.vkAllocateDescriptorSets(dev, alloc, sets), "vkAllocateDescriptorSets")
            infos = ffi.new("VkDescriptorBufferInfo[]", max(n_desc, 1))
            writes = ffi.new("VkWriteDescriptorSet[]", n_sets)
            j = k = 0
            for op, variant, _, _ in plan:
                if variant is None:
                    continue
                w = writes[j]
                w.sType = vk.VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET
                w.dstSet = sets[j]
                w.dstBinding = 0
                w.descriptorCount = len(op.tensors)
                w.descriptorType = vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
                w.pBufferInfo = infos + k
                for t in op.tensors:
                    info = infos[k]
                    info.buffer = t.buffer.handle
                    info.offset = t.offset
                    info.range = max(4, min(-(-_nbytes(t) // 4) * 4, t.buffer.size - t.offset))
                    k += 1
                j += 1
            lib.vkUpdateDescriptorSets(dev, n_sets, writes, 0, ffi.NULL)
            prep.sets = sets
        timestamps = self.caps.timestamps and (self.timestamps or self.tracer.enabled)
        n_ops = len(plan)
        if timestamps and n_ops:
            qinfo = _new(
                "VkQueryPoolCreateInfo",
                sType=vk.VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                queryType=vk.VK_QUERY_TYPE_TIMESTAMP,
                queryCount=n_ops + 1,
            )
            qp = ffi.new("VkQueryPool*")
            _check(lib.vkCreateQueryPool(dev, qinfo, ffi.NULL, qp), "vkCreateQueryPool")
            prep.query_pool = qp[0]
        prep.cmdbuf_p = self._alloc_cmdbuf()
        prep.cmdbuf = cb = prep.cmdbuf_p[0]
        fence = self._create_fence()
        prep.fence_p, prep.fence = fence, fence[0]
        # all push-constant bytes in one C array
        push = ffi.new("char[]", b"".join(op.param_bytes for op, v, _, _ in plan if v is not None) or b"\0")
        keep += [push, sets]
        begin = _new("VkCommandBufferBeginInfo", sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, flags=0)
        _check(lib.vkBeginCommandBuffer(cb, begin), "vkBeginCommandBuffer")
        qp = prep.query_pool
        if qp is not None:
            lib.vkCmdResetQueryPool(cb, qp, 0, n_ops + 1)
        # earlier submits' writes (any stage) become visible to this list
        lib.vkCmdPipelineBarrier(cb, 0x10000, 0x800 | 0x1000, 0, 1, self._barrier_in, 0, ffi.NULL, 0, ffi.NULL)
        if qp is not None:
            lib.vkCmdWriteTimestamp(cb, 0x2000, qp, 0)  # BOTTOM_OF_PIPE
        barrier = self._barrier
        stages = 0x800 | 0x1000  # COMPUTE_SHADER | TRANSFER
        bind_pipeline = lib.vkCmdBindPipeline
        bind_sets = lib.vkCmdBindDescriptorSets
        push_constants = lib.vkCmdPushConstants
        dispatch = lib.vkCmdDispatch
        written: list[tuple[int, int, int]] = []
        read: list[tuple[int, int, int]] = []
        current = None
        j = 0
        pc_off = 0
        labels = prep.labels
        region = _new("VkBufferCopy")
        keep.append(region)
        for i, (op, variant, handle, grid) in enumerate(plan):
            if variant is not None:
                reads, writes_ = _ranges(op)
            else:
                reads = [(id(op.src), op.src_offset, op.src_offset + op.size)]
                writes_ = [(id(op.dst), op.dst_offset, op.dst_offset + op.size)]
            if _overlaps(written, reads) or _overlaps(written, writes_) or _overlaps(read, writes_):
                lib.vkCmdPipelineBarrier(cb, stages, stages, 0, 1, barrier, 0, ffi.NULL, 0, ffi.NULL)
                prep.barriers += 1
                written = []
                read = []
            written += writes_
            read += reads
            if variant is not None:
                pipe = op.pipeline
                if handle != current:
                    bind_pipeline(cb, 1, handle)  # VK_PIPELINE_BIND_POINT_COMPUTE
                    current = handle
                bind_sets(cb, 1, pipe.layout, 0, 1, sets + j, 0, ffi.NULL)
                if pipe.push_size:
                    push_constants(cb, pipe.layout, 0x20, 0, pipe.push_size, push + pc_off)
                    pc_off += pipe.push_size
                dispatch(cb, grid[0], grid[1], grid[2])
                j += 1
                labels.append(op.label)
            else:
                region.srcOffset, region.dstOffset, region.size = op.src_offset, op.dst_offset, op.size
                lib.vkCmdCopyBuffer(cb, op.src.handle, op.dst.handle, 1, region)
                labels.append("copy")
            if qp is not None:
                lib.vkCmdWriteTimestamp(cb, 0x2000, qp, i + 1)
        # make every write available to the host (and to later submits)
        lib.vkCmdPipelineBarrier(cb, stages, 0x4000 | 0x10000, 0, 1, self._barrier_out, 0, ffi.NULL, 0, ffi.NULL)
        _check(lib.vkEndCommandBuffer(cb), "vkEndCommandBuffer")
        prep.submit_info = _new(
            "VkSubmitInfo",
            sType=vk.VK_STRUCTURE_TYPE_SUBMIT_INFO,
            commandBufferCount=1,
            pCommandBuffers=prep.cmdbuf_p,
        )

    def _submit(self, cmd: CommandList) -> None:
        prep: _Prepared = cmd.prepared
        if prep.pending:
            self._wait()  # a command buffer is not submitted again while it runs
        if prep.generation != self._free_generation:
            if any(b.freed for b in prep.buffers):
                raise ClosedError(
                    "a buffer this command list uses was freed; record a new command list with live buffers"
                )
            prep.generation = self._free_generation
        r = lib.vkResetFences(self._device, 1, prep.fence_p)
        if r:
            _check(r, "vkResetFences")
        r = lib.vkQueueSubmit(self._queue, 1, prep.submit_info, prep.fence)
        if r:
            _check(r, "vkQueueSubmit")
        prep.pending = True
        self._inflight.append(prep)

    def _wait(self) -> None:
        inflight = self._inflight
        if not inflight:
            return
        if len(inflight) == 1:
            self._wait_fences(1, inflight[0].fence_p)
        else:
            self._wait_fences(len(inflight), ffi.new("VkFence[]", [p.fence for p in inflight]))
        done = list(inflight)
        inflight.clear()
        for p in done:
            p.pending = False
            p.completed += 1
        if self.tracer.enabled:
            for p in done:
                if p.query_pool is not None:
                    self.tracer.add_gpu(self._timings(p))
        if self._deferred:
            self._sweep_deferred()

    def _wait_fences(self, n: int, fences: Any) -> None:
        r = lib.vkWaitForFences(self._device, n, fences, 1, WAIT_TIMEOUT_NS)
        if r == VK_TIMEOUT:
            raise ShaderbayError(
                f"GPU work did not finish within {WAIT_TIMEOUT_NS // 10**9} s on {self.device_name}; "
                "the device may be hung or the workload far too large for it"
            )
        if r:
            _check(r, "vkWaitForFences")

    def gpu_timings(self, cmd: CommandList) -> list[tuple[str, float]] | None:
        prep = cmd.prepared
        if not isinstance(prep, _Prepared) or prep.query_pool is None or prep.released:
            return None
        if prep.pending:
            self.wait()
        if prep.completed == 0:
            return None
        return self._timings(prep)

    def _timings(self, prep: _Prepared) -> list[tuple[str, float]]:
        n = len(prep.labels) + 1
        data = ffi.new("uint64_t[]", n)
        r = lib.vkGetQueryPoolResults(self._device, prep.query_pool, 0, n, 8 * n, data, 8, 0x1 | 0x2)  # 64 | WAIT
        _check(r, "vkGetQueryPoolResults")
        mask = (1 << self._ts_bits) - 1 if self._ts_bits < 64 else (1 << 64) - 1
        ts = [int(data[i]) & mask for i in range(n)]
        return [(label, ((ts[i + 1] - ts[i]) & mask) * self._ts_period) for i, label in enumerate(prep.labels)]

    # --- releasing ------------------------------------------------------------------------------
    def _release_later(self, prep: _Prepared) -> None:
        """The command list was garbage-collected: release its Vulkan objects once it is idle."""
        if self.closed or prep.released:
            return
        if prep.pending:
            self._deferred.append(prep)
        else:
            self._release(prep)

    def _sweep_deferred(self) -> None:
        if self._deferred:
            idle = [p for p in self._deferred if not p.pending]
            self._deferred = [p for p in self._deferred if p.pending]
            for p in idle:
                self._release(p)

    def _release(self, prep: _Prepared) -> None:
        if prep.released or self._device is None:
            return
        prep.released = True
        dev = self._device
        if prep.cmdbuf is not None:
            lib.vkFreeCommandBuffers(dev, self._cmd_pool, 1, prep.cmdbuf_p)
        if prep.pool is not None:
            lib.vkDestroyDescriptorPool(dev, prep.pool, ffi.NULL)
        if prep.query_pool is not None:
            lib.vkDestroyQueryPool(dev, prep.query_pool, ffi.NULL)
        if prep.fence is not None:
            lib.vkDestroyFence(dev, prep.fence, ffi.NULL)
        prep.keep = []
        prep.buffers = ()
        self._preps.discard(prep)

    def _close(self) -> None:
        self._destroy_all()

    def _destroy_all(self) -> None:
        dev = self._device
        if dev is not None:
            lib.vkDeviceWaitIdle(dev)
            self._inflight.clear()
            for prep in list(self._preps) + self._deferred:
                prep.pending = False
                self._release(prep)
            self._deferred.clear()
            if self._transfer is not None:
                lib.vkFreeCommandBuffers(dev, self._cmd_pool, 1, self._transfer[0])
                lib.vkDestroyFence(dev, self._transfer[1][0], ffi.NULL)
                self._transfer = None
            for handle in self._vk_pipelines:
                lib.vkDestroyPipeline(dev, handle, ffi.NULL)
            self._vk_pipelines.clear()
            for p in self._pipelines.values():
                if isinstance(p, VulkanPipeline):
                    p.handles.clear()
            for set_layout, layout in self._layouts.values():
                lib.vkDestroyPipelineLayout(dev, layout, ffi.NULL)
                lib.vkDestroyDescriptorSetLayout(dev, set_layout, ffi.NULL)
            self._layouts.clear()
            for module in self._modules.values():
                lib.vkDestroyShaderModule(dev, module, ffi.NULL)
            self._modules.clear()
            if self._cache is not None:
                if self._cache_dirty:
                    self.save_pipeline_cache()
                lib.vkDestroyPipelineCache(dev, self._cache, ffi.NULL)
                self._cache = None
            for buf in list(self._live_buffers):
                lib.vkDestroyBuffer(dev, buf.handle, ffi.NULL)
                buf.handle = None
                buf.mapped = None
                buf.block = None
                buf.freed = True
            self._live_buffers.clear()
            self._staging = None
            for blocks in self._blocks.values():
                for block in blocks:
                    block.mapped = None
                    lib.vkFreeMemory(dev, block.memory, ffi.NULL)
            self._blocks.clear()
            if getattr(self, "_cmd_pool", None) is not None:
                lib.vkDestroyCommandPool(dev, self._cmd_pool, ffi.NULL)
                self._cmd_pool = None
            lib.vkDestroyDevice(dev, ffi.NULL)
            self._device = None
        if self._messenger is not None:
            self._destroy_messenger_fn(self._instance, self._messenger, ffi.NULL)
            self._messenger = None
        if self._instance is not None:
            lib.vkDestroyInstance(self._instance, ffi.NULL)
            self._instance = None
        _LIVE.discard(self)

    def stats(self) -> dict[str, Any]:
        """Memory blocks and pipelines, for benches and tests."""
        return {
            "blocks": sum(len(b) for b in self._blocks.values()),
            "block_bytes": sum(b.size for bl in self._blocks.values() for b in bl),
            "buffers": len(self._live_buffers),
            "pipelines_created": self.pipelines_created,
            "pipeline_cache_loaded": self.pipeline_cache_loaded,
        }

    @staticmethod
    def prepared_info(cmd: CommandList) -> dict[str, Any]:
        """How a submitted command list was recorded: dispatches, barriers, variants."""
        prep = cmd.prepared
        if not isinstance(prep, _Prepared):
            return {}
        return {
            "dispatches": prep.dispatches,
            "barriers": prep.barriers,
            "variants": list(prep.variants),
            "timestamps": prep.query_pool is not None,
        }


def _ranges(op: Dispatch) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    reads, writes = [], []
    for (reading, writing), t in zip(op.pipeline.access, op.tensors, strict=True):
        r = (id(t.buffer), t.offset, t.offset + _nbytes(t))
        if reading:
            reads.append(r)
        if writing:
            writes.append(r)
    return reads, writes


_ITEMSIZE = {"f32": 4, "u32": 4, "i32": 4, "f16": 2, "bf16": 2, "u8": 1}


def _nbytes(t: Any) -> int:
    # Tensor.nbytes goes through np.prod: ~20 us; this is what recording needs, fast
    n = _ITEMSIZE.get(t.dtype) or t.nbytes // max(1, math.prod(t.shape))
    return math.prod(t.shape) * n


def _overlaps(done: list[tuple[int, int, int]], new: list[tuple[int, int, int]]) -> bool:
    for key, s, e in new:
        for k2, s2, e2 in done:
            if key == k2 and s < e2 and s2 < e:
                return True
    return False


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _fmt(constants: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in constants.items())


_LIVE: weakref.WeakSet[VulkanBackend] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # save pipeline caches and release devices of backends nobody closed
    for backend in list(_LIVE):
        try:
            backend.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def create(**kwargs: Any) -> VulkanBackend:
    """A Vulkan backend on the best device (or SHADERBAY_VULKAN_DEVICE); BackendUnavailable if none."""
    _load()
    try:
        return VulkanBackend(**kwargs)
    except BackendUnavailable:
        raise
    except ShaderbayError as exc:
        raise BackendUnavailable("vulkan", str(exc)) from exc


__all__ = ["VulkanBackend", "VulkanBuffer", "VulkanPipeline", "create"]
