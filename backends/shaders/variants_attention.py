"""Variant rows of attention and decode_attention (part of the heavy kernels: see variants_heavy.py,
whose `heavy_variants()` puts them between matmul's and sample's).

attention (attention.comp)
    `attention_<cache>[_vec][_decode][_sg]`: one workgroup per (row, head), grid (n_heads,
    rows). `_vec`: 16-byte K/V loads, when head_dim is a multiple of 8 (f16) / 4 (f32);
    otherwise 2-element units. `_decode` (rows == 1): 256 invocations; otherwise 64 (128
    for the 2-element units, so a 256-wide head fits one invocation group). `_sg`: the
    chunk maximum by subgroupMax; without it a scan of the chunk's scores (no `_decode`
    form then).
    `attention_f16_coop` (attention_coop.comp): prefill (rows > BATCH_ROWS: up to there the
    per-row forms, so a row's result never depends on its batch) with an f16 cache and head_dim
    64 on the tensor cores where the device lists COOP_SHAPE: 64 query rows of a head a
    workgroup, each of their slots in turn, 64-key tiles gathered through the block table,
    online softmax; grid (ceil(rows / 64), n_heads). H200, 1B prefill of 512, before the paged
    cache: 40 us a layer against the scalar kernel's 215-372 (benches/RESULTS.md).

decode_attention (attention.comp with DECODE_ROPE_KV)
    `decode_attention_<cache>[_vec][_sg]`: rope + kv_write + attention of one row, one
    workgroup per head, grid (n_heads, 1). Each workgroup rotates its q head and its kv
    head's k and packs k and v as cache units in shared memory (a 4-byte word per invocation),
    so key p is scored from there like a cached row; the first head of each kv group writes
    row p of the caches. Grid y: the keys in slices of whole chunks (`_slices`), merged by the
    last slice to arrive through the scratch binding when there is more than one chunk. H200,
    135M decode shape, one dispatch timed alone (stages cut off one
    by one): 4.0 us up to the rope, +1.25 packing the new row eight words at a time with a
    barrier between, +1.1 scoring, +0.5 accumulating V, +1.1 adding up the groups one
    dependent shared load at a time: what the word-wise packing and SUM_GROUPS took on. `_vec` as
    attention's; `_sg`: 256 invocations (attention's `_decode` form), else 64 (128 for
    2-element units) with the scan.
    `decode_attention_f16_vec_keys_sg` (KEY_LANES; head_dim 8..64, subgroups of at least 8):
    a key per group of head_dim / 8 invocations, which read its K and V units side by side in
    one round trip, sum the score by shuffles and keep their own online softmax, KL_KEYS keys
    in flight a group, no barrier within a chunk. H200, one row: decode attention after 4,000
    tokens 360 -> 296 us a 1B token (the `_vec_sg` form with the same slices), 478 -> 429 us a
    135M one; 16 and 64 rows 8% and 5% less; 4 keys in flight instead of 8: 313 and 442. Not on
    CPU devices (lavapipe: 1.3x the time) nor through wgpu's translator (H200: 552 against 483 us).
    `decode_attention_<cache>_vec_cpu{8,16,32}_sg` (CPU devices, the "cpu" capability): one slice, the
    smallest workgroup that holds a head's units (see CPU_ATTN_WGS): lavapipe, the default model at
    its default context, 3.8x the decode rate of the `_vec_sg` form. attention's `_vec_cpu{8,16,32}_sg`
    likewise, for every rows count (lavapipe, 135M shape: 1.5x at 128 rows, 1.16x at 512).
"""

from __future__ import annotations

from shaderbay.kernels import BATCH_ROWS, DECODE_ATTENTION_SLICES

from .records import (
    COOP_NEEDS,
    CPU_NEEDS,
    SG_NEEDS,
    TRANSLATED,
    WIDE_SUBGROUPS,
    Variant,
    combos,
    groups,
    stem,
)

# --- attention ----------------------------------------------------------------------------

ATTN_WG_DECODE = 256  # one row: few workgroups, as many invocations per (row, head) as pay
ATTN_WG_PREFILL = 64  # many rows (many short causal prefixes): more, smaller workgroups
# CPU devices (lavapipe), attention and decode_attention: the smallest workgroup that holds a head's
# units, and in decode_attention one slice (a workgroup a head: the heads are already more than the host's
# cores, and each slice past the live keys still costs a workgroup launch) of as few invocations as
# hold a head's units (one SIMD vector of llvmpipe for head_dim 64: a barrier is then no task switch).
# lavapipe, the default model through the API (max_context 4096), decode after a 72-token prompt
# (benches/RESULTS.md): 682 ms a token with the `_vec_sg` form (256 invocations, 16 slices), 241 with
# it in one slice, 179 with 8 invocations (16: 180, 32: 204, 64: 201).
CPU_ATTN_WGS = (8, 16, 32)


