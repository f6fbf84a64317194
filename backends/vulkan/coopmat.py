"""VK_KHR_cooperative_matrix: whether a device has it, the feature to enable, the shapes it multiplies.

The shapes go to `Caps.cooperative_matrix`, from which the variant table picks the
tensor-core kernels (shaders/variants_heavy.py). They are on wherever the device lists the shape
(the H200's per-kernel suite and the whole model's logits pass with them: benches/RESULTS.md);
`SHADERBAY_COOPMAT=0` turns them off. Off or without the extension, the list is empty and the
extension is not enabled.
"""

from __future__ import annotations

from typing import Any

from shaderbay.backend import CoopMatrixShape
from shaderbay.config import env_flag

from .loader import check, ffi, lib, new, string, vk

EXTENSION = "VK_KHR_cooperative_matrix"
ENV_COOPMAT = "SHADERBAY_COOPMAT"
# VkComponentTypeKHR -> shaderbay dtype name (bfloat16 is VK_KHR_shader_bfloat16's, newer than the package)
COMPONENT_TYPES = {
    0: "f16",
    1: "f32",
    2: "f64",
    3: "i8",
    4: "i16",
    5: "i32",
    6: "i64",
    7: "u8",
    8: "u16",
    9: "u32",
    10: "u64",
    1000141000: "bf16",
}
SCOPES = {1: "device", 2: "workgroup", 3: "subgroup", 5: "queue_family"}  # VkScopeKHR
STAGE_COMPUTE = 0x20


def device_extensions(pd: Any) -> set[str]:
    n = ffi.new("uint32_t*")
    check(lib.vkEnumerateDeviceExtensionProperties(pd, ffi.NULL, n, ffi.NULL), "vkEnumerateDeviceExtensionProperties")
    props = ffi.new("VkExtensionProperties[]", n[0])
    check(lib.vkEnumerateDeviceExtensionProperties(pd, ffi.NULL, n, props), "vkEnumerateDeviceExtensionProperties")
    return {string(props[i].extensionName) for i in range(n[0])}


class CoopMatrix:
    """The extension on one physical device: `extensions` to enable, `shapes` it multiplies (or none).

    `chain(features2)` links its feature struct into the feature chain vkCreateDevice gets; the
    struct lives as long as this object (keep it until the device is created).
    """

    def __init__(self, instance: Any, pd: Any):
        self.extensions: list[str] = []
        self.shapes: tuple[CoopMatrixShape, ...] = ()
        self._features: Any = None
        if not env_flag(ENV_COOPMAT, default=True) or EXTENSION not in device_extensions(pd):
            return
        features = new(
            "VkPhysicalDeviceCooperativeMatrixFeaturesKHR",
            sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR,
        )
        head = new("VkPhysicalDeviceFeatures2", sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, pNext=features)
        lib.vkGetPhysicalDeviceFeatures2(pd, head)
        props = new(
            "VkPhysicalDeviceCooperativeMatrixPropertiesKHR",
            sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_PROPERTIES_KHR,
        )
        head_p = new(
            "VkPhysicalDeviceProperties2", sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, pNext=props
        )
        lib.vkGetPhysicalDeviceProperties2(pd, head_p)
        if not features.cooperativeMatrix or not props.cooperativeMatrixSupportedStages & STAGE_COMPUTE:
            return
        features.cooperativeMatrixRobustBufferAccess = 0  # robust access is off (device.py): kernels stay in bounds
        self._features = features
        self.extensions = [EXTENSION]
        self.shapes = _shapes(instance, pd)

    def chain(self, features2: Any) -> None:
        if self._features is not None:
            self._features.pNext = features2.pNext
            features2.pNext = self._features


def _shapes(instance: Any, pd: Any) -> tuple[CoopMatrixShape, ...]:
    """vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR's list, types the package does not name dropped."""
    name = b"vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR"
    fn = ffi.cast("PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR", lib.vkGetInstanceProcAddr(instance, name))
    count = ffi.new("uint32_t*")
    check(fn(pd, count, ffi.NULL), name.decode())
    props = ffi.new("VkCooperativeMatrixPropertiesKHR[]", count[0])
    for i in range(count[0]):
        props[i].sType = vk.VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_KHR
    check(fn(pd, count, props), name.decode())
    shapes = []
    for i in range(count[0]):
        p = props[i]
        types = [COMPONENT_TYPES.get(int(t)) for t in (p.AType, p.BType, p.CType, p.ResultType)]
        scope = SCOPES.get(int(p.scope))
        if None in types or scope is None or p.saturatingAccumulation:
            continue
        shapes.append(CoopMatrixShape(int(p.MSize), int(p.NSize), int(p.KSize), *types, scope))
    return tuple(shapes)
