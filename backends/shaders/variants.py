"""The one table of compiled kernel variants, and the choice of a variant from capabilities.

Every GPU kernel is GLSL under `glsl/`, compiled ahead of time to SPIR-V 1.5 under `spv/`
(`python -m shaderbay.backends.shaders.build`). A `Variant` is one compiled file: one
catalogue kernel, compiled for one full choice of the kernel's catalogue constants, with
a workgroup shape fixed at compile time (wgpu rejects `local_size_x_id`) and whatever
extra defines pick its algorithm (subgroup reductions, matrix-vector vs tiled...).

A backend creates a `Pipeline` from (kernel, constants) but picks the variant per
dispatch, because parameters matter too (rows == 1 takes the matrix-vector variant):
`select(kernel, constants, params, caps)`. Variants are picked from capabilities and
parameters, never from a backend's name. `SHADERBAY_NO_SUBGROUPS=1` hides every variant
that needs subgroups, so the conformance suite can cover both kinds; `SHADERBAY_GPU_FORMS=1`
hides those made for CPU devices, so lavapipe can test the GPUs' forms.

Conventions every shader follows (both GPU backends rely on them):

* binding i of descriptor set 0 is the i-th binding of `Pipeline.bindings` (catalogue
  order, absent optional bindings dropped); every binding is a storage buffer, declared
  read-write in the layout;
* the parameters are one push-constant block, one 4-byte member per catalogue parameter
  in catalogue order (`KernelSpec.pack_params` gives the bytes): u32 -> uint,
  i32 -> int, f32 -> float;
* f16 and bf16 data (weights, the f16 KV cache) are declared as `uint[]` and (un)packed
  in the shader, so no 16-bit storage feature is needed;
* the generated header `glsl/kernel_<name>.glsl` declares the push constants, the
  bindings (with `load_<binding>(i)` helpers that return float32 whatever the dtype)
  and the workgroup size from the defines the build derives from the variant (see
  `Variant.compile_defines`).

The record `Variant` and the helpers rows are built with live in `records.py`; the rows
for the heavy kernels (matmul, attention, sample) live in `variants_heavy.py` (another
owner) and join this table through `table()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from shaderbay.backend import CPU_DEVICE_TYPES, Caps
from shaderbay.config import env_flag
from shaderbay.errors import KernelCompileError, UnsupportedKernel
from shaderbay.kernels import ARGMAX_SLICES, CATALOGUE, kernel

from .records import CPU, SG_NEEDS, TRANSLATED, WIDE_SUBGROUPS, Variant, combos, coopmat_need, groups, stem
from .variants_heavy import heavy_variants

ENV_NO_SUBGROUPS = "SHADERBAY_NO_SUBGROUPS"
# a CPU device (lavapipe) runs the variants made for GPUs, as a GPU would: how CI tests those forms
ENV_GPU_FORMS = "SHADERBAY_GPU_FORMS"

# --- the simple kernels' rows -----------------------------------------------------------

WG = 256  # default 1-D workgroup for elementwise and reduction kernels
ARGMAX_WG = 256  # per slice of a row (ARGMAX_SLICES of them): about 2k logits of a 128k vocabulary


def _simple() -> list[Variant]:
    rows: list[Variant] = []
    for c in combos("embed"):
        rows.append(
            Variant(
                stem("embed", c),
                "embed",
                "embed.comp",
                c,
                (WG, 1, 1),
                lambda p: (groups(p["dim"], WG), groups(p["rows"]), 1),
            )
        )
    for sg in (False, True):
        rows.append(
            Variant(
                "rmsnorm" + ("_sg" if sg else ""),
                "rmsnorm",
                "rmsnorm.comp",
                {},
                (WG, 1, 1),
                lambda p: (groups(p["rows"]), 1, 1),
                defines={"SUBGROUPS": sg},
                needs=SG_NEEDS if sg else frozenset(),
                priority=int(sg),
                shared_bytes=4 * WG,
            )
        )
    rows.append(
        Variant(
            "rope",
            "rope",
            "rope.comp",
            {},
            (WG, 1, 1),
            lambda p: (groups(p["heads"] * (p["head_dim"] // 2), WG), groups(p["rows"]), 1),
        )
    )
    for c in combos("kv_write"):
        rows.append(
            Variant(
                stem("kv_write", c),
                "kv_write",
                "kv_write.comp",
                c,
                (64, 1, 1),
                lambda p: (groups(p["rows"]), 1, 1),
                shared_bytes=4,
            )
        )
    rows.append(
        Variant(
            "silu_mul",
            "silu_mul",
            "silu_mul.comp",
            {},
            (WG, 1, 1),
            lambda p: (groups(p["n"], WG), groups(p["rows"]), 1),
        )
    )
    rows.append(Variant("add", "add", "add.comp", {}, (WG, 1, 1), lambda p: (groups(p["n"], WG), 1, 1)))
    for sg in (False, True):
        for vec in (False, True):
            rows.append(
                Variant(
                    "argmax" + ("_vec" if vec else "") + ("_sg" if sg else ""),
                    "argmax",
                    "argmax.comp",
                    {},
                    (ARGMAX_WG, 1, 1),
                    lambda p: (ARGMAX_SLICES, groups(p["rows"]), 1),
                    defines={"SUBGROUPS": sg, "VEC": vec, "SLICES": f"{ARGMAX_SLICES}u"},
                    needs=SG_NEEDS if sg else frozenset(),
                    when=(lambda p: p["n"] % 4 == 0) if vec else None,
                    priority=int(sg) + 2 * int(vec),
                    shared_bytes=8 * ARGMAX_WG + 4,
                )
            )
    rows.append(Variant("advance", "advance", "advance.comp", {}, (64, 1, 1), lambda p: (groups(p["rows"], 64), 1, 1)))
    return rows


# --- the table ------------------------------------------------------------------------


@cache
def table() -> tuple[Variant, ...]:
    """Every variant: the simple kernels' rows here, then the heavy kernels' (variants_heavy.py)."""
    rows = tuple(_simple()) + tuple(heavy_variants())
    seen: set[str] = set()
    for v in rows:
        if v.name in seen:
            raise ValueError(f"two variants are named {v.name!r}")
        if v.kernel not in CATALOGUE:
            raise ValueError(f"variant {v.name!r} implements unknown kernel {v.kernel!r}")
        seen.add(v.name)
    return rows


def variants_for(kernel_name: str, constants: Mapping[str, Any] | None = None) -> list[Variant]:
    """Every variant of a kernel compiled for `constants` (defaults filled in); all of them if None."""
    rows = [v for v in table() if v.kernel == kernel_name]
    if constants is None:
        return rows
    spec = kernel(kernel_name)
    compiled = spec.compiled_constants(spec.resolve_constants(dict(constants)))
    return [v for v in rows if dict(v.constants) == compiled]


def by_name(name: str) -> Variant:
    for v in table():
        if v.name == name:
            return v
    raise KeyError(name)


def capabilities(caps: Caps) -> frozenset[str]:
    """The capability names variants may need, from a backend's Caps (and the environment).

    "subgroups" means subgroup basic, vote, arithmetic, ballot and shuffle operations in
    compute shaders (what wgpu's "subgroup" feature gives); "f16" means shader float16
    arithmetic; WIDE_SUBGROUPS ("subgroups8") subgroups of at least 8 invocations;
    "coopmat_<m>x<n>x<k>_<a>_<b>_<c>_<result>" a subgroup-scope cooperative-matrix shape of
    `caps.cooperative_matrix`; "cpu" a device whose workgroups run on the host's cores
    (lavapipe), unless `SHADERBAY_GPU_FORMS=1`; TRANSLATED ("translated") a backend whose kernels
    go through a shader translator (`caps.translated`: wgpu).
    """
    names = set()
    if caps.f16:
        names.add("f16")
    if caps.subgroups and caps.subgroup_size > 0:
        names.add("subgroups")
        if caps.subgroup_size >= 8:
            names.add(WIDE_SUBGROUPS)
    names.update(coopmat_need(s) for s in caps.cooperative_matrix if s.scope == "subgroup")
    if caps.device_type in CPU_DEVICE_TYPES and not env_flag(ENV_GPU_FORMS):
        names.add(CPU)
    if caps.translated:
        names.add(TRANSLATED)
    if subgroups_disabled():
        names -= {"subgroups", WIDE_SUBGROUPS}
    return frozenset(names)


def subgroups_disabled() -> bool:
    return bool(env_flag(ENV_NO_SUBGROUPS))


def selection_env() -> tuple[bool, bool]:
    """The environment flags `select` depends on: part of a backend's key for a cached choice."""
    return subgroups_disabled(), bool(env_flag(ENV_GPU_FORMS))


def usable(variant: Variant, caps: Caps, names: frozenset[str] | None = None) -> bool:
    """Whether a device with these capabilities can run the variant (parameters aside)."""
    names = capabilities(caps) if names is None else names
    if not variant.needs <= names or variant.unless & names:
        return False
    if variant.subgroup_size and variant.subgroup_size != caps.subgroup_size:
        return False
    if variant.invocations > caps.max_workgroup_size:
        return False
    return variant.shared_bytes <= caps.max_shared_memory


def select(kernel_name: str, constants: Mapping[str, Any], params: Mapping[str, Any], caps: Caps) -> Variant:
    """The variant to run for this kernel, constants and parameters on a device with `caps`.

    Raises UnsupportedKernel when no shipped variant fits (a kernel without GLSL yet, or a
    device lacking what every variant needs).
    """
    candidates = variants_for(kernel_name, constants)
    if not candidates:
        raise UnsupportedKernel(f"no GPU variant of {kernel_name}({_fmt(constants)}) is shipped")
    names = capabilities(caps)
    spec = kernel(kernel_name)
    # the choosing constants (e.g. matmul's rows_form) are seen by the variants' `when` with the params
    seen = {**spec.resolve_constants(dict(constants)), **params}
    best: Variant | None = None
    for v in candidates:
        if usable(v, caps, names) and v.applies(seen) and (best is None or v.priority > best.priority):
            best = v
    if best is None:
        raise UnsupportedKernel(
            f"no variant of {kernel_name}({_fmt(constants)}) runs on {caps.device} "
            f"(capabilities: {', '.join(sorted(names)) or 'none'}) for {dict(params)}"
        )
    return best


def supported(kernel_name: str, caps: Caps) -> bool:
    """Whether every constant choice of a kernel has a variant usable on this device (some params aside)."""
    names = capabilities(caps)
    for c in combos(kernel_name):
        if not any(usable(v, caps, names) for v in variants_for(kernel_name, c)):
            return False
    return True


SPV_DIR = "spv"


@cache
def spirv(variant: Variant | str) -> bytes:
    """The shipped SPIR-V of a variant (cached)."""
    name = variant if isinstance(variant, str) else variant.name
    path = resources.files(__package__).joinpath(SPV_DIR, name + ".spv")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KernelCompileError(
            f"the compiled kernel spv/{name}.spv is missing from the installed package; "
            "run `python -m shaderbay.backends.shaders.build` (needs glslc) or reinstall shaderbay"
        ) from None


def _fmt(constants: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in constants.items())
