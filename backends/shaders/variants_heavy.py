"""Variant rows of the heavy kernels: matmul and sample here, attention and decode_attention in
`variants_attention.py`.

OWNED BY THE HEAVY-KERNELS ENGINEER (glsl/matmul*.comp, glsl/attention*.comp,
glsl/sample*.comp, this file and variants_attention.py). `heavy_variants()` returns their rows of
the one variant table (`variants.table()` appends them after the simple kernels' rows); use the
helpers in `records.py` (`Variant`, `combos`, `stem`, `groups`, `ceil_div`, `SG_NEEDS`)
and follow the conventions in `variants.py` (generated header `kernel_<name>.glsl`, bindings, push
constants, packed 16-bit data). Give each variant a `when=` predicate over the params
where it only applies to some (e.g. `lambda p: p["rows"] == 1` for matrix-vector) and a
`priority` to order the applicable ones.

Names are `records.stem(kernel, constants, *tags)`; every constant combination has a
full set. 1952 spv files in all with the simple kernels' (matmul 1896, attention 19,
decode_attention 15, sample 2).

matmul (matmul_vec.comp, matmul_tiled.comp)
    `matmul_<consts>_vec_sg` / `_vec`: matrix-vector, when rows <= BATCH_ROWS and k is a
    multiple of the 16-byte chunk (8 f16/bf16 or 4 f32 weights). VEC_WG invocations,
    VEC_ROWS outputs of one x row a workgroup, VEC_UNROLL chunks in flight per invocation; grid
    (rows, ceil(n / VEC_ROWS)), grid-stride beyond 65535. `_sg` reduces with subgroupAdd,
    `_vec` with a shared-memory tree. Tuned on the H100 (2026-11-24): WG 64..256 x rows
    2..8 x unroll 1..4 are within ~5% of each other on the decode shapes; ROWS 2 was best
    or tied everywhere; the LM head of a Llama-3.2-1B shape (525 MB f16) streams at ~3.0
    TB/s, the copy bandwidth. A subgroup per output row instead of a workgroup per two was
    slower on every decode shape (1B down: 74% -> 51% of the copy bandwidth).
    `matmul_<consts>_vec4x4[_sg]`: the batched form, 2..BATCH_ROWS
    rows: BATCH_XR x rows by BATCH_OUTS outputs a workgroup, each weight load shared by the x rows;
    grid (ceil(rows / BATCH_XR), ceil(n / BATCH_OUTS)), x-row groups fastest so the workgroups
    reading one weight slice run together (L2). Batch-invariant by construction: the same
    invocations, chunk order, per-chunk expression and reduction as the one-row form, so every
    row's sums are the ones it gets alone (the catalogue's BATCH_ROWS promise). H200 (RESULTS.md),
    1B f16 decode step: 1.4x main's one-row form at 4 rows, 1.9x at 16, 1.06x the tiled form at 64;
    at 64 rows it is bound by its per-output work (by estimate: f32 FMAs, the f16 widening, strided
    x loads, each output's cross-invocation reduction), not by weight reads.
    GGUF block weights (q8_0, q4_0, q4_1, q4_k, q6_k; glsl/quant.glsl): the same forms. `_vec`
    steps over units of 32 values (VEC_WG_Q invocations: one unit each on a 2048-wide row; VEC_ROWS_Q
    rows sharing the unit's x loads and sums),
    read as 32-bit words (16-byte loads for q4_k's 16-byte-aligned blocks) and dequantized in
    registers; the tiled forms dequantize 4 values at a time into the shared-memory tile.
    `matmul_<consts>_cpu_vec` / `_cpu_vec2x4`: the same two forms for CPU devices (the
    "cpu" capability: lavapipe), every weight dtype: CPU_VEC_WG (8) invocations, one SIMD vector of
    llvmpipe, CPU_VEC_OUTS outputs a workgroup, one unit or chunk in flight. lavapipe, the default model
    (benches/RESULTS.md): the first token's matrix products ~4x faster than with the GPU forms, whose
    64-128 invocations leave most lanes idle on 576-wide rows. Batch-invariant between themselves (the
    same WG and UNROLL); a CPU device runs no GPU matrix-vector form, so its rows never mix the two.
    `SHADERBAY_GPU_FORMS=1` gives lavapipe the GPU forms instead (to test them).
    `matmul_<consts>_tiled`: 16 x 16 invocations, a 64 x 64 output tile (4 x 4 adjacent each,
    read from shared memory as two vec4s a k step), BK 16, one slice of register prefetch;
    grid (ceil(n / 64), ceil(rows / 64)). Everything else (prefill, odd k). ~21-23 TFLOP/s
    f32 FMA on the 1B prefill shapes (512 rows; 18-20 with scalar shared reads); 128 x 128
    tiles were slower except on the widest (n = 16384) matrix.
    `matmul_<consts>_tiled16`: the same with a 16 x 64 tile (1 x 4 each), for rows <= BATCH_ROWS whose
    k the vec forms cannot take (measured: 140 us vs 178 for the 64-row tile at 1B qkv, 16 rows):
    one row an invocation, so batch-invariant too.
    `matmul_<consts>_coop` (matmul_coop.comp): f16/bf16 weights on the tensor cores where the
    device lists COOP_SHAPE, rows > BATCH_ROWS (prefill): a 64 x 128 tile a workgroup (`_coop4x2`, the
    same tile in half the subgroups, where a product has many tiles: COOP_4X2_*). GGUF block
    weights too, dequantized by the loaders into f16 hi and lo rows (a value is an f16 scale times a
    small integer: ~14 significant bits), a 128 x 64 tile (COOP_Q_*).
    `matmul_<consts>_cooprows`: the same source with k split over subgroup groups, for
    rows_form 'matrix' at 1..BATCH_ROWS rows (several streams); `_cooprows64x64` / `_cooprows64x128`,
    its 64-row tiles with the same sums, for many rows: see COOP_ROWS_* below.

sample (sample.comp)
    `sample_sg` (512 invocations) / `sample` (128): one workgroup; see sample.comp.

lavapipe caps the loop iterations of one shader invocation at 65535 in total (gallivm's
loop limiter: after that every loop exits after one iteration, silently); the kernels
keep per-invocation trip counts well under it at model sizes (the sampler's passes are
4-8 values an iteration, its key search at most 8 passes).
"""

