"""wgpu-py and its wgpu-native library, and the few private parts of wgpu-py this backend uses.

Importing this module imports wgpu, or raises BackendUnavailable saying what to install.
Everything else is wgpu-py's public API, except (each checked against wgpu 0.32.0,
wgpu-native 29.0.1.1; look at them again when the pin in pyproject.toml moves):

* `handle(obj)`: an object's C handle (`obj._internal`). wgpu-py has no public way to hand
  its objects to wgpu-native's C functions, which the native path (native.py) calls directly
  because the wrappers cost ~3x the C calls themselves.
* `libf` (`wgpu.backends.wgpu_native._api.libf`): the C functions wrapped so that errors wgpu
  reports through its error callback are raised as Python exceptions (`lib` ones are not);
  used where a call can fail: finishing an encoder, submitting, creating a shader module.
* `wait_idle(device)` (`device._poll_wait()`, a blocking device poll): the public
  `queue.on_submitted_work_done_sync()` raises a TypeError in wgpu-py 0.32.0 (its callback's
  C type lacks the message argument of wgpu-native 29's header).
* `native_shader_module(...)`: wraps a C shader-module handle as a GPUShaderModule (its
  constructor's argument order is wgpu-py's own), because wgpu-py cannot create a module
  without wgpu's runtime checks (pipelines.py says why that matters).
"""

from __future__ import annotations

from typing import Any

from shaderbay.errors import BackendUnavailable

PIN = "wgpu==0.32.0"

try:
    import wgpu
    import wgpu.backends.wgpu_native as native
    from wgpu.backends.wgpu_native import _api
except ImportError as exc:
    raise BackendUnavailable("wgpu", f"the wgpu package is not installed ({exc}): pip install {PIN}") from exc
except Exception as exc:  # the wgpu-native library failed to load
    raise BackendUnavailable(
        "wgpu", f"wgpu-native could not be loaded ({type(exc).__name__}: {exc}); reinstall {PIN}"
    ) from exc

if not hasattr(native.GPUComputePassEncoder, "set_immediates"):
    raise BackendUnavailable(
        "wgpu", f"wgpu {getattr(wgpu, '__version__', '?')} lacks set_immediates; pip install {PIN}"
    )

ffi: Any = native.ffi
lib: Any = native.lib
libf: Any = _api.libf
extras = native.extras
VERSION = f"wgpu-{getattr(wgpu, '__version__', '?')}-native-{getattr(native, '__version__', '?')}"


def handle(obj: Any) -> Any:
    """The C handle of a wgpu-py object."""
    return obj._internal


def wait_idle(device: Any) -> None:
    """Block until everything submitted to the device's queue is done."""
    device._poll_wait()


def native_shader_module(label: str, module: Any, device: Any) -> Any:
    """A GPUShaderModule owning a C shader-module handle (released with it)."""
    return native.GPUShaderModule(label, module, device)
