"""Pipeline statistics: what the driver made of each kernel (registers, shared memory, code size).

With SHADERBAY_VULKAN_STATS=1 and a driver listing VK_KHR_pipeline_executable_properties (NVIDIA's
does; lavapipe's does not) every pipeline is created with its statistics captured, and each one's
are printed to stderr when it is created. They answer what a timing cannot: how many workgroups of
a kernel an SM holds (the H200's decode attention at 80 registers: three, so the 1B's 512 workgroups
at 4,000 keys ran in two waves; benches/RESULTS.md 2026-12-04). Off, or without the extension,
nothing is enabled and pipelines are created as usual.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from shaderbay.config import env_flag

from .coopmat import device_extensions
from .loader import check, ffi, lib, new, string, vk

EXTENSION = "VK_KHR_pipeline_executable_properties"
ENV_STATS = "SHADERBAY_VULKAN_STATS"
CAPTURE_STATISTICS = 0x40  # VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR


class PipelineStatistics:
    """The extension on one physical device: `extensions` to enable, `flags` for pipeline creation.

    `chain(features2)` links its feature struct into vkCreateDevice's feature chain; `bind(device)`
    looks up the two entry points once the device exists; `report(pipeline, name)` prints one line.
    """

    def __init__(self, pd: Any):
        self.extensions: list[str] = []
        self.flags = 0
        self._features: Any = None
        self._entry: tuple[Any, Any] | None = None
        if not env_flag(ENV_STATS):
            return
        if EXTENSION not in device_extensions(pd):
            warnings.warn(f"{ENV_STATS}=1 but the Vulkan driver does not list {EXTENSION}: no statistics", stacklevel=6)
            return
        self._features = new(
            "VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR",
            sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR,
            pipelineExecutableInfo=1,
        )
        self.extensions = [EXTENSION]
        self.flags = CAPTURE_STATISTICS

    def chain(self, features2: Any) -> None:
        if self._features is not None:
            self._features.pNext = features2.pNext
            features2.pNext = self._features

    def bind(self, device: Any) -> None:
        if self._features is not None:
            self._entry = tuple(
                ffi.cast(f"PFN_{name}", lib.vkGetDeviceProcAddr(device, name.encode()))
                for name in ("vkGetPipelineExecutablePropertiesKHR", "vkGetPipelineExecutableStatisticsKHR")
            )

    def read(self, device: Any, pipeline: Any) -> dict[str, float]:
        """Every statistic of every executable of the pipeline (a compute pipeline has one)."""
        if self._entry is None:
            return {}
        properties, statistics = self._entry
        info = new("VkPipelineInfoKHR", sType=vk.VK_STRUCTURE_TYPE_PIPELINE_INFO_KHR, pipeline=pipeline)
        count = ffi.new("uint32_t*")
        check(properties(device, info, count, ffi.NULL), "vkGetPipelineExecutablePropertiesKHR")
        out: dict[str, float] = {}
        for index in range(count[0]):
            executable = new(
                "VkPipelineExecutableInfoKHR",
                sType=vk.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INFO_KHR,
                pipeline=pipeline,
                executableIndex=index,
            )
            n = ffi.new("uint32_t*")
            check(statistics(device, executable, n, ffi.NULL), "vkGetPipelineExecutableStatisticsKHR")
            stats = ffi.new("VkPipelineExecutableStatisticKHR[]", n[0])
            for i in range(n[0]):
                stats[i].sType = vk.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR
            check(statistics(device, executable, n, stats), "vkGetPipelineExecutableStatisticsKHR")
            for i in range(n[0]):
                value = stats[i].value
                # VkPipelineExecutableStatisticFormatKHR: bool32, int64, uint64, float64
                out[string(stats[i].name)] = (value.b32, value.i64, value.u64, value.f64)[int(stats[i].format)]
        return out

    def report(self, device: Any, pipeline: Any, name: str) -> None:
        stats = self.read(device, pipeline)
        if stats:
            text = ", ".join(f"{key} {value:g}" for key, value in stats.items())
            print(f"shaderbay vulkan: pipeline {name}: {text}", file=sys.stderr, flush=True)
