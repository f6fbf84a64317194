"""The instance, the validation messenger, the chosen physical device, the logical device, its queue.

`Device` picks a physical device (SHADERBAY_VULKAN_DEVICE by index or name, else discrete
before integrated before software), enables every feature it has, and describes it as `Caps`.
It also holds the command pool, fences and fence waits that recording and staging share.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from shaderbay.backend import Caps
from shaderbay.errors import BackendUnavailable, ShaderbayError

from .coopmat import CoopMatrix
from .loader import (
    check,
    ffi,
    lib,
    new,
    result_name,
    string,
    version,
    version_str,
    vk,
)
from .statistics import PipelineStatistics

ENV_DEVICE = "SHADERBAY_VULKAN_DEVICE"
ENV_VALIDATE = "SHADERBAY_VULKAN_VALIDATE"
VALIDATION_LAYER = "VK_LAYER_KHRONOS_validation"
WAIT_TIMEOUT_NS = 600 * 10**9

SUBGROUP_OPS = {
    vk.VK_SUBGROUP_FEATURE_BASIC_BIT: "basic",
    vk.VK_SUBGROUP_FEATURE_VOTE_BIT: "vote",
    vk.VK_SUBGROUP_FEATURE_ARITHMETIC_BIT: "arithmetic",
    vk.VK_SUBGROUP_FEATURE_BALLOT_BIT: "ballot",
    vk.VK_SUBGROUP_FEATURE_SHUFFLE_BIT: "shuffle",
    vk.VK_SUBGROUP_FEATURE_SHUFFLE_RELATIVE_BIT: "shuffle_relative",
    vk.VK_SUBGROUP_FEATURE_CLUSTERED_BIT: "clustered",
    vk.VK_SUBGROUP_FEATURE_QUAD_BIT: "quad",
}
SUBGROUP_NEEDED = (  # what the _sg kernels use
    vk.VK_SUBGROUP_FEATURE_BASIC_BIT
    | vk.VK_SUBGROUP_FEATURE_VOTE_BIT
    | vk.VK_SUBGROUP_FEATURE_ARITHMETIC_BIT
    | vk.VK_SUBGROUP_FEATURE_BALLOT_BIT
    | vk.VK_SUBGROUP_FEATURE_SHUFFLE_BIT
)
DEVICE_TYPES = {
    vk.VK_PHYSICAL_DEVICE_TYPE_OTHER: "other",
    vk.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: "integrated",
    vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: "discrete",
    vk.VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: "other",
    vk.VK_PHYSICAL_DEVICE_TYPE_CPU: "software",
}
TYPE_RANK = {  # discrete first
    vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: 0,
    vk.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: 1,
    vk.VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: 2,
    vk.VK_PHYSICAL_DEVICE_TYPE_CPU: 3,
    vk.VK_PHYSICAL_DEVICE_TYPE_OTHER: 4,
}
SEVERITY_ERROR = vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT
SEVERITY_WARNING = vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT
NO_DRIVER = "no Vulkan driver found: install a GPU driver, or mesa-vulkan-drivers for a software one"


@functools.cache
def _messenger_callback() -> Any:
    """The process's one debug-messenger callback (made on first use); pUserData is a message list."""
    return ffi.callback("PFN_vkDebugUtilsMessengerCallbackEXT", _on_message)


def _on_message(severity: int, types: int, data: Any, user: Any) -> int:
    try:
        text = string(data.pMessage) if data.pMessage != ffi.NULL else "?"
        level = "error" if severity >= SEVERITY_ERROR else "warning" if severity >= SEVERITY_WARNING else "info"
        ffi.from_handle(user).append(f"[{level}] {text}")
    except Exception:  # noqa: BLE001 - never raise into the driver
        pass
    return 0


