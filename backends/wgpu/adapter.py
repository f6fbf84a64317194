"""The adapter to run on: Vulkan ones only unless allowed, matching a name if given, discrete first.

Without a Vulkan driver wgpu silently falls back to OpenGL (no f16, no subgroups, slow), so
only Vulkan adapters are used unless SHADERBAY_WGPU_ALLOW_ANY is set. This module also
quiets what the drivers and naga print while wgpu starts.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from shaderbay.config import env_flag
from shaderbay.errors import BackendUnavailable

from .loader import wgpu

ENV_ADAPTER = "SHADERBAY_WGPU_ADAPTER"
ENV_ALLOW_ANY = "SHADERBAY_WGPU_ALLOW_ANY"

INSTALL_VULKAN = (
    "install a Vulkan driver: your GPU vendor's, or Mesa's (Debian/Ubuntu: `apt install libvulkan1 "
    "mesa-vulkan-drivers`, which includes the lavapipe software driver); `vulkaninfo --summary` lists what the "
    "loader finds"
)
ADAPTER_RANK = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "CPU": 3}


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


def find_adapter(name: str | None = None, allow_any: bool | None = None) -> Any:
    """The chosen adapter among those wgpu finds (name and allow_any default to the environment)."""
    _quiet_xdg()
    _quiet_logs()
    name = name if name is not None else os.environ.get(ENV_ADAPTER) or None
    allow = env_flag(ENV_ALLOW_ANY) if allow_any is None else allow_any
    try:
        adapters = wgpu.gpu.enumerate_adapters_sync()
    except Exception as exc:
        raise BackendUnavailable("wgpu", f"listing adapters failed ({exc}); {INSTALL_VULKAN}") from exc
    return choose_adapter(adapters, name, allow)


def pin_adapter_env(info: dict) -> dict[str, str]:
    """Environment variables that make another process choose exactly this adapter."""
    env = {ENV_ADAPTER: describe_adapter(info)}
    if info.get("backend_type") != "Vulkan":
        env[ENV_ALLOW_ANY] = "1"
    return env


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