def _cpu_attention(kernel: str, c: dict, unit: int, defines: dict, grid) -> list[Variant]:
    """attention.comp on CPU devices: 16-byte units, subgroups, the smallest of CPU_ATTN_WGS that
    holds a head's units (decode_attention: one slice, `grid`)."""
    return [
        Variant(
            stem(kernel, c, "vec", f"cpu{wg}", "sg"),
            kernel,
            "attention.comp",
            c,
            (wg, 1, 1),
            grid,
            defines={"VEC": True, "SUBGROUPS": True, **defines},
            needs=SG_NEEDS | CPU_NEEDS,
            when=lambda p, wg=wg: p["head_dim"] % unit == 0 and p["head_dim"] <= wg * unit,
            priority=40 + len(CPU_ATTN_WGS) - i,
            shared_bytes=4 * (256 + wg // 4 + 3 * wg + wg * unit + 1)
            + (2 * 256 * (2 if c["cache_dtype"] == "f16" else 4) if "DECODE_ROPE_KV" in defines else 0),
        )
        for i, wg in enumerate(CPU_ATTN_WGS)
    ]


def _attention() -> list[Variant]:
    rows: list[Variant] = []
    for c in combos("attention"):
        unit = 8 if c["cache_dtype"] == "f16" else 4  # elements per 16-byte load
        for vec in (True, False):
            ue = unit if vec else 2
            for sg in (True, False):
                for decode in (True, False):
                    if decode and not sg:
                        continue  # without subgroups the chunk maximum is a scan: small workgroups
                    # every invocation group covers a whole head: units of a 256-wide head <= wg
                    wg = max(ATTN_WG_DECODE if decode else ATTN_WG_PREFILL, 256 // ue)

                    def when(p, unit=unit, vec=vec, decode=decode):
                        return (not vec or p["head_dim"] % unit == 0) and (not decode or p["rows"] == 1)

                    rows.append(
                        Variant(
                            stem("attention", c, "vec" if vec else "", "decode" if decode else "", "sg" if sg else ""),
                            "attention",
                            "attention.comp",
                            c,
                            (wg, 1, 1),
                            lambda p: (groups(p["n_heads"]), groups(p["rows"]), 1),
                            defines={"VEC": vec, "SUBGROUPS": sg},
                            needs=SG_NEEDS if sg else frozenset(),
                            when=when if (vec or decode) else None,  # the plain one runs anywhere
                            priority=(10 if vec else 0) + (2 if decode else 0) + (1 if sg else 0),
                            shared_bytes=4 * (256 + (wg // 4 if sg else wg) + 3 * wg + wg * ue),
                        )
                    )
        rows.extend(_cpu_attention("attention", c, unit, {}, lambda p: (groups(p["n_heads"]), groups(p["rows"]), 1)))
    return rows


ATTN_COOP_HEAD_DIM = 64  # attention_coop.comp's head: a 64-key tile, two invocations a row


def _attention_coop() -> list[Variant]:
    """attention_coop.comp: prefill attention on the tensor cores (f16 cache, head_dim 64), where the
    device lists the product matmul_coop.comp uses; 64 query rows of a head a workgroup."""
    rows: list[Variant] = []
    for c in combos("attention"):
        if c["cache_dtype"] != "f16":
            continue
        rows.append(
            Variant(
                stem("attention", c, "coop"),
                "attention",
                "attention_coop.comp",
                c,
                (128, 1, 1),
                lambda p: (groups(p["rows"], 64), p["n_heads"], 1),
                defines={"HEAD_DIM": ATTN_COOP_HEAD_DIM},
                needs=COOP_NEEDS | SG_NEEDS,
                subgroup_size=32,
                when=lambda p: p["rows"] > BATCH_ROWS and p["head_dim"] == ATTN_COOP_HEAD_DIM,
                priority=30,
                # K and V tiles (64 rows of 64 halves + 16 bytes), 4 regions of 16 x 18 uvec4, the
                # tile's 64 cache rows, 4 reduction slots
                shared_bytes=2 * 64 * 9 * 16 + 4 * 288 * 16 + 64 * 4 + 16,
            )
        )
    return rows


SLICES_DEFINE = f"{DECODE_ATTENTION_SLICES}u"


# decode_attention's workgroups a row aims at (heads x slices): one wave on the H200 (132 SMs,
# three 256-invocation, 80-register `_vec_sg` workgroups each). More slices than a wave holds
# run in two waves of the whole chain (rope, chunks, merge): at 4k keys the 1B's 32 heads x 16
# slices took 29 us a layer, 32 x 8 slices 22 us; with the `_keys` form 384 and 256 tie, 512
# and 1,024 are 25-32% slower (benches/RESULTS.md, 2026-12-04).
DECODE_ROW_GROUPS = 384


def _slices(n_heads: int, capacity: int, wg: int) -> int:
    """decode_attention's grid y: a slice per chunk of keys a slot can hold, at most the catalogue's
    and what keeps a row's workgroups within DECODE_ROW_GROUPS (head counts only: batch-invariant)."""
    return max(1, min(DECODE_ATTENTION_SLICES, groups(capacity, wg), DECODE_ROW_GROUPS // n_heads))


# `_keys`: a key per group of head_dim / 8 invocations (a head's 16-byte units side by side,
# within one subgroup of at least 8), K and V read together, KL_KEYS keys in flight per group
KEY_LANES_HEAD_DIMS = (8, 16, 32, 64)
DECODE_KEYS_IN_FLIGHT = 8


def _decode_attention() -> list[Variant]:
    """attention.comp with DECODE_ROPE_KV: a few rows, so the `_decode` sizes (256) with subgroups."""
    rows: list[Variant] = []
    for c in combos("decode_attention"):
        unit = 8 if c["cache_dtype"] == "f16" else 4  # elements per 16-byte load
        new_row = 2 * 256 * (2 if c["cache_dtype"] == "f16" else 4)  # k_new, v_new
        for vec in (True, False):
            ue = unit if vec else 2
            for sg in (True, False):
                wg = max(ATTN_WG_DECODE if sg else ATTN_WG_PREFILL, 256 // ue)
                rows.append(
                    Variant(
                        stem("decode_attention", c, "vec" if vec else "", "sg" if sg else ""),
                        "decode_attention",
                        "attention.comp",
                        c,
                        (wg, 1, 1),
                        lambda p, wg=wg: (
                            groups(p["n_heads"]),
                            _slices(p["n_heads"], p["block_size"] * p["blocks_per_seq"], wg),
                            groups(p["rows"]),
                        ),
                        defines={"VEC": vec, "SUBGROUPS": sg, "DECODE_ROPE_KV": True, "SLICES": SLICES_DEFINE},
                        needs=SG_NEEDS if sg else frozenset(),
                        when=(lambda p, unit=unit: p["head_dim"] % unit == 0) if vec else None,
                        priority=(10 if vec else 0) + (1 if sg else 0),
                        shared_bytes=4 * (256 + (wg // 4 if sg else wg) + 3 * wg + wg * ue + 1) + new_row,
                    )
                )
                if vec and sg and c["cache_dtype"] == "f16":
                    rows.append(
                        Variant(
                            stem("decode_attention", c, "vec", "keys", "sg"),
                            "decode_attention",
                            "attention.comp",
                            c,
                            (wg, 1, 1),
                            rows[-1].grid,
                            defines={**rows[-1].defines, "KEY_LANES": True, "KL_KEYS": f"{DECODE_KEYS_IN_FLIGHT}u"},
                            needs=SG_NEEDS | {WIDE_SUBGROUPS},
                            # lavapipe: 1.3x the `_vec_sg` form's time (default model); wgpu on the H200: 1.14x
                            unless=CPU_NEEDS | {TRANSLATED},
                            when=lambda p: p["head_dim"] in KEY_LANES_HEAD_DIMS,
                            priority=rows[-1].priority + 1,
                            shared_bytes=rows[-1].shared_bytes,
                        )
                    )
                if vec and sg:
                    extra = {"DECODE_ROPE_KV": True, "SLICES": SLICES_DEFINE}
                    rows.extend(
                        _cpu_attention(
                            "decode_attention", c, unit, extra, lambda p: (groups(p["n_heads"]), 1, groups(p["rows"]))
                        )
                    )
    return rows


def attention_variants() -> list[Variant]:
    return _attention() + _attention_coop() + _decode_attention()
