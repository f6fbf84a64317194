"""The toy backend: the NumPy reference backend, with one kernel declared unsupported."""

from __future__ import annotations

import dataclasses
from typing import Any

from shaderbay.backends.numpy.backend import NumpyBackend
from shaderbay.errors import UnsupportedKernel
from shaderbay.kernels import KernelSpec

UNSUPPORTED = {"sample"}


class ToyBackend(NumpyBackend):
    name = "toy"

    def __init__(self) -> None:
        super().__init__()
        self.caps = dataclasses.replace(self.caps, device="Toy device", device_type="other")

    def supports(self, kernel_name: str) -> bool:
        return kernel_name not in UNSUPPORTED

    def _create_pipeline(self, spec: KernelSpec, constants: dict[str, Any]):
        if spec.name in UNSUPPORTED:
            raise UnsupportedKernel(f"the toy backend does not implement {spec.name!r}")
        return super()._create_pipeline(spec, constants)
