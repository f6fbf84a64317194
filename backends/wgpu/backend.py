"""The wgpu backend: the shared SPIR-V kernels through wgpu-native (wgpu-py 0.32).

wgpu translates the SPIR-V (it does not pass it through) and cannot replay a command
buffer (a second submit of one aborts the process), so a command list is prepared once
into a flat list of (pipeline, bind group, push-constant bytes, workgroup counts) and
copies, with every bind group created then, and re-encoded from that list on every
submit: one command encoder, one compute pass per run of consecutive dispatches (a copy
ends the pass), one submit. The per-dispatch encoding calls go straight to wgpu-native's
C functions through wgpu-py's own cffi binding (`SHADERBAY_WGPU_ENCODER=python` uses
wgpu-py's wrappers instead), which costs a fraction of the wrappers' per-call checks.

Environment:
  SHADERBAY_WGPU_ADAPTER    pick the adapter whose name contains this (case-insensitive)
  SHADERBAY_WGPU_ALLOW_ANY  accept non-Vulkan adapters (OpenGL, Metal, D3D12); by default
                            only Vulkan adapters are used, because without a Vulkan driver
                            wgpu silently falls back to OpenGL (no f16, no subgroups)
  SHADERBAY_WGPU_TIMESTAMPS time every dispatch on the GPU (also on while the tracer is)
  SHADERBAY_WGPU_ENCODER    "ffi" (default) or "python": how dispatches are encoded
  SHADERBAY_WGPU_PREFLIGHT  0 to skip trying new SPIR-V in a child process first (preflight.py)
  SHADERBAY_WGPU_CHECKS     1 to keep wgpu's shader runtime checks (bounds checks on every access,
                            loop counters); off by default, see WgpuBackend._shader_module
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from shaderbay.backend import Backend, Buffer, Caps, CommandList, Copy, Dispatch, Pipeline, Usage
from shaderbay.errors import (
    BackendUnavailable,
    BindingError,
    ClosedError,
    KernelCompileError,
    LimitExceeded,
    OutOfMemory,
)
from shaderbay.kernels import KernelSpec, kernel

from .preflight import ENV_PREFLIGHT, Preflight

ENV_ADAPTER = "SHADERBAY_WGPU_ADAPTER"
ENV_ALLOW_ANY = "SHADERBAY_WGPU_ALLOW_ANY"
ENV_TIMESTAMPS = "SHADERBAY_WGPU_TIMESTAMPS"
ENV_ENCODER = "SHADERBAY_WGPU_ENCODER"
ENV_CHECKS = "SHADERBAY_WGPU_CHECKS"

INSTALL_VULKAN = (
    "install a Vulkan driver: your GPU vendor's, or Mesa's (Debian/Ubuntu: `apt install libvulkan1 "
    "mesa-vulkan-drivers`, which includes the lavapipe software driver); `vulkaninfo --summary` lists what the "
    "loader finds"
)

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
ADAPTER_RANK = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "CPU": 3}
DEVICE_TYPES = {"DiscreteGPU": "discrete", "IntegratedGPU": "integrated", "VirtualGPU": "other", "CPU": "software"}

STAGING_KEEP = 4 << 20  # the read-back staging buffer kept between reads
CHUNK = 64 << 20  # reads and writes larger than this go in pieces
MAX_QUERIES = 4096  # wgpu's largest query set
RESOLVE_ALIGN = 256  # resolve_query_set destination offsets

SUBGROUP_PROBE = """
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(128)
fn main(@builtin(subgroup_size) sg: u32, @builtin(local_invocation_index) i: u32) {
    if (i == 0u) { out[0] = sg; }
}
"""


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


# --- adapters -------------------------------------------------------------------------------


def describe_adapter(info: dict) -> str:
    return f"{info.get('device') or '?'} ({info.get('backend_type', '?')}, {info.get('adapter_type', '?')})"


def choose_adapter(adapters: list, name: str | None = None, allow_any: bool = False) -> Any:
    """The adapter to use: Vulkan ones only unless `allow_any`, matching `name` if given, discrete first.

    `adapters` are wgpu adapters or anything with an `info` mapping (device, description, vendor,
    backend_type, adapter_type); raises BackendUnavailable saying what to do.
    """
    if not adapters:
        raise BackendUnavailable("wgpu", f"wgpu found no adapter at all; {INSTALL_VULKAN}")
    usable = list(adapters) if allow_any else [a for a in adapters if a.info.get("backend_type") == "Vulkan"]
    if not usable:
        found = "; ".join(describe_adapter(a.info) for a in adapters)
        raise BackendUnavailable(
            "wgpu",
            f"no Vulkan adapter, only {found}. Without a Vulkan driver wgpu falls back to these, which lack what "
            f"the kernels use (f16, subgroups) and are slow: {INSTALL_VULKAN}; or set {ENV_ALLOW_ANY}=1 to run on "
            "them anyway",
        )
    if name:
        needle = name.lower()
        matching = [
            a
            for a in usable
            if needle in describe_adapter(a.info).lower()
            or any(needle in str(a.info.get(k, "")).lower() for k in ("description", "vendor"))
        ]
        if not matching:
            found = "; ".join(describe_adapter(a.info) for a in usable)
            raise BackendUnavailable(
                "wgpu", f"{ENV_ADAPTER}={name!r} matches no usable adapter; the usable ones: {found}"
            )
        usable = matching
    return min(usable, key=lambda a: ADAPTER_RANK.get(a.info.get("adapter_type"), 9))  # min is stable


def _import_wgpu():
    try:
        import wgpu
        from wgpu.backends.wgpu_native import _api, extras
    except ImportError as exc:
        reason = f"the wgpu package is not installed ({exc}): pip install wgpu==0.32.0"
        raise BackendUnavailable("wgpu", reason) from exc
    except Exception as exc:  # the wgpu-native library failed to load
        raise BackendUnavailable(
            "wgpu", f"wgpu-native could not be loaded ({type(exc).__name__}: {exc}); reinstall wgpu==0.32.0"
        ) from exc
    if not hasattr(_api.GPUComputePassEncoder, "set_immediates"):
        raise BackendUnavailable(
            "wgpu", f"wgpu {getattr(wgpu, '__version__', '?')} lacks set_immediates; pip install wgpu==0.32.0"
        )
    return wgpu, _api, extras


class _DropNagaNoise(logging.Filter):
    """naga logs a warning for every SPIR-V decoration it ignores (RelaxedPrecision, Restrict): harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unknown decoration")


