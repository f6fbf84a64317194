"""Registers the wgpu backend (created on demand, so a missing driver costs nothing until then)."""

from shaderbay.plugins import BackendEntry, hookimpl


def _create():
    from .backend import create  # on demand: it loads the GPU library, which `import shaderbay` must not

    return create()


@hookimpl
def shaderbay_backends() -> list[BackendEntry]:
    return [BackendEntry("wgpu", _create, priority=20, description="wgpu (wgpu-native): the portable path")]
