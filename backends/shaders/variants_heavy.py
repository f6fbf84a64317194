"""Variant rows of the heavy kernels: matmul, attention, sample.

OWNED BY THE HEAVY-KERNELS ENGINEER (glsl/matmul*.comp, glsl/attention*.comp,
glsl/sample*.comp and this file). `heavy_variants()` returns their rows of the one
variant table (`variants.table()` appends them after the simple kernels' rows); use the
helpers in `variants.py` (`Variant`, `combos`, `stem`, `groups`, `ceil_div`, `SG_NEEDS`)
and follow its conventions (generated header `kernel_<name>.glsl`, bindings, push
constants, packed 16-bit data). Give each variant a `when=` predicate over the params
where it only applies to some (e.g. `lambda p: p["rows"] == 1` for matrix-vector) and a
`priority` to order the applicable ones.

matmul
    `matmul_<consts>_vec[_sg]` (matmul_vec.comp): matrix-vector, for rows <= VEC_MAX_ROWS
    and k a multiple of the 16-byte chunk (8 f16/bf16 or 4 f32 weights). Workgroup
    VEC_WG invocations, VEC_ROWS outputs per workgroup; grid (ceil(n / VEC_ROWS), rows).
    `_sg` reduces with subgroupAdd, the other with a shared-memory tree.
    `matmul_<consts>_tiled` (matmul_tiled.comp): 16 x 16 invocations, a 64 x 64 output tile
    each (4 x 4 per invocation), BK = 16; grid (ceil(n / 64), ceil(rows / 64)). Takes
    everything else (prefill, odd k). `matmul_<consts>_tiled16`: the same with a 16 x 64
    tile (1 x 4 per invocation), grid (ceil(n / 64), ceil(rows / 16)), for rows <= 32.
"""

from __future__ import annotations

from .variants import SG_NEEDS, Variant, ceil_div, combos, groups, stem

# --- matmul -----------------------------------------------------------------------------

VEC_WG = 128  # invocations of a matrix-vector workgroup
VEC_ROWS = 4  # outputs per matrix-vector workgroup
VEC_MAX_ROWS = 4  # the matrix-vector form re-reads w for every x row: only worth it for a few
TILED_TM = 4  # rows per invocation: a 64-row tile
TILED_TN = 4  # columns per invocation: a 64-column tile
TILED_BK = 16
TILED_PAD = 4
SMALL_TILE_MAX_ROWS = 32  # up to here the 16-row tile (TM = 1) wastes less


def _chunk(wdtype: str) -> int:
    """Weights per 16-byte load in matmul_vec.comp."""
    return 4 if wdtype == "f32" else 8


def _matmul() -> list[Variant]:
    rows: list[Variant] = []
    for c in combos("matmul"):
        epc = _chunk(c["wdtype"])
        nsums = VEC_ROWS + (1 if c["prologue"] == "rmsnorm" else 0)
        for sg in (True, False):
            rows.append(
                Variant(
                    stem("matmul", c, "vec", "sg" if sg else ""),
                    "matmul",
                    "matmul_vec.comp",
                    c,
                    (VEC_WG, 1, 1),
                    lambda p: (groups(p["n"], VEC_ROWS), groups(p["rows"]), 1),
                    defines={"SUBGROUPS": sg, "ROWS": VEC_ROWS},
                    needs=SG_NEEDS if sg else frozenset(),
                    when=lambda p, epc=epc: p["rows"] <= VEC_MAX_ROWS and p["k"] % epc == 0,
                    priority=20 if sg else 10,
                    shared_bytes=4 * nsums * (VEC_WG // 4 if sg else VEC_WG),
                )
            )
        for tm, tag in ((TILED_TM, "tiled"), (1, "tiled16")):
            bm, bn = 16 * tm, 16 * TILED_TN
            shared = 4 * TILED_BK * (bm + bn + 2 * TILED_PAD)
            if c["prologue"] == "rmsnorm":
                shared += 4 * 256
            rows.append(
                Variant(
                    stem("matmul", c, tag),
                    "matmul",
                    "matmul_tiled.comp",
                    c,
                    (256, 1, 1),
                    lambda p, bm=bm, bn=bn: (groups(p["n"], bn), groups(p["rows"], bm), 1),
                    defines={"TM": tm, "TN": TILED_TN},
                    when=None if tm == TILED_TM else (lambda p: p["rows"] <= SMALL_TILE_MAX_ROWS),
                    priority=0 if tm == TILED_TM else 5,
                    shared_bytes=shared,
                )
            )
    return rows


# --- attention ----------------------------------------------------------------------------

ATTN_WG = 128  # invocations per (row, head), and keys per chunk, without subgroups
ATTN_WG_SG = 256  # with subgroups (a subgroupMax per chunk instead of a scan of the scores)


def _attention() -> list[Variant]:
    rows: list[Variant] = []
    for c in combos("attention"):
        unit = 8 if c["cache_dtype"] == "f16" else 4  # elements per 16-byte load
        for vec in (True, False):
            ue = unit if vec else 2
            for sg in (True, False):
                wg = ATTN_WG_SG if sg else ATTN_WG
                rows.append(
                    Variant(
                        stem("attention", c, "vec" if vec else "", "sg" if sg else ""),
                        "attention",
                        "attention.comp",
                        c,
                        (wg, 1, 1),
                        lambda p: (groups(p["n_heads"]), groups(p["rows"]), 1),
                        defines={"VEC": vec, "SUBGROUPS": sg},
                        needs=SG_NEEDS if sg else frozenset(),
                        when=(lambda p, unit=unit: p["head_dim"] % unit == 0) if vec else None,
                        priority=(10 if vec else 0) + (1 if sg else 0),
                        shared_bytes=4 * (256 + (wg // 4 if sg else wg) + 2 * wg + wg * ue),
                    )
                )
    return rows


# --- sample -------------------------------------------------------------------------------

SAMPLE_WG_SG = 512  # with subgroup reductions
SAMPLE_WG = 128  # shared-memory reductions (one slot per invocation)
SAMPLE_CAP = 896  # candidates resolved in shared memory
SAMPLE_BITMAP_WORDS = 4752  # repetition-penalty bitmap: ids below 152064


def _sample() -> list[Variant]:
    rows: list[Variant] = []
    for sg in (True, False):
        wg = SAMPLE_WG_SG if sg else SAMPLE_WG
        slots = wg // 4 if sg else wg
        rows.append(
            Variant(
                "sample" + ("_sg" if sg else ""),
                "sample",
                "sample.comp",
                {},
                (wg, 1, 1),
                lambda p: (1, 1, 1),
                defines={"SUBGROUPS": sg, "CAP": f"{SAMPLE_CAP}u", "BITMAP_WORDS": f"{SAMPLE_BITMAP_WORDS}u"},
                needs=SG_NEEDS if sg else frozenset(),
                priority=int(sg),
                shared_bytes=4 * SAMPLE_BITMAP_WORDS + 12 * SAMPLE_CAP + 16 * slots + 8,
            )
        )
    return rows


def heavy_variants() -> list[Variant]:
    return _matmul() + _attention() + _sample()