def _quiet_logs() -> None:
    logger = logging.getLogger("wgpu")
    if not any(isinstance(f, _DropNagaNoise) for f in logger.filters):
        logger.addFilter(_DropNagaNoise())


def _quiet_xdg() -> None:
    """Mesa's Vulkan/EGL drivers complain on stderr when XDG_RUNTIME_DIR is unset or invalid."""
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and os.path.isdir(current):
        return
    path = os.path.join(tempfile.gettempdir(), f"shaderbay-xdg-{os.getuid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            path = tempfile.mkdtemp(prefix="shaderbay-xdg-")  # someone else's: a fresh one (mode 0700)
    except OSError:
        return
    os.environ["XDG_RUNTIME_DIR"] = path


def create(adapter: str | None = None, allow_any: bool | None = None, timestamps: bool | None = None) -> WgpuBackend:
    """A wgpu backend on the best Vulkan adapter (see the module doc for the environment variables)."""
    wgpu, api, extras = _import_wgpu()
    _quiet_xdg()
    _quiet_logs()
    name = adapter if adapter is not None else os.environ.get(ENV_ADAPTER) or None
    allow = _flag(ENV_ALLOW_ANY) if allow_any is None else allow_any
    try:
        adapters = wgpu.gpu.enumerate_adapters_sync()
    except Exception as exc:
        raise BackendUnavailable("wgpu", f"listing adapters failed ({exc}); {INSTALL_VULKAN}") from exc
    chosen = choose_adapter(adapters, name, allow)
    timed = _flag(ENV_TIMESTAMPS) if timestamps is None else timestamps
    return WgpuBackend(wgpu, api, extras, chosen, timestamps=timed)


# --- objects ------------------------------------------------------------------------------


class WgpuBuffer(Buffer):
    def __init__(self, backend: Backend, size: int, usage: Usage, gpu: Any):
        super().__init__(backend, size, usage)
        self.gpu = gpu


class WgpuPipeline(Pipeline):
    """A catalogue kernel and constants; the variant (and its wgpu pipeline) is chosen per dispatch."""

    def __init__(self, spec: KernelSpec, constants: dict[str, Any]):
        super().__init__(spec, constants)
        self.immediate_size = 4 * len(spec.params)


@dataclass
class _Compiled:
    """One variant's wgpu pipeline, with its layout."""

    variant: Any
    pipeline: Any
    layout: Any  # the bind-group layout
    handle: Any  # the pipeline's C handle, for the ffi encoder


@dataclass
class _Timestamps:
    sets: list  # query sets of up to MAX_QUERIES
    resolve: Any  # QUERY_RESOLVE | COPY_SRC
    staging: Any  # MAP_READ | COPY_DST
    nbytes: int
    submitted_ns: int = 0
    pending: bool = False


@dataclass
class _Prepared:
    # Segments in order: ("pass", [dispatch tuples]) or ("copy", (wgpu-py args, C-handle args)), the copy
    # args being (src, src_offset, dst, dst_offset, size).
    # A dispatch tuple for the ffi encoder: (pipeline handle, bind group handle, param cdata, size, gx, gy, gz);
    # for the python encoder: (pipeline, bind group, param bytes, size, gx, gy, gz).
    segments: list
    labels: list[str]
    buffers: tuple  # every Buffer it touches, checked for being freed at submit
    keep: list  # wgpu objects the C handles belong to
    timestamps: _Timestamps | None = None
    timings: list | None = None
    submission: int | None = None  # wgpu-native's index of its last submit (ffi encoder)


class _Native:
    """wgpu-native's C functions for the per-step paths: encode and submit a step, read a few bytes.

    wgpu-py's wrappers cost ~3x the C calls themselves (per-call error capture, descriptor
    structs built per call, a poll thread for every map). These use the same cffi binding with
    descriptors made once. Encoding errors still surface: wgpu reports them at finish, which
    goes through wgpu-py's error-raising wrapper.
    """

    def __init__(self, api: Any, device: Any):
        ffi, lib = api.ffi, api.lib
        self.ffi, self.lib, self.libf = ffi, lib, api.libf
        self.device = device._internal
        self.queue = device.queue._internal
        self.null = ffi.NULL
        self.enc_desc = ffi.new("WGPUCommandEncoderDescriptor *")
        self.pass_desc = ffi.new("WGPUComputePassDescriptor *")
        self.cb_desc = ffi.new("WGPUCommandBufferDescriptor *")
        self.cbs = ffi.new("WGPUCommandBuffer[1]")
        self.index = ffi.new("WGPUSubmissionIndex *")
        self.map_status = [0]

        @ffi.callback("void(WGPUMapAsyncStatus, WGPUStringView, void *, void *)")
        def mapped(status, message, _u1, _u2):
            self.map_status[0] = int(status)

        self._mapped = mapped  # the callback lives as long as this object
        self.map_info = ffi.new(
            "WGPUBufferMapCallbackInfo *", {"mode": lib.WGPUCallbackMode_AllowProcessEvents, "callback": mapped}
        )

    def submit(self, encoder: Any) -> int:
        """Finish (raising wgpu's validation errors) and submit once; the command buffer is released at once.
        Returns the submission's index."""
        lib = self.lib
        try:
            cb = self.libf.wgpuCommandEncoderFinish(encoder, self.cb_desc)
        finally:
            lib.wgpuCommandEncoderRelease(encoder)
        self.cbs[0] = cb
        try:
            return int(self.libf.wgpuQueueSubmitForIndex(self.queue, 1, self.cbs))
        finally:
            self.cbs[0] = self.null
            lib.wgpuCommandBufferRelease(cb)

    def wait_for(self, submission: int) -> None:
        """Block until one submission is done (later ones may still run)."""
        self.index[0] = submission
        self.lib.wgpuDevicePoll(self.device, True, self.index)

    def read(self, src: Any, offset: int, staging: Any, n: int) -> bytes:
        """Copy n bytes of src (a C buffer handle) through a MAP_READ staging buffer (a wgpu-py buffer)."""
        lib = self.lib
        enc = lib.wgpuDeviceCreateCommandEncoder(self.device, self.enc_desc)
        lib.wgpuCommandEncoderCopyBufferToBuffer(enc, src, offset, staging._internal, 0, n)
        self.submit(enc)
        return self.map_read(staging, n, wait_idle=True)

    def map_read(self, buffer: Any, n: int, wait_idle: bool = False) -> bytes:
        """The first n bytes of a MAP_READ buffer (a wgpu-py buffer), once the submits that use it are done.

        wgpu maps a buffer only after every submit that touches it; a poll that waits returns once
        the whole queue is idle, so without `wait_idle` the poll does not block and the host reads a
        step's token while later steps still run.
        """
        lib = self.lib
        self.map_status[0] = -1
        lib.wgpuBufferMapAsync(buffer._internal, lib.WGPUMapMode_Read, 0, n, self.map_info[0])
        polls = 0
        while self.map_status[0] == -1 and polls < 100_000_000:
            lib.wgpuDevicePoll(self.device, wait_idle, self.null)
            polls += 1
        if self.map_status[0] != lib.WGPUMapAsyncStatus_Success:
            raise OutOfMemory(f"mapping a {n}-byte read-back buffer failed (status {self.map_status[0]})")
        try:
            # (wgpuBufferReadMappedRange would be neater, but wgpu-native 29 panics "not implemented")
            ptr = lib.wgpuBufferGetConstMappedRange(buffer._internal, 0, n)
            if ptr == self.null:
                raise OutOfMemory(f"mapping a {n}-byte read-back buffer gave no memory")
            return bytes(self.ffi.buffer(ptr, n))
        finally:
            lib.wgpuBufferUnmap(buffer._internal)


# --- the backend -------------------------------------------------------------------------


class WgpuBackend(Backend):
    name = "wgpu"

    def __init__(self, wgpu: Any, api: Any, extras: Any, adapter: Any, timestamps: bool = False):
        super().__init__()
        self._wgpu, self._api, self._extras = wgpu, api, extras
        self._lib, self._ffi = api.lib, api.ffi
        self.adapter = adapter
        info = dict(adapter.info)
        feats = set(adapter.features)
        if "immediates" not in feats:
            raise BackendUnavailable(
                "wgpu", f"{describe_adapter(info)} lacks the 'immediates' feature (push constants) the kernels use"
            )
        features = [f for f in WANTED_FEATURES if f in feats]
        limits = {k: adapter.limits[k] for k in WANTED_LIMITS if k in adapter.limits}
        try:
            self.device = adapter.request_device_sync(
                label="shaderbay", required_features=features, required_limits=limits
            )
        except Exception as exc:
            raise BackendUnavailable("wgpu", f"creating a device on {describe_adapter(info)} failed: {exc}") from exc
        self.queue = self.device.queue
        self.features = set(self.device.features)
        self.limits = dict(self.device.limits)
        self.gpu_timestamps = timestamps  # time every dispatch even when the tracer is off
        self.runtime_checks = _flag(ENV_CHECKS)  # wgpu's bounds checks and loop counters in the kernels
        use_ffi = os.environ.get(ENV_ENCODER, "ffi").strip().lower() != "python"
        self._native = _Native(api, self.device) if use_ffi else None
        self._layouts: dict[int, tuple[Any, dict[int, Any]]] = {}  # bindings -> (bind-group layout, pipeline layouts)
        self._compiled: dict[str, _Compiled] = {}  # variant name -> pipeline
        self._staging: Any = None
        self._pending_timestamps: list[_Prepared] = []
        self._preflight: Preflight | None = None
        if os.environ.get(ENV_PREFLIGHT, "1").strip().lower() not in ("0", "false", "no", "off"):
            native = getattr(sys.modules.get("wgpu.backends.wgpu_native"), "__version__", "?")
            api_type = info.get("backend_type", "?")  # translation differs per API (SPIR-V, GLSL, MSL, HLSL out)
            self._preflight = Preflight(self, f"wgpu-{getattr(wgpu, '__version__', '?')}-native-{native}-{api_type}")
        self._period = 1.0
        try:
            self._period = float(self._lib.wgpuQueueGetTimestampPeriod(self.queue._internal)) or 1.0
        except Exception:
            pass

        l = self.limits
        has_ts = {"timestamp-query", "timestamp-query-inside-passes"} <= self.features
        subgroups = "subgroup" in self.features
        sg_min = int(info.get("subgroup_min_size") or info.get("stackgroup_min_size") or 0)
        sg_max = int(info.get("subgroup_max_size") or info.get("stackgroup_max_size") or 0)
        sg = sg_min if subgroups and sg_min and sg_min == sg_max else (self._probe_subgroup_size() if subgroups else 0)
        self.caps = Caps(
            device=info.get("device") or info.get("description") or "?",
            device_type=DEVICE_TYPES.get(info.get("adapter_type"), "other"),
            f16="shader-f16" in self.features,
            subgroups=subgroups and sg > 0,
            subgroup_size=sg if subgroups else 1,
            timestamps=has_ts,
            max_buffer_size=int(l["max-buffer-size"]) // 4 * 4,
            max_binding_size=int(l["max-storage-buffer-binding-size"]) // 4 * 4,
            max_workgroup_size=int(l["max-compute-invocations-per-workgroup"]),
            max_workgroups=int(l["max-compute-workgroups-per-dimension"]),
            offset_alignment=int(l["min-storage-buffer-offset-alignment"]),
            max_shared_memory=int(l["max-compute-workgroup-storage-size"]),
            max_push_constants=int(l.get("max-immediate-size", 0)),
            max_storage_buffers=int(l["max-storage-buffers-per-shader-stage"]),
            copy_alignment=4,
            extras={
                "api": "wgpu " + getattr(self._wgpu, "__version__", "?"),
                "backend_type": info.get("backend_type"),
                "adapter_type": info.get("adapter_type"),
                "driver": info.get("description"),
                "vendor": info.get("vendor"),
                "max_workgroup_dims": (
                    int(l["max-compute-workgroup-size-x"]),
                    int(l["max-compute-workgroup-size-y"]),
                    int(l["max-compute-workgroup-size-z"]),
                ),
                "subgroup_size_range": (sg_min, sg_max),
                "timestamp_period_ns": self._period,
                "encoder": "ffi" if self._native is not None else "python",
                "shader_runtime_checks": self.runtime_checks,
            },
        )

    # --- capabilities --------------------------------------------------------------------
    def _probe_subgroup_size(self) -> int:
        """The subgroup size a compute shader actually gets (adapters often report only a range)."""
        wgpu = self._wgpu
        try:
            module = self.device.create_shader_module(code=SUBGROUP_PROBE)
            pipe = self.device.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": "main"})
            out = self.device.create_buffer(size=4, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
            group = self.device.create_bind_group(
                layout=pipe.get_bind_group_layout(0), entries=[{"binding": 0, "resource": {"buffer": out}}]
            )
            enc = self.device.create_command_encoder()
            cp = enc.begin_compute_pass()
            cp.set_pipeline(pipe)
            cp.set_bind_group(0, group)
            cp.dispatch_workgroups(1)
            cp.end()
            self.queue.submit([enc.finish()])
            size = int.from_bytes(bytes(self.queue.read_buffer(out)), "little")
            out.destroy()
            return size
        except Exception:
            return 0

    def supports(self, kernel_name: str) -> bool:
        from shaderbay.backends.shaders import variants

        return variants.supported(kernel_name, self.caps)

    # --- buffers ---------------------------------------------------------------------------
    def _create_buffer(self, size: int, usage: Usage) -> Buffer:
        U = self._wgpu.BufferUsage
        # read-back buffers are mapped directly (no staging copy, no wait for later submits)
        flags = U.MAP_READ | U.COPY_DST if usage is Usage.READBACK else U.STORAGE | U.COPY_SRC | U.COPY_DST
        try:
            gpu = self.device.create_buffer(size=size, usage=flags)
        except self._wgpu.GPUOutOfMemoryError as exc:
            raise OutOfMemory(
                f"{self.caps.device} could not allocate {size} bytes ({self.bytes_allocated} in use): free buffers, "
                "shorten the context or pick a smaller model"
            ) from exc
        except self._wgpu.GPUError as exc:
            raise LimitExceeded(f"wgpu refused a buffer of {size} bytes: {exc}") from exc
        return WgpuBuffer(self, size, usage, gpu)

    def _write(self, buffer: WgpuBuffer, offset: int, data: memoryview) -> None:
        for start in range(0, data.nbytes, CHUNK):
            piece = data[start : start + CHUNK]
            self.queue.write_buffer(buffer.gpu, offset + start, piece)

    def _read(self, buffer: WgpuBuffer, offset: int, size: int) -> bytes | memoryview:
        if size == 0:
            return b""
        if buffer.usage is Usage.READBACK:
            if self._native is not None:
                data = self._native.map_read(buffer.gpu, buffer.size)
            else:
                self._map_read(buffer.gpu, buffer.size)
                try:
                    data = buffer.gpu.read_mapped(0, buffer.size, copy=True)
                finally:
                    buffer.gpu.unmap()
            return memoryview(data)[offset : offset + size]
        begin = offset // 4 * 4  # copies move whole 4-byte words
        end = -(-(offset + size) // 4) * 4
        skip = offset - begin
        if end - begin <= CHUNK:
            data = self._read_piece(buffer.gpu, begin, end - begin)
            return data if skip == 0 and len(data) == size else memoryview(data)[skip : skip + size]
        out = bytearray(end - begin)
        for start in range(begin, end, CHUNK):
            n = min(CHUNK, end - start)
            out[start - begin : start - begin + n] = self._read_piece(buffer.gpu, start, n)
        return memoryview(out)[skip : skip + size]

    def _read_piece(self, gpu: Any, offset: int, n: int) -> bytes | memoryview:
        U = self._wgpu.BufferUsage
        if n <= STAGING_KEEP:
            if self._staging is None:
                self._staging = self.device.create_buffer(size=STAGING_KEEP, usage=U.MAP_READ | U.COPY_DST)
            staging = self._staging
        else:
            staging = self.device.create_buffer(size=n, usage=U.MAP_READ | U.COPY_DST)
        try:
            if self._native is not None:
                return self._native.read(gpu._internal, offset, staging, n)
            enc = self.device.create_command_encoder()
            enc.copy_buffer_to_buffer(gpu, offset, staging, 0, n)
            self.queue.submit([enc.finish()])
            self._map_read(staging, n)
            try:
                return staging.read_mapped(0, n, copy=True)
            finally:
                staging.unmap()
        finally:
            if staging is not self._staging:
                staging.destroy()

    def _map_read(self, staging: Any, n: int) -> None:
        """Map a MAP_READ buffer after the submit that fills it, polling here rather than in wgpu-py's thread.

        "READ_NOSYNC" skips the empty submit wgpu-py adds before a read (a workaround for buffers
        never written by a submit).
        """
        promise = staging.map_async("READ_NOSYNC", 0, n)
        self.device._poll_wait()
        promise.sync_wait()

    def _free(self, buffer: WgpuBuffer) -> None:
        buffer.gpu.destroy()
        buffer.gpu = None

    # --- pipelines -------------------------------------------------------------------------
    def _create_pipeline(self, spec: KernelSpec, constants: dict[str, Any]) -> Pipeline:
        pipe = WgpuPipeline(spec, constants)
        limit = self.caps.max_storage_buffers
        if len(pipe.bindings) > limit:
            raise LimitExceeded(f"{spec.name} binds {len(pipe.bindings)} buffers; {self.caps.device} allows {limit}")
        if pipe.immediate_size > self.caps.max_push_constants:
            raise LimitExceeded(
                f"{spec.name} takes {pipe.immediate_size} bytes of parameters; {self.caps.device} allows "
                f"{self.caps.max_push_constants} bytes of push constants"
            )
        return pipe

    def _layout(self, bindings: int, immediate_size: int) -> tuple[Any, Any]:
        """The bind-group layout (every binding a read-write storage buffer) and pipeline layout."""
        wgpu = self._wgpu
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

    def _compile(self, pipe: WgpuPipeline, params: dict[str, Any]) -> _Compiled:
        from shaderbay.backends.shaders import variants

        variant = variants.select(pipe.spec.name, pipe.constants, params, self.caps)
        compiled = self._compiled.get(variant.name)
        if compiled is None:
            if self._preflight is not None:
                self._preflight.check(variant)  # a translator panic would abort the process: try it aside first
            compiled = self._build(variant)
        return compiled

    def _build(self, variant: Any) -> _Compiled:
        """The wgpu pipeline of a variant (cached): SPIR-V through wgpu's translator, explicit layouts."""
        from shaderbay.backends.shaders import variants

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
            except self._wgpu.GPUError as exc:
                raise KernelCompileError(
                    f"wgpu could not build {variant.name} (kernel {spec.name}) on {self.caps.device}: {exc}"
                ) from exc
        compiled = _Compiled(variant, pipeline, group_layout, pipeline._internal)
        self._compiled[variant.name] = compiled
        return compiled

    def _shader_module(self, label: str, code: bytes) -> Any:
        """A shader module from SPIR-V. Unless SHADERBAY_WGPU_CHECKS is set, without the bounds checks and
        loop counters wgpu otherwise adds to every access and loop: the kernels are the conformance-tested
        catalogue ones and every binding's size was checked when the command list was recorded (both
        checks cost wgpu's kernels about half of the raw Vulkan backend's bandwidth under the same SPIR-V)."""
        if self.runtime_checks:
            return self.device.create_shader_module(label=label, code=code)
        ffi, api = self._ffi, self._api
        words = ffi.new("uint8_t[]", code)
        source = ffi.new("WGPUShaderSourceSPIRV *")
        source.chain.next = ffi.NULL
        source.chain.sType = self._lib.WGPUSType_ShaderSourceSPIRV
        source.codeSize = len(code) // 4
        source.code = ffi.cast("uint32_t *", words)
        name = label.encode()
        desc = ffi.new("WGPUShaderModuleDescriptor *")
        desc.nextInChain = ffi.cast("WGPUChainedStruct *", source)
        desc.label.data = ffi.from_buffer(name)
        desc.label.length = len(name)
        no_checks = 0  # WGPUShaderRuntimeChecks_None
        handle = api.libf.wgpuDeviceCreateShaderModuleTrusted(self.device._internal, desc, no_checks)
        if handle == ffi.NULL:
            raise KernelCompileError(f"wgpu could not create the shader module of {label}")
        return api.GPUShaderModule(label, handle, self.device)

    # --- command lists -----------------------------------------------------------------------
    def _prepare(self, cmd: CommandList) -> _Prepared:
        segments: list = []
        labels: list[str] = []
        keep: list = []
        buffers: dict[int, Buffer] = {}
        groups: dict[tuple, Any] = {}
        current: list | None = None
        max_groups = self.caps.max_workgroups
        for op in cmd.ops:
            if isinstance(op, Copy):
                current = None
                for b in (op.src, op.dst):
                    buffers[id(b)] = b
                if op.src is op.dst:  # wgpu refuses copies within one buffer: bounce through a scratch buffer
                    U = self._wgpu.BufferUsage
                    scratch = self.device.create_buffer(size=op.size, usage=U.COPY_SRC | U.COPY_DST)
                    keep.append(scratch)
                    hops = [(op.src.gpu, op.src_offset, scratch, 0), (scratch, 0, op.dst.gpu, op.dst_offset)]
                else:
                    hops = [(op.src.gpu, op.src_offset, op.dst.gpu, op.dst_offset)]
                for src, so, dst, do in hops:
                    args = (src, so, dst, do, op.size)
                    segments.append(("copy", (args, (src._internal, so, dst._internal, do, op.size))))
                continue
            compiled = self._compile(op.pipeline, op.params)
            grid = tuple(int(g) for g in compiled.variant.grid(op.params))
            grid = grid + (1,) * (3 - len(grid))
            if any(g > max_groups for g in grid):
                raise LimitExceeded(
                    f"{op.label}: variant {compiled.variant.name} asks for {grid} workgroups for {op.params}; "
                    f"{self.caps.device} allows {max_groups} per dimension"
                )
            group = self._bind_group(op, compiled, groups, buffers)
            imm = op.param_bytes
            size = len(imm)
            if current is None:
                current = []
                segments.append(("pass", current))
            if self._native is not None:
                data = self._ffi.from_buffer(imm)
                keep.append(data)
                current.append((compiled.handle, group._internal, data, size, *grid))
            else:
                current.append((compiled.pipeline, group, imm, size, *grid))
            keep.append(compiled.pipeline)
            labels.append(op.label)
        keep.extend(groups.values())
        return _Prepared(segments, labels, tuple(buffers.values()), keep)

    def _bind_group(self, op: Dispatch, compiled: _Compiled, cache: dict, buffers: dict) -> Any:
        """A bind group binding each tensor as a window [offset, offset + nbytes) of its buffer."""
        windows = []
        limit = self.caps.max_binding_size
        for t in op.tensors:
            buf = t.buffer
            buffers[id(buf)] = buf
            size = min(max(4, -(-t.nbytes // 4) * 4), buf.size - t.offset)
            if size > limit:  # the command list checks this too; never hand wgpu an over-limit binding
                raise LimitExceeded(f"{op.label}: a {size}-byte binding exceeds {limit}; split the tensor")
            windows.append((buf, t.offset, size))
        key = (id(compiled.layout), tuple((id(b), o, s) for b, o, s in windows))
        group = cache.get(key)
        if group is None:
            entries = [
                {"binding": i, "resource": {"buffer": b.gpu, "offset": o, "size": s}}
                for i, (b, o, s) in enumerate(windows)
            ]
            try:
                group = self.device.create_bind_group(label=op.label, layout=compiled.layout, entries=entries)
            except self._wgpu.GPUError as exc:
                raise BindingError(f"{op.label}: wgpu refused the bindings of {compiled.variant.name}: {exc}") from exc
            cache[key] = group
        return group

    def _timing_wanted(self) -> bool:
        return (self.gpu_timestamps or self.tracer.enabled) and self.caps.timestamps

    def _submit(self, cmd: CommandList) -> None:
        prep: _Prepared = cmd.prepared
        for b in prep.buffers:
            if b.freed:
                raise ClosedError(f"{cmd.label or 'a command list'} uses {b!r}, which was freed; record it again")
        timed = self._timing_wanted() and bool(prep.labels)
        prep.submission = None  # known for the ffi encoder's submits only
        try:
            if timed:
                self.queue.submit([self._encode_timed(prep)])
            elif self._native is not None:
                prep.submission = self._encode_ffi(prep)
            else:
                self.queue.submit([self._encode_python(prep)])
            # every command buffer is dropped right after its one submit: wgpu aborts on a second
        except self._wgpu.GPUError as exc:
            raise BindingError(f"wgpu rejected {cmd.label or 'a command list'}: {exc}") from exc
        if timed:
            prep.timestamps.submitted_ns = time.perf_counter_ns()
            prep.timestamps.pending = True
            if prep not in self._pending_timestamps:
                self._pending_timestamps.append(prep)

    def _encode_ffi(self, prep: _Prepared) -> int:
        """Encode and submit through wgpu-native's C functions (see _Native); the submission's index."""
        native = self._native
        lib, null = native.lib, native.null
        set_pipeline = lib.wgpuComputePassEncoderSetPipeline
        set_group = lib.wgpuComputePassEncoderSetBindGroup
        set_imm = lib.wgpuComputePassEncoderSetImmediates
        dispatch = lib.wgpuComputePassEncoderDispatchWorkgroups
        enc = lib.wgpuDeviceCreateCommandEncoder(native.device, native.enc_desc)
        try:
            for kind, items in prep.segments:
                if kind == "pass":
                    h = lib.wgpuCommandEncoderBeginComputePass(enc, native.pass_desc)
                    last = None
                    for pipe, group, data, n, x, y, z in items:
                        if pipe is not last:
                            set_pipeline(h, pipe)
                            last = pipe
                        set_group(h, 0, group, 0, null)
                        set_imm(h, 0, data, n)
                        dispatch(h, x, y, z)
                    lib.wgpuComputePassEncoderEnd(h)
                    lib.wgpuComputePassEncoderRelease(h)
                else:
                    lib.wgpuCommandEncoderCopyBufferToBuffer(enc, *items[1])
        except BaseException:
            lib.wgpuCommandEncoderRelease(enc)
            raise
        return native.submit(enc)

    def _encode_python(self, prep: _Prepared) -> Any:
        enc = self.device.create_command_encoder()
        for kind, items in prep.segments:
            if kind == "pass":
                cp = enc.begin_compute_pass()
                for pipe, group, data, n, x, y, z in items:
                    cp.set_pipeline(pipe)
                    cp.set_bind_group(0, group)
                    cp.set_immediates(0, data, 0, n)
                    cp.dispatch_workgroups(x, y, z)
                cp.end()
            else:
                enc.copy_buffer_to_buffer(*items[0])
        return enc.finish()

    def _encode_timed(self, prep: _Prepared) -> Any:
        """Like the plain encoders, with a timestamp before and after every dispatch (inside the pass)."""
        ts = prep.timestamps or self._make_timestamps(prep)
        lib, null = self._lib, self._ffi.NULL
        write = self._extras.write_timestamp
        enc = self.device.create_command_encoder()
        q = 0
        for kind, items in prep.segments:
            if kind == "pass":
                cp = enc.begin_compute_pass()
                h = cp._internal
                for pipe, group, data, n, x, y, z in items:
                    write(cp, ts.sets[q // MAX_QUERIES], q % MAX_QUERIES)
                    if self._native is not None:
                        lib.wgpuComputePassEncoderSetPipeline(h, pipe)
                        lib.wgpuComputePassEncoderSetBindGroup(h, 0, group, 0, null)
                        lib.wgpuComputePassEncoderSetImmediates(h, 0, data, n)
                        lib.wgpuComputePassEncoderDispatchWorkgroups(h, x, y, z)
                    else:
                        cp.set_pipeline(pipe)
                        cp.set_bind_group(0, group)
                        cp.set_immediates(0, data, 0, n)
                        cp.dispatch_workgroups(x, y, z)
                    write(cp, ts.sets[(q + 1) // MAX_QUERIES], (q + 1) % MAX_QUERIES)
                    q += 2
                cp.end()
            else:
                enc.copy_buffer_to_buffer(*items[0])
        for i, qs in enumerate(ts.sets):
            count = min(MAX_QUERIES, q - i * MAX_QUERIES)
            enc.resolve_query_set(qs, 0, count, ts.resolve, i * MAX_QUERIES * 8)
        enc.copy_buffer_to_buffer(ts.resolve, 0, ts.staging, 0, ts.nbytes)
        return enc.finish()

    def _make_timestamps(self, prep: _Prepared) -> _Timestamps:
        U = self._wgpu.BufferUsage
        queries = 2 * len(prep.labels)
        sets = [
            self.device.create_query_set(type="timestamp", count=min(MAX_QUERIES, queries - start))
            for start in range(0, queries, MAX_QUERIES)
        ]
        nbytes = 8 * queries
        padded = -(-nbytes // RESOLVE_ALIGN) * RESOLVE_ALIGN
        resolve = self.device.create_buffer(size=padded, usage=U.QUERY_RESOLVE | U.COPY_SRC)
        staging = self.device.create_buffer(size=padded, usage=U.MAP_READ | U.COPY_DST)
        prep.timestamps = _Timestamps(sets, resolve, staging, nbytes)
        return prep.timestamps

    def _harvest(self, prep: _Prepared) -> None:
        """Read a finished submit's timestamps into prep.timings (the caller has waited)."""
        ts = prep.timestamps
        if ts is None or not ts.pending:
            return
        ts.pending = False
        self._map_read(ts.staging, ts.nbytes)
        try:
            ticks = np.frombuffer(bytes(ts.staging.read_mapped(0, ts.nbytes, copy=True)), np.uint64)
        finally:
            ts.staging.unmap()
        dur = (ticks[1::2].astype(np.int64) - ticks[0::2].astype(np.int64)) * self._period
        prep.timings = [(label, float(max(d, 0.0))) for label, d in zip(prep.labels, dur, strict=True)]
        self.tracer.add_gpu(prep.timings, start_ns=ts.submitted_ns)

    def gpu_timings(self, cmd: CommandList) -> list[tuple[str, float]] | None:
        """Per-dispatch GPU durations (ns) of the last submit of `cmd` that was timed (waits for it)."""
        prep: _Prepared | None = cmd.prepared
        if prep is None or prep.timestamps is None:
            return None
        if prep.timestamps.pending:
            self.wait()
        return prep.timings

    def _wait_for(self, cmd: CommandList) -> None:
        prep: _Prepared = cmd.prepared
        if self._native is not None and prep.submission is not None:
            self._native.wait_for(prep.submission)
        else:
            self._wait()

    def _wait(self) -> None:
        self.device._poll_wait()
        if self._pending_timestamps:
            pending, self._pending_timestamps = self._pending_timestamps, []
            for prep in pending:
                self._harvest(prep)

    def _close(self) -> None:
        self._pending_timestamps.clear()
        self._compiled.clear()
        self._layouts.clear()
        self._staging = None
        try:
            self.device.destroy()
        except Exception:
            pass


__all__ = [
    "ENV_ADAPTER",
    "ENV_ALLOW_ANY",
    "ENV_CHECKS",
    "ENV_ENCODER",
    "ENV_TIMESTAMPS",
    "WgpuBackend",
    "WgpuBuffer",
    "choose_adapter",
    "create",
]
