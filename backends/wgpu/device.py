"""The device on the chosen adapter: the features and limits asked for, and its Caps."""

from __future__ import annotations

from typing import Any

from shaderbay.backend import Caps
from shaderbay.errors import BackendUnavailable

from .adapter import describe_adapter
from .loader import handle, lib, wgpu

# Features the kernels and the backend use, when the adapter has them.
WANTED_FEATURES = ("timestamp-query", "timestamp-query-inside-passes", "subgroup", "shader-f16", "immediates")
# Limits asked at the adapter's maximum (the defaults are far lower: a 128 MiB binding, 8 storage buffers).
WANTED_LIMITS = (
    "max-storage-buffer-binding-size",
    "max-buffer-size",
    "max-storage-buffers-per-shader-stage",
    "max-immediate-size",
    "max-compute-workgroup-storage-size",
    "max-compute-invocations-per-workgroup",
    "max-compute-workgroup-size-x",
    "max-compute-workgroup-size-y",
    "max-compute-workgroup-size-z",
    "max-compute-workgroups-per-dimension",
)
DEVICE_TYPES = {"DiscreteGPU": "discrete", "IntegratedGPU": "integrated", "VirtualGPU": "other", "CPU": "software"}

SUBGROUP_PROBE = """
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(128)
fn main(@builtin(subgroup_size) sg: u32, @builtin(local_invocation_index) i: u32) {
    if (i == 0u) { out[0] = sg; }
}
"""


def open_device(adapter: Any) -> Any:
    """A device on the adapter with every wanted feature it has and its limits at their maximum."""
    info = dict(adapter.info)
    feats = set(adapter.features)
    if "immediates" not in feats:
        raise BackendUnavailable(
            "wgpu", f"{describe_adapter(info)} lacks the 'immediates' feature (push constants) the kernels use"
        )
    features = [f for f in WANTED_FEATURES if f in feats]
    limits = {k: adapter.limits[k] for k in WANTED_LIMITS if k in adapter.limits}
    try:
        return adapter.request_device_sync(label="shaderbay", required_features=features, required_limits=limits)
    except Exception as exc:
        raise BackendUnavailable("wgpu", f"creating a device on {describe_adapter(info)} failed: {exc}") from exc


def timestamp_period(device: Any) -> float:
    """Nanoseconds per timestamp tick (wgpu-py does not expose the queue's period)."""
    try:
        return float(lib.wgpuQueueGetTimestampPeriod(handle(device.queue))) or 1.0
    except Exception:
        return 1.0


def device_caps(adapter: Any, device: Any, extras: dict[str, Any]) -> Caps:
    """What the device can do; `extras` adds informative values of the backend's own."""
    info = dict(adapter.info)
    features = set(device.features)
    limits = dict(device.limits)
    subgroups = "subgroup" in features
    # wgpu-py 0.32.0 spells these keys "stackgroup_*" (and fills them with the spec's defaults, 4 and 128)
    sg_min = int(info.get("subgroup_min_size") or info.get("stackgroup_min_size") or 0)
    sg_max = int(info.get("subgroup_max_size") or info.get("stackgroup_max_size") or 0)
    sg = sg_min if subgroups and sg_min and sg_min == sg_max else (_probe_subgroup_size(device) if subgroups else 0)
    return Caps(
        device=info.get("device") or info.get("description") or "?",
        device_type=DEVICE_TYPES.get(info.get("adapter_type"), "other"),
        f16="shader-f16" in features,
        subgroups=subgroups and sg > 0,
        subgroup_size=sg if subgroups else 1,
        timestamps={"timestamp-query", "timestamp-query-inside-passes"} <= features,
        max_buffer_size=int(limits["max-buffer-size"]) // 4 * 4,
        max_binding_size=int(limits["max-storage-buffer-binding-size"]) // 4 * 4,
        max_workgroup_size=int(limits["max-compute-invocations-per-workgroup"]),
        max_workgroups=int(limits["max-compute-workgroups-per-dimension"]),
        offset_alignment=int(limits["min-storage-buffer-offset-alignment"]),
        max_shared_memory=int(limits["max-compute-workgroup-storage-size"]),
        max_push_constants=int(limits.get("max-immediate-size", 0)),
        max_storage_buffers=int(limits["max-storage-buffers-per-shader-stage"]),
        copy_alignment=4,
        translated=True,  # SPIR-V -> naga's IR -> the driver's language
        extras={
            "api": "wgpu " + getattr(wgpu, "__version__", "?"),
            "backend_type": info.get("backend_type"),
            "adapter_type": info.get("adapter_type"),
            "driver": info.get("description"),
            "vendor": info.get("vendor"),
            "max_workgroup_dims": (
                int(limits["max-compute-workgroup-size-x"]),
                int(limits["max-compute-workgroup-size-y"]),
                int(limits["max-compute-workgroup-size-z"]),
            ),
            "subgroup_size_range": (sg_min, sg_max),
            **extras,
        },
    )


def _probe_subgroup_size(device: Any) -> int:
    """The subgroup size a compute shader actually gets (adapters often report only a range)."""
    try:
        module = device.create_shader_module(code=SUBGROUP_PROBE)
        pipe = device.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": "main"})
        out = device.create_buffer(size=4, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
        group = device.create_bind_group(
            layout=pipe.get_bind_group_layout(0), entries=[{"binding": 0, "resource": {"buffer": out}}]
        )
        enc = device.create_command_encoder()
        cp = enc.begin_compute_pass()
        cp.set_pipeline(pipe)
        cp.set_bind_group(0, group)
        cp.dispatch_workgroups(1)
        cp.end()
        device.queue.submit([enc.finish()])
        size = int.from_bytes(bytes(device.queue.read_buffer(out)), "little")
        out.destroy()
        return size
    except Exception:
        return 0
