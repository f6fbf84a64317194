"""`python -m shaderbay.backends.wgpu.translated`: the translator's verdicts the package ships.

Tries every variant wgpu may be given on this machine's wgpu adapter, through the preflight's child
processes (preflight.py), and writes the verdicts to translated.json beside preflight.py, so that a
fresh install never waits for the preflight on shipped SPIR-V. `make shaders` runs it after the build.
"""

from __future__ import annotations

from ..shaders import variants
from ..shaders.records import COOPMAT, TRANSLATED, Variant
from .backend import create
from .preflight import ENV_PREFLIGHT, SHIPPED


def translatable() -> list[Variant]:
    """Every variant wgpu may be given: all but the tensor-core ones (wgpu has no cooperative matrices) and
    those kept from translated kernels."""
    return [
        v for v in variants.table() if not any(n.startswith(COOPMAT) for n in v.needs) and TRANSLATED not in v.unless
    ]


def ship() -> int:
    """Every translatable variant tried afresh (whatever its needs: the child only builds it), the verdicts
    written to SHIPPED; returns how many."""
    backend = create()
    preflight = backend.pipelines.preflight
    if preflight is None:
        raise SystemExit(f"{ENV_PREFLIGHT}=0: nothing to ship")
    todo = translatable()
    preflight.verdicts, preflight.shipped, preflight.path = {}, {}, SHIPPED
    preflight.run(todo)
    backend.close()
    if preflight.broken:
        raise SystemExit("the preflight child could not run here: no verdicts shipped")
    return len(todo)


if __name__ == "__main__":
    print(f"{ship()} variants tried; verdicts in {SHIPPED}")
