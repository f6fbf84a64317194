"""The `vulkan` package (cffi, ABI mode) and the few helpers every other module uses with it.

Importing this module loads libvulkan.so.1, or raises BackendUnavailable saying what to
install. The backend calls `lib.vk*` directly with structs from `new`: the package's own
Python wrappers cost ~3 us a call (PLATFORM.md).
"""

from __future__ import annotations

import functools
from typing import Any

from shaderbay.errors import BackendUnavailable, OutOfMemory, ShaderbayError

try:
    import vulkan as vk
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

ffi: Any = vk.ffi
lib: Any = vk.lib


def new(ctype: str, **fields: Any) -> Any:
    """A zeroed C struct (a pointer to it); pass sType where the struct has one."""
    return ffi.new(ctype + "*", fields)


def memory_barrier(src_access: int, dst_access: int) -> Any:
    return new(
        "VkMemoryBarrier", sType=vk.VK_STRUCTURE_TYPE_MEMORY_BARRIER, srcAccessMask=src_access, dstAccessMask=dst_access
    )


def string(chars: Any) -> str:
    return ffi.string(chars).decode("utf-8", "replace")


def version(major: int, minor: int, patch: int = 0) -> int:
    return (major << 22) | (minor << 12) | patch


def version_str(v: int) -> str:
    return f"{v >> 22 & 0x7F}.{v >> 12 & 0x3FF}.{v & 0xFFF}"


@functools.cache
def _result_names() -> dict[int, str]:
    prefixes = ("VK_ERROR_", "VK_SUCCESS", "VK_NOT_READY", "VK_TIMEOUT", "VK_INCOMPLETE")
    names: dict[int, str] = {}
    for name in dir(vk):
        if name.startswith(prefixes):
            names.setdefault(getattr(vk, name), name)
    return names


def result_name(r: int) -> str:
    return _result_names().get(r, f"VkResult {r}")


def check(r: int, what: str) -> None:
    """Raise the typed error, saying what to do, for a failed call's VkResult."""
    if r >= 0:
        return
    if r in (vk.VK_ERROR_OUT_OF_HOST_MEMORY, vk.VK_ERROR_OUT_OF_DEVICE_MEMORY):
        raise OutOfMemory(f"{what}: {result_name(r)}; free buffers, shorten the context or pick a smaller model")
    if r == vk.VK_ERROR_DEVICE_LOST:
        raise ShaderbayError(
            f"{what}: the Vulkan device was lost (a driver reset or a kernel fault); close this backend and "
            "create a new one (SHADERBAY_VULKAN_VALIDATE=1 may say why)"
        )
    raise ShaderbayError(f"{what} failed: {result_name(r)}")
