"""The plugin module named by the `shaderbay` entry point: one hook, two backends.

- ``toy``: works (the NumPy backend inside) but declares the ``sample`` kernel unsupported,
  so the conformance suite must list it as unsupported. Its priority for automatic
  selection comes from ``SHADERBAY_TOY_PRIORITY`` (default -100: never chosen over numpy).
- ``toy-unavailable``: never available, with a reason, like a GPU backend without a driver.
"""

from __future__ import annotations

import os

from shaderbay.errors import BackendUnavailable
from shaderbay.plugins import BackendEntry, hookimpl


def _create_toy():
    from .backend import ToyBackend

    return ToyBackend()


def _create_unavailable():
    raise BackendUnavailable(
        "toy-unavailable", "the toy device is imaginary: there is nothing to install, this backend never runs"
    )


@hookimpl
def shaderbay_backends() -> list[BackendEntry]:
    priority = int(os.environ.get("SHADERBAY_TOY_PRIORITY", "-100"))
    return [
        BackendEntry("toy", _create_toy, priority=priority, description="out-of-tree test plugin (NumPy inside)"),
        BackendEntry("toy-unavailable", _create_unavailable, priority=-1000, description="never available"),
    ]