class Device:
    """A logical device with one compute queue, on the chosen physical device."""

    def __init__(self, wanted: str | int | None, validate: bool):
        self.messages: list[str] = []  # the validation layer's, when validating
        self.validation = False
        self.instance: Any = None
        self.handle: Any = None  # VkDevice
        self.cmd_pool: Any = None
        self._messenger: Any = None
        try:
            self._create_instance(validate)
            self._choose(wanted)
            self._create_device()
        except BaseException:
            self.close()
            raise

    def _create_instance(self, validate: bool) -> None:
        count = ffi.new("uint32_t*")
        lib.vkEnumerateInstanceLayerProperties(count, ffi.NULL)
        layer_props = ffi.new("VkLayerProperties[]", count[0])
        lib.vkEnumerateInstanceLayerProperties(count, layer_props)
        layers = {string(layer_props[i].layerName) for i in range(count[0])}

        def extensions(layer: str | None) -> set[str]:
            name = ffi.new("char[]", layer.encode()) if layer else ffi.NULL
            n = ffi.new("uint32_t*")
            lib.vkEnumerateInstanceExtensionProperties(name, n, ffi.NULL)
            props = ffi.new("VkExtensionProperties[]", n[0])
            lib.vkEnumerateInstanceExtensionProperties(name, n, props)
            return {string(props[i].extensionName) for i in range(n[0])}

        available = extensions(None)
        want_layers: list[str] = []
        want_ext: list[str] = []
        flags = 0
        if "VK_KHR_portability_enumeration" in available:
            want_ext.append("VK_KHR_portability_enumeration")
            flags |= vk.VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR
        pnext = ffi.NULL  # every struct of the chain stays in a local until vkCreateInstance returns
        messenger_info = None
        if validate:
            if VALIDATION_LAYER not in layers:
                warnings.warn(
                    f"{ENV_VALIDATE}=1 but {VALIDATION_LAYER} is not installed "
                    "(apt install vulkan-validationlayers); running without validation",
                    stacklevel=4,
                )
            else:
                want_layers.append(VALIDATION_LAYER)
                layer_ext = extensions(VALIDATION_LAYER)
                if "VK_EXT_debug_utils" in available | layer_ext:
                    want_ext.append("VK_EXT_debug_utils")
                    self._sink = ffi.new_handle(self.messages)  # pUserData: alive as long as the messenger
                    # chained to the instance too, so instance creation and destruction are reported
                    messenger_info = new(
                        "VkDebugUtilsMessengerCreateInfoEXT",
                        sType=vk.VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
                        messageSeverity=SEVERITY_WARNING | SEVERITY_ERROR,
                        messageType=vk.VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT
                        | vk.VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT
                        | vk.VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
                        pfnUserCallback=_messenger_callback(),
                        pUserData=self._sink,
                    )
                    pnext = messenger_info
                if "VK_EXT_validation_features" in layer_ext:
                    want_ext.append("VK_EXT_validation_features")
                    enables = ffi.new(
                        "VkValidationFeatureEnableEXT[]",
                        [vk.VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT],
                    )
                    features = new(
                        "VkValidationFeaturesEXT",
                        sType=vk.VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
                        pNext=pnext,
                        enabledValidationFeatureCount=1,
                        pEnabledValidationFeatures=enables,
                    )
                    pnext = features
                self.validation = True
        loader_version = ffi.new("uint32_t*")
        lib.vkEnumerateInstanceVersion(loader_version)
        if loader_version[0] < version(1, 2):
            raise BackendUnavailable(
                "vulkan", f"the Vulkan loader is version {version_str(loader_version[0])}; shaderbay needs 1.2 or newer"
            )
        app_name = ffi.new("char[]", b"shaderbay")
        app = new(
            "VkApplicationInfo",
            sType=vk.VK_STRUCTURE_TYPE_APPLICATION_INFO,
            pApplicationName=app_name,
            pEngineName=app_name,
            apiVersion=version(1, 3),
        )
        layer_c = [ffi.new("char[]", s.encode()) for s in want_layers]
        ext_c = [ffi.new("char[]", s.encode()) for s in want_ext]
        layer_arr = ffi.new("char*[]", layer_c)
        ext_arr = ffi.new("char*[]", ext_c)
        info = new(
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
        if r == vk.VK_ERROR_INCOMPATIBLE_DRIVER:
            raise BackendUnavailable("vulkan", NO_DRIVER)
        if r < 0:
            raise BackendUnavailable("vulkan", f"vkCreateInstance failed ({result_name(r)}); check the Vulkan driver")
        self.instance = out[0]
        if messenger_info is not None:
            create = ffi.cast(
                "PFN_vkCreateDebugUtilsMessengerEXT",
                lib.vkGetInstanceProcAddr(self.instance, b"vkCreateDebugUtilsMessengerEXT"),
            )
            self._destroy_messenger = ffi.cast(
                "PFN_vkDestroyDebugUtilsMessengerEXT",
                lib.vkGetInstanceProcAddr(self.instance, b"vkDestroyDebugUtilsMessengerEXT"),
            )
            messenger = ffi.new("VkDebugUtilsMessengerEXT*")
            messenger_info.pNext = ffi.NULL
            check(create(self.instance, messenger_info, ffi.NULL, messenger), "vkCreateDebugUtilsMessengerEXT")
            self._messenger = messenger[0]

    def _choose(self, wanted: str | int | None) -> None:
        count = ffi.new("uint32_t*")
        check(lib.vkEnumeratePhysicalDevices(self.instance, count, ffi.NULL), "vkEnumeratePhysicalDevices")
        devices = ffi.new("VkPhysicalDevice[]", count[0])
        check(lib.vkEnumeratePhysicalDevices(self.instance, count, devices), "vkEnumeratePhysicalDevices")
        if count[0] == 0:
            raise BackendUnavailable("vulkan", NO_DRIVER)
        found = []
        for i in range(count[0]):
            props = ffi.new("VkPhysicalDeviceProperties*")
            lib.vkGetPhysicalDeviceProperties(devices[i], props)
            found.append((i, devices[i], props, string(props.deviceName)))
        listing = "; ".join(f"{i}: {name} ({DEVICE_TYPES.get(p.deviceType, '?')})" for i, _, p, name in found)
        w = "" if wanted is None else str(wanted).strip()
        if w:
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
            if props.apiVersion < version(1, 2):
                reasons.append(f"{name} supports Vulkan {version_str(props.apiVersion)} only (1.2 needed)")
                continue
            family = _compute_family(pd)
            if family is None:
                reasons.append(f"{name} has no compute queue")
                continue
            self._physical, self.props, self.index, self.name = pd, props, i, name
            self.family, self.ts_bits = family
            return
        raise BackendUnavailable("vulkan", "no usable Vulkan device: " + "; ".join(reasons))

    def _create_device(self) -> None:
        pd = self._physical
        api13 = self.props.apiVersion >= version(1, 3)
        # the queried feature chain goes to vkCreateDevice as is: every feature there is, enabled
        f2, f11, f12, f13 = _query(pd, "Features", api13)
        f2.features.robustBufferAccess = 0  # costs speed; kernels stay in bounds themselves
        f13.robustImageAccess = 0
        self.subgroup_size_control = bool(f13.subgroupSizeControl)
        self.full_subgroups = bool(f13.computeFullSubgroups)
        coop = CoopMatrix(self.instance, pd)
        coop.chain(f2)
        self.statistics = PipelineStatistics(pd)
        self.statistics.chain(f2)
        _, p11, p12, p13 = _query(pd, "Properties", api13)
        mem = ffi.new("VkPhysicalDeviceMemoryProperties*")
        lib.vkGetPhysicalDeviceMemoryProperties(pd, mem)
        self.memory_types = [int(mem.memoryTypes[i].propertyFlags) for i in range(mem.memoryTypeCount)]

        ext_c = [ffi.new("char[]", e.encode()) for e in coop.extensions + self.statistics.extensions]
        ext_arr = ffi.new("char*[]", ext_c) if ext_c else ffi.NULL
        priority = ffi.new("float[]", [1.0])
        queue_info = new(
            "VkDeviceQueueCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
            queueFamilyIndex=self.family,
            queueCount=1,
            pQueuePriorities=priority,
        )
        dev_info = new(
            "VkDeviceCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
            pNext=f2,
            queueCreateInfoCount=1,
            pQueueCreateInfos=queue_info,
            enabledExtensionCount=len(ext_c),
            ppEnabledExtensionNames=ext_arr,
        )
        out = ffi.new("VkDevice*")
        check(lib.vkCreateDevice(pd, dev_info, ffi.NULL, out), "vkCreateDevice")
        self.handle = out[0]
        self.statistics.bind(self.handle)
        q = ffi.new("VkQueue*")
        lib.vkGetDeviceQueue(self.handle, self.family, 0, q)
        self.queue = q[0]
        pool_info = new(
            "VkCommandPoolCreateInfo",
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
            flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,  # staging and queued writes re-record theirs
            queueFamilyIndex=self.family,
        )
        pool = ffi.new("VkCommandPool*")
        check(lib.vkCreateCommandPool(self.handle, pool_info, ffi.NULL, pool), "vkCreateCommandPool")
        self.cmd_pool = pool[0]

        limits = self.props.limits
        self.ts_period = float(limits.timestampPeriod)
        self.max_groups = tuple(int(limits.maxComputeWorkGroupCount[i]) for i in range(3))
        sg_ops = p11.subgroupSupportedOperations
        sg_compute = bool(p11.subgroupSupportedStages & vk.VK_SHADER_STAGE_COMPUTE_BIT)
        subgroups = sg_compute and (sg_ops & SUBGROUP_NEEDED) == SUBGROUP_NEEDED and p11.subgroupSize > 0
        max_alloc = int(p11.maxMemoryAllocationSize)
        if api13 and p13.maxBufferSize:
            max_alloc = min(max_alloc, int(p13.maxBufferSize))
        sg_range = (p13.minSubgroupSize, p13.maxSubgroupSize) if api13 else (p11.subgroupSize, p11.subgroupSize)
        self.caps = Caps(
            device=self.name,
            device_type=DEVICE_TYPES.get(self.props.deviceType, "other"),
            f16=bool(f12.shaderFloat16),
            subgroups=subgroups,
            subgroup_size=int(p11.subgroupSize) if subgroups else 0,
            timestamps=self.ts_bits > 0 and self.ts_period > 0,
            max_buffer_size=max_alloc,
            max_binding_size=int(limits.maxStorageBufferRange),
            max_workgroup_size=int(min(limits.maxComputeWorkGroupInvocations, limits.maxComputeWorkGroupSize[0])),
            max_workgroups=min(self.max_groups),
            offset_alignment=max(4, int(limits.minStorageBufferOffsetAlignment)),
            max_shared_memory=int(limits.maxComputeSharedMemorySize),
            max_push_constants=int(limits.maxPushConstantsSize),
            max_storage_buffers=int(limits.maxPerStageDescriptorStorageBuffers),
            # the shaders that use them need the Vulkan memory model too (GL_KHR_memory_scope_semantics)
            cooperative_matrix=coop.shapes if f12.vulkanMemoryModel else (),
            extras={
                "api_version": version_str(self.props.apiVersion),
                "driver": f"{string(p12.driverName)} {string(p12.driverInfo)}".strip(),
                "vendor_id": int(self.props.vendorID),
                "device_id": int(self.props.deviceID),
                "device_index": self.index,
                "subgroup_ops": [name for bit, name in SUBGROUP_OPS.items() if sg_ops & bit],
                "min_subgroup_size": int(sg_range[0]),
                "max_subgroup_size": int(sg_range[1]),
                "timestamp_period_ns": self.ts_period,
                "max_workgroup_count": self.max_groups,
                "storage_16bit": bool(f11.storageBuffer16BitAccess),
                # every device-local type is host-visible (UMA, lavapipe): buffers are written in place
                "device_local_host_visible": not any(
                    f & vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT and not f & vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT
                    for f in self.memory_types
                ),
                "validation": self.validation,
            },
        )

    # --- what recording and staging share -----------------------------------------------------
    def alloc_cmdbuf(self) -> Any:
        """A primary command buffer, as the 1-element array vkQueueSubmit takes."""
        info = new(
            "VkCommandBufferAllocateInfo",
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
            commandPool=self.cmd_pool,
            level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY,
            commandBufferCount=1,
        )
        out = ffi.new("VkCommandBuffer[1]")
        check(lib.vkAllocateCommandBuffers(self.handle, info, out), "vkAllocateCommandBuffers")
        return out

    def create_fence(self) -> Any:
        """An unsignalled fence, as the 1-element array vkWaitForFences takes."""
        info = new("VkFenceCreateInfo", sType=vk.VK_STRUCTURE_TYPE_FENCE_CREATE_INFO)
        out = ffi.new("VkFence[1]")
        check(lib.vkCreateFence(self.handle, info, ffi.NULL, out), "vkCreateFence")
        return out

    def wait_fences(self, n: int, fences: Any) -> None:
        r = lib.vkWaitForFences(self.handle, n, fences, 1, WAIT_TIMEOUT_NS)
        if r == vk.VK_TIMEOUT:
            raise ShaderbayError(
                f"GPU work did not finish within {WAIT_TIMEOUT_NS // 10**9} s on {self.name}; "
                "the device may be hung or the workload far too large for it"
            )
        if r:
            check(r, "vkWaitForFences")

    def close(self) -> None:
        """Destroy the device, the messenger and the instance (what exists of them)."""
        if self.handle is not None:
            if self.cmd_pool is not None:
                lib.vkDestroyCommandPool(self.handle, self.cmd_pool, ffi.NULL)
                self.cmd_pool = None
            lib.vkDestroyDevice(self.handle, ffi.NULL)
            self.handle = None
        if self._messenger is not None:
            self._destroy_messenger(self.instance, self._messenger, ffi.NULL)
            self._messenger = None
        if self.instance is not None:
            lib.vkDestroyInstance(self.instance, ffi.NULL)
            self.instance = None


def _compute_family(pd: Any) -> tuple[int, int] | None:
    """(queue family index, timestamp bits) of the best compute queue family, if any."""
    n = ffi.new("uint32_t*")
    lib.vkGetPhysicalDeviceQueueFamilyProperties(pd, n, ffi.NULL)
    fams = ffi.new("VkQueueFamilyProperties[]", n[0])
    lib.vkGetPhysicalDeviceQueueFamilyProperties(pd, n, fams)
    best = None
    for i in range(n[0]):
        f = fams[i]
        if not f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT:
            continue
        # prefer timestamps, then a compute queue without graphics (dedicated compute)
        rank = (f.timestampValidBits == 0, bool(f.queueFlags & vk.VK_QUEUE_GRAPHICS_BIT), i)
        if best is None or rank < best[0]:
            best = (rank, i, f.timestampValidBits)
    return None if best is None else (best[1], best[2])


def _query(pd: Any, kind: str, api13: bool) -> tuple[Any, Any, Any, Any]:
    """VkPhysicalDevice{kind}2 and its Vulkan 1.1, 1.2, 1.3 structs, chained and filled by the driver.

    `kind` is "Features" or "Properties". The 1.3 struct stays zeroed, out of the chain, on a 1.2 device.
    """
    upper = kind.upper()

    def struct(name: str, stype: str, pnext: Any = ffi.NULL) -> Any:
        return new(
            f"VkPhysicalDevice{name}", sType=getattr(vk, f"VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_{stype}"), pNext=pnext
        )

    v13 = struct(f"Vulkan13{kind}", f"VULKAN_1_3_{upper}")
    v12 = struct(f"Vulkan12{kind}", f"VULKAN_1_2_{upper}", v13 if api13 else ffi.NULL)
    v11 = struct(f"Vulkan11{kind}", f"VULKAN_1_1_{upper}", v12)
    head = struct(f"{kind}2", f"{upper}_2", v11)
    getattr(lib, f"vkGetPhysicalDevice{kind}2")(pd, head)
    return head, v11, v12, v13