from __future__ import annotations

import dataclasses

from shaderbay.dtypes import BLOCK_DTYPES
from shaderbay.kernels import BATCH_ROWS, SAMPLE_SETTINGS

from .records import COOP_NEEDS, CPU_NEEDS, SG_NEEDS, Variant, ceil_div, combos, groups, stem
from .variants_attention import attention_variants

# --- matmul -----------------------------------------------------------------------------

VEC_WG = 128  # invocations of a matrix-vector workgroup
VEC_ROWS = 2  # outputs per matrix-vector workgroup
VEC_UNROLL = 2  # 16-byte chunks per invocation whose loads are issued together
VEC_UNIT_Q = 32  # GGUF block weights: values per unit of an invocation (glsl/quant.glsl's QUNIT)
VEC_WG_Q = 64  # their workgroup: a 2048-wide row is 64 units
VEC_ROWS_Q = 4  # their outputs per workgroup (H200, first q4_0 kernel, 1B: 2 rows 1.75 ms a token, 4 rows 1.08)
# The batched form (2..BATCH_ROWS rows): x rows and outputs per workgroup, every weight dtype.
# Its invocations, chunk order and reductions are the one-row form's, so each row's sums are too.
# H200, 1B and 135M decode shapes at 4, 16, 64 rows (benches/RESULTS.md): 4 x 4 beat 8 x 4, 8 x 8 and
# 16 x 4 on f16 (1B at 64 rows: 18.0 ms a step, 22.9, 26.2, 29.7); on q4_0 it beat 8 x 2 and 16 x 2,
# and 8 x 4 at 4 rows by 1.7x (lost by 9% at 16 rows, 5% at 64).
BATCH_XR, BATCH_OUTS = 4, 4
# CPU devices (lavapipe): one SIMD vector of invocations a workgroup, every dtype. On llvmpipe a
# workgroup's invocations run 8 to a vector, so the forms above leave most lanes idle on short rows (a
# 576-wide q4_1 row is 18 units for 64 invocations) and pay each lane's share of the reduction.
# lavapipe, the default model's shapes, one row (benches/RESULTS.md): WG 8 beat 4, 16, 32 and 64
# (8 outputs: qkv 0.77 ms, 64 x 64: 5.0); 8 outputs beat 4; UNROLL 1 beat 2 (qkv 0.77 ms vs 1.05). The
# batched form: 2 x 4 beat 4 x 2 (16 rows, gate_up 37 ms vs 65); x rows times outputs stays <= WG. (8 x 16,
# an invocation writing several outputs, took 76 ms a layer against 184 at 64 rows, benches/RESULTS.md
# 2026-12-04 23:10, but the suite on lavapipe ran far longer with it: not kept until that is understood.)
CPU_VEC_WG = 8
CPU_VEC_OUTS = 8
CPU_VEC_UNROLL = 1
CPU_BATCH_XR, CPU_BATCH_OUTS = 2, 4
# Without subgroup operations only: a workgroup is one subgroup there, so they would reduce the same 8
# sums, and the 384 files they took (8.4 MB) put the package past what the GPU machine's runs carry.
CPU_FORMS = ((1, CPU_VEC_OUTS), (CPU_BATCH_XR, CPU_BATCH_OUTS))
TILED_TM = 4  # rows per invocation: a 64-row tile
TILED_TN = 4  # columns per invocation: a 64-column tile
TILED_BK = 16
TILED_PAD = 4
SMALL_TILE_MAX_ROWS = BATCH_ROWS  # up to here the 16-row tile (TM = 1): one row an invocation, batch-invariant
COOP_WARPS = (2, 4)  # subgroups of 32 of a workgroup, along rows and columns
COOP_FRAGS = (2, 2)  # 16 x 16 accumulators of a subgroup, along rows and columns: a 64 x 128 tile
COOP_BK = 64  # depth of the staged slice of k (a multiple of 16; 32 in two alternating slices: 1.14x the time)
# The same tile in 4 subgroups of 4 x 2 accumulators: a staged w fragment feeds 4 products instead of 2,
# with half the subgroups a workgroup. H200, f16, 512 rows (benches/RESULTS.md 2026-12-05 12:49): 1B
# gate_up 437 -> 333 us, qkv 104 -> 89, the LM head 9.8 -> 7.7 ms; slower on products of few tiles (1B o
# and down, 128 tiles for 132 SMs: 51 -> 59 and 225 -> 256 us; 135M qkv equal at 64), so chosen from
# COOP_4X2_MIN_TILES tiles up. A row's sums do not change (the same BK, one k group, the same steps).
COOP_4X2_WARPS, COOP_4X2_FRAGS = (1, 4), (4, 2)
COOP_4X2_MIN_TILES = 192
# GGUF block weights: w dequantized as it is staged and split into hi and lo rows like x (three
# products a step), so the f16 tile's 64-deep slice would pass the 48 KiB: a 128 x 64 tile of 8
# subgroups of 2 x 2, BK 32 (rows shared by a dequantized tile: twice the f16 tile's). H200, 1B q4_0
# prefill of 512 (benches/RESULTS.md): 27,282 tok/s against 25,966 with the 64 x 128 tile at BK 32.
COOP_Q_WARPS = (4, 2)
COOP_Q_FRAGS, COOP_Q_BK = (2, 2), 32


