"""Cases of the attention family: rope, kv_write, attention, decode_attention."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from shaderbay.backends.numpy.kernels import cache_rows, visible_rows
from shaderbay.dtypes import host_dtype
from shaderbay.kernels import decode_scratch_row
from shaderbay.rope import inverse_frequencies

from ..harness import Case
from .record import KernelCases, dim, even_dim
from .values import U32_MAX, Values

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _rope(v: Values, c: dict, s: dict) -> Case:
    rows, heads, hd = s["rows"], s["heads"], s["head_dim"]
    width = heads * hd
    offset = v.int(0, s["extra"])
    stride = width + s["extra"]
    theta = v.pick((10000.0, 100000.0, 500000.0, 100.0))
    scaling = v.pick((None, LLAMA3_SCALING))
    max_pos = v.pick((8, 2048, 8191, 65535))
    x = v.floats(rows * stride, -4.0, 4.0)
    positions = v.uints(rows, 0, max_pos)
    written = np.zeros((rows, stride), bool)
    written[:, offset : offset + width] = True
    return Case(
        "rope",
        c,
        {"rows": rows, "heads": heads, "head_dim": hd, "stride": stride, "offset": offset},
        {"x": x, "positions": positions, "inv_freq": inverse_frequencies(hd, theta, scaling).astype(np.float32)},
        written={"x": written.reshape(-1)},
        note=f"theta={theta:g} scaling={'llama3' if scaling else 'none'}",
    )


# --- the paged cache: block tables and the caches they index ----------------------------------------


def _table(v: Values, s: dict, n_blocks: int, private: bool) -> np.ndarray:
    """block_tables (n_seqs x blocks_per_seq) for a pool of n_blocks: scattered, out of order, with
    invalid entries (>= n_blocks). `private`: no block is in two places (decode_attention's rows must
    not see each other's writes); else entries repeat freely (blocks shared between slots)."""
    n_seqs, per_seq = s["n_seqs"], s["blocks_per_seq"]
    size = n_seqs * per_seq
    if private:
        table = np.full(size, n_blocks, np.uint32)
        owned = v.distinct_uints(min(size, n_blocks), 0, n_blocks - 1)
        table[: len(owned)] = owned
        table = table[v.distinct_uints(size, 0, size - 1)]  # which places get blocks
    else:
        table = v.uints(size, 0, n_blocks - 1)
    if v.bool():  # places without a block
        for _ in range(v.int(1, 3)):
            table[v.int(0, size - 1)] = v.pick((n_blocks, n_blocks + 1, U32_MAX))
    return table


def _paged_params(s: dict, n_blocks: int) -> dict:
    return {"block_size": s["block_size"], "blocks_per_seq": s["blocks_per_seq"], "n_blocks": n_blocks,
            "n_seqs": s["n_seqs"]}  # fmt: skip


def _capacity(s: dict) -> int:
    return s["block_size"] * s["blocks_per_seq"]


def _positions(v: Values, rows: int, capacity: int) -> np.ndarray:
    mode = v.pick(("early", "any", "last"))
    if mode == "early":  # most of the cache must stay invisible
        return v.uints(rows, 0, max(0, capacity // 2))
    if mode == "last":
        return np.full(rows, capacity - 1, np.uint32)
    return v.uints(rows, 0, capacity + 2)  # past the capacity too: then every position is visible


def _kv_write(v: Values, c: dict, s: dict) -> Case:
    rows, kv_dim = s["rows"], s["kv_dim"]
    n_blocks = v.int(1, s["n_seqs"] * s["blocks_per_seq"] + 2)
    stride = 2 * kv_dim + s["extra"]
    k_offset = v.int(0, stride - kv_dim)
    v_offset = v.int(0, stride - kv_dim)
    table = _table(v, s, n_blocks, private=False)
    p = _paged_params(s, n_blocks)
    seqs = v.uints(rows, 0, s["n_seqs"] - 1)
    positions = v.uints(rows, 0, _capacity(s) + 2)
    if rows > 1 and v.bool():
        positions[v.int(0, rows - 1)] = U32_MAX  # beyond the capacity: dropped
    if v.bool():
        seqs[v.int(0, rows - 1)] = s["n_seqs"]  # no such slot: dropped
    pool_rows = n_blocks * s["block_size"]
    written = np.zeros((pool_rows, kv_dim), bool)
    for seq, pos in zip(seqs, positions, strict=True):
        (row,) = cache_rows({"block_tables": table}, p, int(seq), [int(pos)])
        if row >= 0:
            written[row] = True
    mask = written.reshape(-1)
    cache_dt = c["cache_dtype"]
    return Case(
        "kv_write",
        c,
        {"rows": rows, "stride": stride, "k_offset": k_offset, "v_offset": v_offset, "kv_dim": kv_dim, **p},
        {
            "src": v.floats(rows * stride, -100.0, 100.0),
            "positions": positions,
            "seqs": seqs,
            "block_tables": table,
            "k_cache": v.floats(pool_rows * kv_dim, -100.0, 100.0, cache_dt),
            "v_cache": v.floats(pool_rows * kv_dim, -100.0, 100.0, cache_dt),
        },
        written={"k_cache": mask, "v_cache": mask},
        note=f"{int(written.any(axis=1).sum())} cache rows written",
    )


def _nan_from(cache: np.ndarray, start: int, dtype: str) -> np.ndarray:
    """A copy of `cache` holding NaN (all bits set) from element `start` on."""
    cache = cache.copy()
    cache[start:] = np.frombuffer(b"\xff" * host_dtype(dtype).itemsize, host_dtype(dtype))[0]
    return cache


def _poison_unseen(v: Values, caches: tuple, seen: np.ndarray, width: int, dtype: str) -> tuple[tuple, str]:
    """Sometimes NaN in every cache row outside `seen` (rows no query may read)."""
    if seen.all() or not v.bool():
        return caches, ""
    poisoned = []
    for cache in caches:
        grid = cache.reshape(-1, width).copy()
        grid[~seen] = _nan_from(grid[~seen].reshape(-1), 0, dtype).reshape(-1, width)
        poisoned.append(grid.reshape(-1))
    return tuple(poisoned), ", NaN in the rows no query may read"


def _attention(v: Values, c: dict, s: dict) -> Case:
    rows, nkv, group, hd = s["rows"], s["n_kv_heads"], s["group"], s["head_dim"]
    nh = nkv * group
    n_blocks = v.int(1, s["n_seqs"] * s["blocks_per_seq"] + 2)
    q_stride = nh * hd + s["extra"] * hd
    table = _table(v, s, n_blocks, private=False)
    p = _paged_params(s, n_blocks)
    seqs = v.uints(rows, 0, s["n_seqs"] - 1)
    if v.bool():  # consecutive positions of one slot, as a prompt is processed
        start = v.int(0, _capacity(s))
        positions = np.arange(start, start + rows, dtype=np.uint32)
        seqs[:] = seqs[0]
    else:
        positions = _positions(v, rows, _capacity(s))
    scale = float(np.float32(v.pick((1.0 / math.sqrt(hd), 0.05, 0.5, 2.0))))
    cache_dt, width = c["cache_dtype"], nkv * hd
    pool_rows = n_blocks * s["block_size"]
    seen = np.zeros(pool_rows, bool)
    for seq, pos in zip(seqs, positions, strict=True):
        seen[visible_rows({"block_tables": table}, p, int(seq), int(pos))] = True
    caches = (v.floats(pool_rows * width, -2.0, 2.0, cache_dt), v.floats(pool_rows * width, -2.0, 2.0, cache_dt))
    (k_cache, v_cache), note = _poison_unseen(v, caches, seen, width, cache_dt)
    return Case(
        "attention",
        c,
        {"rows": rows, "n_heads": nh, "n_kv_heads": nkv, "head_dim": hd, "q_stride": q_stride, **p, "scale": scale},
        {
            "q": v.floats(rows * q_stride, -2.0, 2.0),
            "k_cache": k_cache,
            "v_cache": v_cache,
            "positions": positions,
            "seqs": seqs,
            "block_tables": table,
        },
        sizes={"out": rows * nh * hd},
        note=f"{int(seen.sum())} of {pool_rows} cache rows visible{note}",
    )


def _decode_attention(v: Values, c: dict, s: dict) -> Case:
    rows, nkv, group, hd = s["rows"], s["n_kv_heads"], s["group"], s["head_dim"]
    nh = nkv * group
    kv_dim = nkv * hd
    stride = (nh + 2 * nkv) * hd + s["extra"]
    n_seqs = max(s["n_seqs"], rows)
    s = {**s, "n_seqs": n_seqs}
    n_blocks = v.int(1, n_seqs * s["blocks_per_seq"] + 2)
    table = _table(v, s, n_blocks, private=True)
    p = _paged_params(s, n_blocks)
    seqs = v.distinct_uints(rows, 0, n_seqs - 1)  # distinct slots, in any order
    if "positions" in s:
        positions = np.full(rows, s["positions"], np.uint32)
    else:
        positions = _positions(v, rows, _capacity(s))
    theta = v.pick((10000.0, 100000.0, 500000.0, 100.0))
    scaling = v.pick((None, LLAMA3_SCALING))
    scale = float(np.float32(v.pick((1.0 / math.sqrt(hd), 0.05, 0.5, 2.0))))
    cache_dt = c["cache_dtype"]
    pool_rows = n_blocks * s["block_size"]
    seen = np.zeros(pool_rows, bool)  # rows read from the cache (the own new rows are not)
    written = np.zeros((pool_rows, kv_dim), bool)
    for seq, pos in zip(seqs, positions, strict=True):
        visible = visible_rows({"block_tables": table}, p, int(seq), int(pos))
        (own,) = cache_rows({"block_tables": table}, p, int(seq), [int(pos)])
        if own >= 0:
            written[own] = True
            visible = visible[:-1]
        seen[visible] = True
    caches = (v.floats(pool_rows * kv_dim, -2.0, 2.0, cache_dt), v.floats(pool_rows * kv_dim, -2.0, 2.0, cache_dt))
    (k_cache, v_cache), poisoned = _poison_unseen(v, caches, seen, kv_dim, cache_dt)
    mask = written.reshape(-1)
    return Case(
        "decode_attention",
        c,
        {"rows": rows, "n_heads": nh, "n_kv_heads": nkv, "head_dim": hd, "stride": stride, **p, "scale": scale},
        {
            "qkv": v.floats(rows * stride, -2.0, 2.0),
            "positions": positions,
            "seqs": seqs,
            "block_tables": table,
            "inv_freq": inverse_frequencies(hd, theta, scaling).astype(np.float32),
            "k_cache": k_cache,
            "v_cache": v_cache,
            "scratch": np.zeros(rows * nh * decode_scratch_row(hd), np.uint32),  # zeros in and out
        },
        written={"k_cache": mask, "v_cache": mask},
        sizes={"out": rows * nh * hd},
        note=f"positions {positions.tolist()} of {_capacity(s)}, theta={theta:g} "
        f"scaling={'llama3' if scaling else 'none'}{poisoned}",
    )


def _attention_cost(s: dict) -> float:
    return s.get("rows", 1) * s["n_kv_heads"] * s["group"] * s["head_dim"] * _capacity(s)


# float32 softmax (exp) and a weighted sum over up to a slot's capacity of rows; f16 caches allow
# half-precision dot products
ATTENTION_TOLERANCE = {"f32": 2e-4, "f16": 2e-3}

# the paged layout's sizes: blocks of awkward sizes (1, a prime, a power of two) in a few slots
PAGED_SHAPES = {
    "block_size": st.one_of(dim(17), st.sampled_from([1, 16])),
    "blocks_per_seq": dim(5),
    "n_seqs": dim(3),
}


def _paged_ladder(rows: int, n_kv_heads: int, group: int, head_dim: int, context: int, block_size: int = 16) -> dict:
    """A model-sized step: `rows` slots of `context` positions each, blocks of block_size."""
    return {"rows": rows, "n_kv_heads": n_kv_heads, "group": group, "head_dim": head_dim, "block_size": block_size,
            "blocks_per_seq": context // block_size, "n_seqs": rows, "extra": 0}  # fmt: skip


CASES = (
    KernelCases(
        "rope",
        shapes=st.fixed_dictionaries(
            {"head_dim": even_dim(128), "heads": dim(4), "extra": st.integers(0, 6), "rows": dim(6)}
        ),
        ladder=(
            {"rows": 64, "heads": 9, "head_dim": 64, "extra": 0},
            {"rows": 512, "heads": 15, "head_dim": 64, "extra": 0},
            {"rows": 2048, "heads": 32, "head_dim": 128, "extra": 0},
        ),
        build=_rope,
        # the angle is float32, and cos/sin of angles up to thousands of radians lose about
        # |angle| * 2^-24 absolute: 1e-3 is well above that and far below a sign error
        tolerance={"f32": 1e-3},
    ),
    KernelCases(
        "kv_write",
        shapes=st.fixed_dictionaries(
            {"rows": dim(8), "kv_dim": even_dim(70), **PAGED_SHAPES, "extra": st.integers(0, 5)}
        ),
        ladder=(
            {"rows": 64, "kv_dim": 192, "block_size": 16, "blocks_per_seq": 128, "n_seqs": 1, "extra": 0},
            {"rows": 512, "kv_dim": 1024, "block_size": 16, "blocks_per_seq": 128, "n_seqs": 4, "extra": 0},
        ),
        build=_kv_write,
        # a copy into an f32 cache is exact; into an f16 cache a float32 may round to nearest-even
        # or toward zero: one f16 ulp is 2^-10 (9.8e-4) of the value
        tolerance={"f32": 0.0, "f16": 2e-3},
        cost=lambda s: s["kv_dim"] * _capacity(s) * s["n_seqs"] + s["rows"] * s["kv_dim"],
        examples=0.75,
    ),
    KernelCases(
        "attention",
        shapes=st.fixed_dictionaries(
            {
                "rows": dim(5),
                "n_kv_heads": dim(3),
                "group": dim(4),
                "head_dim": st.one_of(even_dim(66), st.sampled_from([64, 128, 256])),
                **PAGED_SHAPES,
                "extra": st.integers(0, 3),
            }
        ),
        ladder=(
            _paged_ladder(1, 3, 3, 64, 2048),
            _paged_ladder(17, 3, 3, 64, 2048),
            _paged_ladder(1, 8, 4, 128, 8192),
            _paged_ladder(64, 8, 4, 128, 4096),
        ),
        build=_attention,
        tolerance=ATTENTION_TOLERANCE,
        cost=_attention_cost,
        examples=0.75,
    ),
    KernelCases(
        "decode_attention",
        shapes=st.fixed_dictionaries(
            {
                "rows": dim(4),
                "n_kv_heads": dim(3),
                "group": dim(4),
                "head_dim": st.one_of(even_dim(66), st.sampled_from([64, 128, 256])),
                **PAGED_SHAPES,
                "extra": st.integers(0, 5),
            }
        ),
        ladder=(  # the last position of every slot: its whole capacity is live
            {**_paged_ladder(1, 3, 3, 64, 2048), "positions": 2047},
            {**_paged_ladder(16, 3, 3, 64, 1024), "positions": 1023},
            {**_paged_ladder(1, 8, 4, 128, 8192), "positions": 8191},
        ),
        build=_decode_attention,
        # rope + kv_write + attention of each row: the rotation's error is far below attention's
        # budgets, and the cache rows it writes are compared with them too
        tolerance=ATTENTION_TOLERANCE,
        cost=_attention_cost,
    ),
)
