"""Registers the NumPy backend through the same entry point a third-party backend uses."""

from shaderbay.plugins import BackendEntry, hookimpl

from .backend import NumpyBackend


def _create():
    return NumpyBackend()


@hookimpl
def shaderbay_backends() -> list[BackendEntry]:
    return [BackendEntry("numpy", _create, priority=10, description="reference, on the CPU")]