def _many_tiles(p: dict) -> bool:
    """A prefill product of at least COOP_4X2_MIN_TILES of the f16 tiles (which both forms share)."""
    bm, bn = (16 * w * f for w, f in zip(COOP_WARPS, COOP_FRAGS, strict=True))
    return p["rows"] > BATCH_ROWS and groups(p["rows"], bm) * groups(p["n"], bn) >= COOP_4X2_MIN_TILES


def _coop(c: dict, tag: str, warps: tuple[int, int, int], frags: tuple[int, int], bk: int, when, priority: int, sets=1):
    """matmul_coop.comp: f16/bf16 or block weights, k % 8 == 0; `warps` along rows, columns and k,
    `sets` k groups kept in accumulator sets."""
    (wm, wn, wk), (fm, fn) = warps, frags
    bm, bn = 16 * wm * fm, 16 * wn * fn
    w_parts = 2 if c["wdtype"] in BLOCK_DTYPES else 1  # block weights stage w's hi and lo rows
    # each k group's slice of x's hi and lo rows and w's rows, or its output tile (uvec4, padded rows)
    staged = 16 * wk * max((2 * bm + w_parts * bn) * (bk // 8 + 1), bm * (bn // 4 + 1))
    if c["prologue"] == "rmsnorm":
        staged += 4 * wk * sets * bm * bk // 8
    return Variant(
        stem("matmul", c, tag),
        "matmul",
        "matmul_coop.comp",
        c,
        (32 * wm * wn * wk, 1, 1),
        lambda p: (groups(p["rows"], bm), groups(p["n"], bn), 1),
        defines={"WARPS_M": wm, "WARPS_N": wn, "WARPS_K": wk, "K_SETS": sets, "FM": fm, "FN": fn, "BK": bk},
        needs=COOP_NEEDS,
        subgroup_size=32,
        when=lambda p: when(p) and p["k"] % 8 == 0,
        priority=priority,
        shared_bytes=staged,
    )


# rows_form 'matrix' (decode rows, 1..BATCH_ROWS): k split over COOP_ROWS_WARPS_K groups of
# COOP_ROWS_BK-deep slices, which alone fix a row's sums (matmul_coop.comp): every rows count gives a
# row the same bits. One 16 x 32 tile (two subgroups a group, one fragment each) for every product.
# H100, one call, the 1B shape's decode at 1 / 16 / 64 streams, tok/s (benches/RESULTS.md 2026-12-06
# 05:41): BK 32 with a 16 x 64 tile above 8,192 outputs (before) 400 / 5,716 / 10,996; BK 64 496 /
# 6,675 / 10,688; BK 128 in 2 k groups 453 / 6,157 / 10,303; BK 64 with 16 x 16 tiles 469 / 6,074 /
# 8,049; BK 64 in 2 k groups with 16 x 64 tiles on the wide products 392 / 5,611 / 11,274. A 16 x 64
# tile at BK 64 in 4 k groups would stage 55 KiB (Vulkan's limit on the H100/H200: 48).
COOP_ROWS_BK, COOP_ROWS_WARPS_K = 64, 4
COOP_ROWS_WARPS, COOP_ROWS_FRAGS = (1, 2), (1, 1)  # subgroups along rows and columns; their fragments
# A product of few column tiles and at least COOP_ROWS_SPLIT_ROUNDS rounds of slices splits them
# over workgroups (matmul_coop.comp's splits) until it has COOP_ROWS_SPLIT_TILES of them: the 1B's
# down (k 8,192: 32 rounds) and o (2,048) in 4, its qkv in 3. H100, decode steps at 1 / 16 / 64
# streams (benches/RESULTS.md 2026-12-06 06:06): 1B 499 / 6,810 / 10,740 -> 619 / 8,198 / 10,167
# tok/s (down 686 -> 344 us a step at one stream, 888 -> 995 at 64); split too, the 135M's products
# of 3 to 6 rounds (k 576, 1,536) lost (gate_up 250 -> 354 us at one stream, 64 streams -17%).
COOP_ROWS_SPLIT_TILES = 256
COOP_ROWS_SPLIT_ROUNDS = 8
# From COOP_ROWS_TALL_MIN_ROWS rows on, tiles of 64 rows in 4 x 2 subgroups that keep the k groups as
# accumulator sets (matmul_coop.comp's K_SETS): a row's sums are the 16-row tile's, and x, whose
# bytes at 64 rows were 4x w's in a 16 x 32 tile, is staged once per 64 or 128 columns. Each product
# takes the widest whose column tiles times splits make COOP_ROWS_TALL_MIN_GROUPS workgroups, else the
# 16-row tile. H100, 1B and 135M at 64 streams, us a step (benches/RESULTS.md 2026-12-06 07:55), 16 x
# 32 / 64 x 32 / 64 x 64 / 64 x 128: 1B gate_up 1,950 / 2,012 / 1,284 / 1,081 (128 workgroups), LM
# head 890 / 943 / 602 / 477, down 973 / 745 / 726 / 945 (64 x 64: 128 workgroups), qkv 620 / 629 /
# 502 / 607; 135M down (18 column tiles) 545 / 920 / - / 1,216.
COOP_ROWS_TALL_WARPS = (4, 2)
COOP_ROWS_TALL_FRAGS = ((1, 4), (1, 2))  # a subgroup's fragments: 64 x 128, 64 x 64; the widest first
COOP_ROWS_TALL_MIN_ROWS = 17
COOP_ROWS_TALL_MIN_GROUPS = 96


def coop_rows_splits(n: int, k: int) -> int:
    """Workgroups sharing a rows-form tile: from n and k alone, so a row's sums never depend on the rows."""
    bn = 16 * COOP_ROWS_WARPS[1] * COOP_ROWS_FRAGS[1]
    rounds = ceil_div(k, COOP_ROWS_BK * COOP_ROWS_WARPS_K)
    if rounds < COOP_ROWS_SPLIT_ROUNDS:
        return 1
    return min(ceil_div(COOP_ROWS_SPLIT_TILES, ceil_div(n, bn)), rounds)


def coop_rows_frags(p: dict) -> tuple[int, int] | None:
    """The tall tile a rows-form product takes (its subgroups' fragments), None for the 16-row tile."""
    if p["rows"] >= COOP_ROWS_TALL_MIN_ROWS:
        splits = coop_rows_splits(p["n"], p["k"])
        for frags in COOP_ROWS_TALL_FRAGS:
            if ceil_div(p["n"], 16 * COOP_ROWS_TALL_WARPS[1] * frags[1]) * splits >= COOP_ROWS_TALL_MIN_GROUPS:
                return frags
    return None


def _coop_rows(c: dict, tall: tuple[int, int] | None) -> Variant:
    """The rows form: its 16-row tile in COOP_ROWS_WARPS_K subgroup groups, or a tall tile (`tall`: its
    subgroups' fragments) with the groups as accumulator sets."""

    def when(p):
        return p["rows_form"] == "matrix" and p["rows"] <= BATCH_ROWS and coop_rows_frags(p) == tall

    if tall:
        warps, frags, sets = (*COOP_ROWS_TALL_WARPS, 1), tall, COOP_ROWS_WARPS_K
    else:
        warps, frags, sets = (*COOP_ROWS_WARPS, COOP_ROWS_WARPS_K), COOP_ROWS_FRAGS, 1
    bm, bn = 16 * warps[0] * frags[0], 16 * warps[1] * frags[1]
    v = _coop(c, f"cooprows{bm}x{bn}" if tall else "cooprows", warps, frags, COOP_ROWS_BK, when, 40, sets)

    def grid(p):
        return (*v.grid(p)[:2], coop_rows_splits(p["n"], p["k"]))

    # the counts at fixed places, whatever the rows and n (a split product has fewer than
    # COOP_ROWS_SPLIT_TILES column tiles), so that no dispatch's parts lie where another's counts do
    counts = ceil_div(BATCH_ROWS, bm) * COOP_ROWS_SPLIT_TILES

    def scratch(p):  # the counts, then each tile's splits' parts: bm x bn sums and bm sums of squares
        splits = coop_rows_splits(p["n"], p["k"])
        tiles = ceil_div(p["rows"], bm) * ceil_div(p["n"], bn)
        return counts + tiles * splits * (bm * bn + bm) if splits > 1 else 1

    return dataclasses.replace(v, grid=grid, scratch=scratch, defines={**v.defines, "SPLIT_COUNTS": f"{counts}u"})


def _chunk(wdtype: str) -> int:
    """Weights per step of an invocation in matmul_vec.comp: a 16-byte load, or a unit of blocks."""
    if wdtype in BLOCK_DTYPES:
        return VEC_UNIT_Q
    return 4 if wdtype == "f32" else 8


def _vec(c: dict, xr: int, outs: int, sg: bool, cpu: bool = False) -> Variant:
    """matmul_vec.comp: xr x rows by outs outputs a workgroup; one x row a workgroup (xr = 1) for any
    rows up to BATCH_ROWS, several from 2 rows on."""
    epc = _chunk(c["wdtype"])
    wg = CPU_VEC_WG if cpu else VEC_WG_Q if c["wdtype"] in BLOCK_DTYPES else VEC_WG
    nsums = xr * outs + (xr if c["prologue"] == "rmsnorm" else 0)
    lo = 1 if xr == 1 else 2
    return Variant(
        stem("matmul", c, "cpu" if cpu else "", "vec" if xr == 1 else f"vec{xr}x{outs}", "sg" if sg else ""),
        "matmul",
        "matmul_vec.comp",
        c,
        (wg, 1, 1),
        lambda p: (groups(p["rows"], xr), groups(p["n"], outs), 1),
        defines={"SUBGROUPS": sg, "ROWS": outs, "XR": xr, "UNROLL": f"{CPU_VEC_UNROLL if cpu else VEC_UNROLL}u"},
        needs=(SG_NEEDS if sg else frozenset()) | (CPU_NEEDS if cpu else frozenset()),
        when=lambda p: lo <= p["rows"] <= BATCH_ROWS and p["k"] % epc == 0,
        priority=(20 if sg else 10) + (xr > 1) + (30 if cpu else 0),
        shared_bytes=4 * nsums * (wg // 4 if sg else wg),
    )


def _matmul() -> list[Variant]:
    rows: list[Variant] = []
    for c in combos("matmul"):
        blocks = c["wdtype"] in BLOCK_DTYPES
        forms = ((1, VEC_ROWS_Q if blocks else VEC_ROWS), (BATCH_XR, BATCH_OUTS))
        for sg in (True, False):
            rows.extend(_vec(c, xr, outs, sg) for xr, outs in forms)
        rows.extend(_vec(c, xr, outs, False, cpu=True) for xr, outs in CPU_FORMS)
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
        if c["wdtype"] in ("f16", "bf16"):
            wm, wn = COOP_WARPS
            rows.append(_coop(c, "coop", (wm, wn, 1), COOP_FRAGS, COOP_BK, lambda p: p["rows"] > BATCH_ROWS, 30))
            rows.append(_coop(c, "coop4x2", (*COOP_4X2_WARPS, 1), COOP_4X2_FRAGS, COOP_BK, _many_tiles, 31))
            rows.extend(_coop_rows(c, tall) for tall in (None, *COOP_ROWS_TALL_FRAGS))
        elif blocks:
            wm, wn = COOP_Q_WARPS
            rows.append(_coop(c, "coop", (wm, wn, 1), COOP_Q_FRAGS, COOP_Q_BK, lambda p: p["rows"] > BATCH_ROWS, 30))
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
                lambda p: (groups(p["rows"]), 1, 1),
                defines={
                    "SUBGROUPS": sg,
                    "CAP": f"{SAMPLE_CAP}u",
                    "BITMAP_WORDS": f"{SAMPLE_BITMAP_WORDS}u",
                    "SETTINGS": f"{SAMPLE_SETTINGS}u",
                },
                needs=SG_NEEDS if sg else frozenset(),
                priority=int(sg),
                shared_bytes=4 * SAMPLE_BITMAP_WORDS + 12 * SAMPLE_CAP + 16 * slots + 8,
            )
        )
    return rows


def heavy_variants() -> list[Variant]:
    return _matmul() + attention_variants() + _sample()
