"""Cases of the attention family: rope, kv_write, attention, decode_attention."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from shaderbay.dtypes import host_dtype
from shaderbay.kernels import DECODE_ATTENTION_SLICES
from shaderbay.rope import inverse_frequencies

from ..harness import Case
from .attention_regimes import KV_WRITE_REGIMES, ROPE_REGIMES, SCORE_REGIMES
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


def _kv_write(v: Values, c: dict, s: dict) -> Case:
    rows, kv_dim, max_seq = s["rows"], s["kv_dim"], s["max_seq"]
    stride = 2 * kv_dim + s["extra"]
    k_offset = v.int(0, stride - kv_dim)
    v_offset = v.int(0, stride - kv_dim)
    positions = v.distinct_uints(rows, 0, max(max_seq + 3, rows - 1))
    if rows > 1 and v.bool():
        positions[v.int(0, rows - 1)] = U32_MAX  # beyond the cache: dropped
    cache_dt = c["cache_dtype"]
    src = v.floats(rows * stride, -100.0, 100.0)
    written = np.zeros((max_seq, kv_dim), bool)
    for p in positions:
        if p < max_seq:
            written[p] = True
    mask = written.reshape(-1)
    return Case(
        "kv_write",
        c,
        {
            "rows": rows,
            "stride": stride,
            "k_offset": k_offset,
            "v_offset": v_offset,
            "kv_dim": kv_dim,
            "max_seq": max_seq,
        },
        {
            "src": src,
            "positions": positions,
            "k_cache": v.floats(max_seq * kv_dim, -100.0, 100.0, cache_dt),
            "v_cache": v.floats(max_seq * kv_dim, -100.0, 100.0, cache_dt),
        },
        written={"k_cache": mask, "v_cache": mask},
    )


def _nan_from(cache: np.ndarray, start: int, dtype: str) -> np.ndarray:
    """A copy of `cache` holding NaN (all bits set) from element `start` on."""
    cache = cache.copy()
    cache[start:] = np.frombuffer(b"\xff" * host_dtype(dtype).itemsize, host_dtype(dtype))[0]
    return cache


def _attention(v: Values, c: dict, s: dict) -> Case:
    rows, nkv, group, hd, max_seq = s["rows"], s["n_kv_heads"], s["group"], s["head_dim"], s["max_seq"]
    nh = nkv * group
    q_stride = nh * hd + s["extra"] * hd
    mode = v.pick(("early", "prefill", "any"))
    if mode == "prefill":  # consecutive positions, as a prompt is processed
        start = v.int(0, max_seq)
        positions = np.arange(start, start + rows, dtype=np.uint32)
    elif mode == "any":  # past the cache too: then every row is visible
        positions = v.uints(rows, 0, max_seq + 2)
    else:  # early positions: most of the cache must stay invisible
        positions = v.uints(rows, 0, max(0, max_seq - 2))
    scale = v.pick((1.0 / math.sqrt(hd), 0.05, 0.5, 2.0))
    scale = float(np.float32(scale))
    cache_dt = c["cache_dtype"]
    k_cache = v.floats(max_seq * nkv * hd, -2.0, 2.0, cache_dt)
    v_cache = v.floats(max_seq * nkv * hd, -2.0, 2.0, cache_dt)
    seen = int(min(int(positions.max()) + 1, max_seq))
    note = f"positions {mode}"
    if seen < max_seq and v.bool():
        # rows no query may see hold NaN: a kernel that reads them (or masks them by multiplying
        # with zero) is caught
        k_cache = _nan_from(k_cache, seen * nkv * hd, cache_dt)
        v_cache = _nan_from(v_cache, seen * nkv * hd, cache_dt)
        note += ", NaN past the last visible row"
    return Case(
        "attention",
        c,
        {
            "rows": rows,
            "n_heads": nh,
            "n_kv_heads": nkv,
            "head_dim": hd,
            "q_stride": q_stride,
            "max_seq": max_seq,
            "scale": scale,
        },
        {"q": v.floats(rows * q_stride, -2.0, 2.0), "k_cache": k_cache, "v_cache": v_cache, "positions": positions},
        sizes={"out": rows * nh * hd},
        note=note,
    )


def _decode_attention(v: Values, c: dict, s: dict) -> Case:
    nkv, group, hd, max_seq = s["n_kv_heads"], s["group"], s["head_dim"], s["max_seq"]
    nh = nkv * group
    kv_dim = nkv * hd
    stride = (nh + 2 * nkv) * hd + s["extra"]
    if "position" in s:
        mode, position = "given", s["position"]
    else:  # the first, some, the last row of the cache; or past it (nothing written, all rows visible)
        mode = v.pick(("first", "mid", "last", "past"))
        position = {
            "first": 0,
            "mid": v.int(0, max_seq - 1),
            "last": max_seq - 1,
            "past": v.pick((max_seq, max_seq + v.int(1, 3), 4095)) if max_seq < 4095 else max_seq,
        }[mode]
    theta = v.pick((10000.0, 100000.0, 500000.0, 100.0))
    scaling = v.pick((None, LLAMA3_SCALING))
    scale = float(np.float32(v.pick((1.0 / math.sqrt(hd), 0.05, 0.5, 2.0))))
    cache_dt = c["cache_dtype"]
    k_cache = v.floats(max_seq * kv_dim, -2.0, 2.0, cache_dt)
    v_cache = v.floats(max_seq * kv_dim, -2.0, 2.0, cache_dt)
    note = f"position {position} ({mode}) of {max_seq}, theta={theta:g} scaling={'llama3' if scaling else 'none'}"
    written = np.zeros((max_seq, kv_dim), bool)
    if position < max_seq:
        written[position] = True
        if v.bool():
            # the row the kernel writes and every row past it hold NaN: a kernel that reads row p
            # from the cache before (or instead of) writing it, or reads later rows, is caught
            k_cache = _nan_from(k_cache, position * kv_dim, cache_dt)
            v_cache = _nan_from(v_cache, position * kv_dim, cache_dt)
            note += ", NaN from row p on"
    mask = written.reshape(-1)
    return Case(
        "decode_attention",
        c,
        {
            "n_heads": nh,
            "n_kv_heads": nkv,
            "head_dim": hd,
            "stride": stride,
            "max_seq": max_seq,
            "scale": scale,
        },
        {
            "qkv": v.floats(stride, -2.0, 2.0),
            "positions": np.array([position], np.uint32),
            "inv_freq": inverse_frequencies(hd, theta, scaling).astype(np.float32),
            "k_cache": k_cache,
            "v_cache": v_cache,
            "scratch": np.zeros(nh * (1 + DECODE_ATTENTION_SLICES * (2 + hd)), np.uint32),  # zeros in and out
        },
        written={"k_cache": mask, "v_cache": mask},
        sizes={"out": nh * hd},
        note=note,
    )


def _attention_cost(s: dict) -> float:
    return s.get("rows", 1) * s["n_kv_heads"] * s["group"] * s["head_dim"] * s["max_seq"]


# float32 softmax (exp) and a weighted sum over up to max_seq rows; f16 caches allow
# half-precision dot products
ATTENTION_TOLERANCE = {"f32": 2e-4, "f16": 2e-3}

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
        regimes=ROPE_REGIMES,
    ),
    KernelCases(
        "kv_write",
        shapes=st.fixed_dictionaries(
            {"rows": dim(8), "kv_dim": even_dim(70), "max_seq": dim(40), "extra": st.integers(0, 5)}
        ),
        ladder=(
            {"rows": 64, "kv_dim": 192, "max_seq": 2048, "extra": 0},
            {"rows": 512, "kv_dim": 1024, "max_seq": 8192, "extra": 0},
        ),
        build=_kv_write,
        # a copy into an f32 cache is exact; into an f16 cache a float32 may round to nearest-even
        # or toward zero: one f16 ulp is 2^-10 (9.8e-4) of the value
        tolerance={"f32": 0.0, "f16": 2e-3},
        cost=lambda s: s["kv_dim"] * s["max_seq"] + s["rows"] * s["kv_dim"],
        examples=0.75,
        regimes=KV_WRITE_REGIMES,
    ),
    KernelCases(
        "attention",
        shapes=st.fixed_dictionaries(
            {
                "rows": dim(5),
                "n_kv_heads": dim(3),
                "group": dim(4),
                "head_dim": st.one_of(even_dim(66), st.sampled_from([64, 128, 256])),
                "max_seq": dim(48),
                "extra": st.integers(0, 3),
            }
        ),
        ladder=(
            {"rows": 1, "n_kv_heads": 3, "group": 3, "head_dim": 64, "max_seq": 2048, "extra": 0},
            {"rows": 17, "n_kv_heads": 3, "group": 3, "head_dim": 64, "max_seq": 2048, "extra": 0},
            {"rows": 1, "n_kv_heads": 8, "group": 4, "head_dim": 128, "max_seq": 8192, "extra": 0},
            {"rows": 64, "n_kv_heads": 8, "group": 4, "head_dim": 128, "max_seq": 4096, "extra": 0},
        ),
        build=_attention,
        tolerance=ATTENTION_TOLERANCE,
        cost=_attention_cost,
        examples=0.75,
        regimes=SCORE_REGIMES,
    ),
    KernelCases(
        "decode_attention",
        shapes=st.fixed_dictionaries(
            {
                "n_kv_heads": dim(3),
                "group": dim(4),
                "head_dim": st.one_of(even_dim(66), st.sampled_from([64, 128, 256])),
                "max_seq": dim(48),
                "extra": st.integers(0, 5),
            }
        ),
        ladder=(  # the last position of the cache: every row is live
            {"n_kv_heads": 3, "group": 3, "head_dim": 64, "max_seq": 2048, "extra": 0, "position": 2047},
            {"n_kv_heads": 8, "group": 4, "head_dim": 128, "max_seq": 8192, "extra": 0, "position": 8191},
        ),
        build=_decode_attention,
        # rope + kv_write + attention of one row: the rotation's error is far below attention's
        # budgets, and the cache row it writes is compared with them too
        tolerance=ATTENTION_TOLERANCE,
        cost=_attention_cost,
        regimes=SCORE_REGIMES,
    ),
)
