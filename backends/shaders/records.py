"""The variant record and the helpers its rows are built with.

A leaf module: both `variants.py` (the simple kernels' rows, the table, the choice) and
`variants_heavy.py` with `variants_attention.py` (the heavy kernels' rows) import it, and it imports none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shaderbay.backend import CoopMatrixShape
from shaderbay.kernels import kernel

# The smallest maxComputeWorkGroupCount Vulkan guarantees per dimension (wgpu's default too).
# Grids never exceed it; shaders loop (grid-stride) over whatever does not fit.
MAX_GROUPS = 65535

Grid = Callable[[Mapping[str, Any]], tuple[int, int, int]]
Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class Variant:
    """One compiled kernel: `spv/<name>.spv`, built from `glsl/<source>`."""

    name: str  # the spv file's stem; unique in the table
    kernel: str  # the catalogue kernel it implements
    source: str  # the GLSL file under glsl/, e.g. "rmsnorm.comp"
    constants: Mapping[str, Any] = field(hash=False)  # every compiled catalogue constant, resolved
    workgroup: tuple[int, int, int]  # local size, fixed at compile time (WG_X, WG_Y, WG_Z)
    grid: Grid = field(hash=False, compare=False)  # params -> workgroup counts (gx, gy, gz)
    defines: Mapping[str, Any] = field(default_factory=dict, hash=False)  # extra -D defines
    needs: frozenset[str] = frozenset()  # capabilities it requires: "subgroups", "f16", ...
    unless: frozenset[str] = frozenset()  # capabilities under which it is not used (a form slower there)
    subgroup_size: int = 0  # 0: any subgroup size; else the device's must equal this
    when: Predicate | None = field(default=None, hash=False, compare=False)  # params -> applicable?
    priority: int = 0  # among applicable variants, the highest wins (ties: table order)
    shared_bytes: int = 0  # workgroup shared memory it uses (checked against caps if reported)
    optimize: bool | None = None  # glslc -O; None: yes unless it needs subgroups (see build.naga_traps)
    # params -> u32 words of working memory of the variant's own (counts zero before and after a
    # dispatch), which a backend binds after the catalogue's bindings (BINDING_SCRATCH); None: none
    scratch: Callable[[Mapping[str, Any]], int] | None = field(default=None, hash=False, compare=False)

    @property
    def optimized(self) -> bool:
        return ("subgroups" not in self.needs) if self.optimize is None else self.optimize

    @property
    def invocations(self) -> int:
        x, y, z = self.workgroup
        return x * y * z

    def applies(self, params: Mapping[str, Any]) -> bool:
        return self.when is None or bool(self.when(params))

    def compile_defines(self) -> dict[str, str]:
        """Every -D define the build passes to the compiler for this variant.

        * `WG_X`, `WG_Y`, `WG_Z`: the workgroup size;
        * per catalogue constant: a bool gives `<NAME>=0|1`, any other value gives
          `<NAME>_<VALUE>=1` (e.g. `WDTYPE_F16=1`, `PROLOGUE_RMSNORM=1`);
        * per present binding: `BINDING_<NAME>=<index>` and `DTYPE_<NAME>_<DTYPE>=1`, and
          `BINDING_SCRATCH` (the next index) for a variant with working memory;
        * `SUBGROUP_SIZE` when the variant requires one; then the variant's own defines.
        """
        spec = kernel(self.kernel)
        d: dict[str, str] = {
            "WG_X": str(self.workgroup[0]),
            "WG_Y": str(self.workgroup[1]),
            "WG_Z": str(self.workgroup[2]),
        }
        for name, value in self.constants.items():
            if isinstance(value, bool):
                d[name.upper()] = "1" if value else "0"
            else:
                d[f"{name.upper()}_{str(value).upper()}"] = "1"
        bindings = spec.bindings_for(dict(self.constants))
        for i, b in enumerate(bindings):
            d[f"BINDING_{b.name.upper()}"] = str(i)
            d[f"DTYPE_{b.name.upper()}_{b.resolved_dtype(dict(self.constants)).upper()}"] = "1"
        if self.scratch is not None:
            d["BINDING_SCRATCH"] = str(len(bindings))
        if self.subgroup_size:
            d["SUBGROUP_SIZE"] = str(self.subgroup_size)
        for name, value in self.defines.items():
            d[name] = "1" if value is True else "0" if value is False else str(value)
        return d


# --- helpers the rows are built with ---------------------------------------------------


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def groups(count: int, per_group: int = 1) -> int:
    """Workgroups to cover `count` items at `per_group` each, capped at MAX_GROUPS (shaders loop)."""
    return max(1, min(ceil_div(count, per_group), MAX_GROUPS))


def combos(kernel_name: str) -> list[dict[str, Any]]:
    """Every full choice of a kernel's compiled catalogue constants."""
    out: list[dict[str, Any]] = [{}]
    for c in kernel(kernel_name).constants:
        if not c.compiled:
            continue
        out = [{**o, c.name: v} for o in out for v in c.choices]
    return out


def stem(kernel_name: str, constants: Mapping[str, Any], *tags: str) -> str:
    """A readable, unique spv stem: kernel, then the non-default constants' values, then tags."""
    spec = kernel(kernel_name)
    parts = [kernel_name]
    for c in spec.constants:
        if not c.compiled:
            continue
        v = constants[c.name]
        if isinstance(v, bool):
            parts.append(c.name if v else f"no{c.name}")
        else:
            parts.append(str(v))
    parts.extend(t for t in tags if t)
    return "_".join(parts)


SG_NEEDS = frozenset({"subgroups"})  # what a variant using subgroup operations needs
WIDE_SUBGROUPS = "subgroups8"  # subgroups of at least 8 invocations (shuffles within groups of 8)
TRANSLATED = "translated"  # kernels go through a shader translator (wgpu): a form may cost more there
CPU = "cpu"  # the device is a CPU (lavapipe): each workgroup costs tens of microseconds, so fewer, fuller ones pay
CPU_NEEDS = frozenset({CPU})


COOPMAT = "coopmat_"  # the prefix of cooperative-matrix capability names (native Vulkan only)


def coopmat_need(shape: CoopMatrixShape) -> str:
    """The capability name of a subgroup-scope cooperative-matrix shape, e.g. coopmat_16x16x16_f16_f16_f32_f32."""
    return f"{COOPMAT}{shape.m}x{shape.n}x{shape.k}_{shape.a}_{shape.b}_{shape.c}_{shape.result}"


# what matmul_coop.comp and attention_coop.comp multiply
COOP_SHAPE = CoopMatrixShape(16, 16, 16, "f16", "f16", "f32", "f32", "subgroup")
COOP_NEEDS = frozenset({"f16", coopmat_need(COOP_SHAPE)})
