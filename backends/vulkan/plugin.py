"""Registers the vulkan backend (created on demand, so a missing driver costs nothing until then)."""

from shaderbay.plugins import BackendEntry, hookimpl


def _create():
    from .backend import create  # on demand: it loads the GPU library, which `import shaderbay` must not

    return create()


@hookimpl
def shaderbay_backends() -> list[BackendEntry]:
    return [
        BackendEntry(
            "vulkan",
            _create,
            priority=30,
            description="raw Vulkan through the vulkan package: record once, replay per token",
        )
    ]
