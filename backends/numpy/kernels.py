"""Reference semantics of every catalogue kernel: obviously right, not fast.

Each function takes the bindings as flat host arrays of their declared dtype (writes go
into them in place), the parameters and the constants. Float64 accumulation wherever
a sum is taken, so the reference is the most accurate thing in the room.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from shaderbay.dtypes import host_shape, nbytes
from shaderbay.kernels import BATCH_ROWS, SAMPLE_SETTINGS, uniform

from . import blockdot
from .quants import values
from .widen import row_blocks, weights_f64

Arrays = dict[str, np.ndarray]


def _matrix(buffer: np.ndarray, dtype: str, rows: int, cols: int) -> np.ndarray:
    """The first rows of a weight binding, as its host array (rows of blocks: uint8 bytes)."""
    return buffer[: nbytes(dtype, (rows, cols)) // buffer.itemsize].reshape(host_shape(dtype, (rows, cols)))


def embed(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, dim, vocab = p["rows"], p["dim"], p["vocab"]
    table = _matrix(b["table"], c["wdtype"], vocab, dim)
    ids = b["ids"][:rows].astype(np.int64)
    out = np.zeros((rows, dim), np.float32)
    valid = ids < vocab
    out[valid] = values(table[ids[valid]], c["wdtype"])
    b["out"][: rows * dim] = out.ravel()


def _rms_normalise(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    scale = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    return (x64 * scale * weight.astype(np.float64)).astype(np.float32)


def rmsnorm(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, n = p["rows"], p["n"]
    x = b["x"][: rows * n].reshape(rows, n)
    b["out"][: rows * n] = _rms_normalise(x, b["weight"][:n], p["eps"]).ravel()


def _silu(g: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-g) is inf for g < -709: g / inf = -0, silu's limit
        return g / (1.0 + np.exp(-g))


_BLOCK = 1 << 16  # weight elements widened at a time for a batch of rows (a cache-sized block)


def _times_weights(x64: np.ndarray, w: np.ndarray, wdtype: str) -> np.ndarray:
    """x64 @ w.T in float64. Up to BATCH_ROWS rows (decode), row by row, each row through the same
    BLAS call whatever the rows count, so a row's result never depends on the others (one BLAS
    product orders its sums by its shape: 1 and 4 rows of a 2048-wide f16 matrix differ in the last
    float64 bits of ~7% of the outputs, which rounding to float32 sometimes shows), and w is widened
    block by block, never whole. Above BATCH_ROWS (prefill), one product."""
    rows, n, k = x64.shape[0], w.shape[0], x64.shape[1]
    step = max(1, _BLOCK // k)
    if rows > BATCH_ROWS:
        return x64 @ weights_f64(w, wdtype, step).T
    y = np.empty((rows, n))
    for start, block in row_blocks(w, wdtype, step):
        for r in range(rows):
            np.matmul(block, x64[r], out=y[r, start : start + step])
    return y


def matmul(b: Arrays, p: dict[str, Any], c: dict[str, Any], scales: Callable = blockdot.scales) -> None:
    """`scales`: blockdot.scales, or what gives its result for these weights without making it again."""
    rows, n, k = p["rows"], p["n"], p["k"]
    if c["prologue"] == "silu_mul":
        gate_up = b["x"][: rows * 2 * k].reshape(rows, 2 * k).astype(np.float64)
        x = (_silu(gate_up[:, :k]) * gate_up[:, k:]).astype(np.float32)
    else:
        x = b["x"][: rows * k].reshape(rows, k)
        if c["prologue"] == "rmsnorm":
            x = _rms_normalise(x, b["norm_weight"][:k], p["eps"])
    wdtype, w, x64 = c["wdtype"], _matrix(b["w"], c["wdtype"], n, k), x.astype(np.float64)
    # decode's q8_0 / q4_0 / q4_1 products from the blocks (faster for a row alone), rounded exactly to
    # float32 so that a row's bits do not depend on the rows count; other products in float64 row by row
    bound, addends = None, []
    made = scales(w, wdtype, rows == 1) if rows <= BATCH_ROWS and wdtype in blockdot.FORMATS else None
    if made is not None:
        y, bound = blockdot.times(x64, w, wdtype, *made)
    else:
        y = _times_weights(x64, w, wdtype)

    def to_f32(y: np.ndarray) -> np.ndarray:
        return y.astype(np.float32) if bound is None else blockdot.rounded(y, bound, addends, x64, w, wdtype)

    if c["bias"]:
        addends.append(np.broadcast_to(b["bias"][:n].astype(np.float64), y.shape))
        y += addends[-1]
    if c["epilogue"] == "silu_mul":  # rows of w interleave gate and up
        y32 = to_f32(y)
        y, bound = _silu(y32[:, 0::2].astype(np.float64)) * y32[:, 1::2], None  # its float64 arithmetic is the meaning
        n //= 2
    stride, first = p["out_stride"], p["out_offset"]
    out = b["out"][: rows * stride].reshape(rows, stride)[:, first : first + n]
    if c["accumulate"]:
        addends.append(out.astype(np.float64))
        y += addends[-1]
    out[...] = to_f32(y)


def rope(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, heads, hd, stride, offset = p["rows"], p["heads"], p["head_dim"], p["stride"], p["offset"]
    half = hd // 2
    x = b["x"][: rows * stride].reshape(rows, stride)
    angle = b["positions"][:rows].astype(np.float32)[:, None] * b["inv_freq"][:half][None, :]  # float32
    cos = np.cos(angle.astype(np.float64))[:, None, :]
    sin = np.sin(angle.astype(np.float64))[:, None, :]
    region = x[:, offset : offset + heads * hd].reshape(rows, heads, hd).astype(np.float64)
    x1, x2 = region[..., :half], region[..., half:]
    rotated = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    x[:, offset : offset + heads * hd] = rotated.reshape(rows, heads * hd).astype(np.float32)


def _cache_view(buffer: np.ndarray, p: dict[str, Any], width: int) -> np.ndarray:
    rows = p["n_blocks"] * p["block_size"]
    return buffer[: rows * width].reshape(rows, width)


def cache_rows(b: Arrays, p: dict[str, Any], seq: int, positions: np.ndarray) -> np.ndarray:
    """The cache rows of logical `positions` of slot `seq`, -1 where there is none (past the slot's
    capacity, an invalid table entry, a slot >= n_seqs)."""
    bs, per_seq, n_blocks = p["block_size"], p["blocks_per_seq"], p["n_blocks"]
    positions = np.asarray(positions, np.int64)
    if seq >= p["n_seqs"]:
        return np.full(positions.shape, -1, np.int64)
    inside = positions < bs * per_seq
    table = b["block_tables"][seq * per_seq : (seq + 1) * per_seq].astype(np.int64)
    blocks = table[np.where(inside, positions // bs, 0)]
    return np.where(inside & (blocks < n_blocks), blocks * bs + positions % bs, -1)


def visible_rows(b: Arrays, p: dict[str, Any], seq: int, pos: int) -> np.ndarray:
    """The cache rows a query of slot `seq` at position `pos` attends to, in position order."""
    return _visible_prefixes(b, p, seq, np.array([pos]))[0]


def _visible_prefixes(b: Arrays, p: dict[str, Any], seq: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cache rows the latest of `positions` (of slot `seq`) attends to, and how many of them each
    position attends to: its own are a prefix of them (one block table, read in position order)."""
    lengths = np.minimum(np.asarray(positions, np.int64) + 1, p["block_size"] * p["blocks_per_seq"])
    rows = cache_rows(b, p, seq, np.arange(lengths.max()))
    valid = rows >= 0
    return rows[valid], np.concatenate([[0], np.cumsum(valid)])[lengths]


def _attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale * q . keys) @ values per head (q: heads x hd; keys, values: m x kv_heads x hd,
    head h reading kv head h // group); zeros when there is no key."""
    nh, hd = q.shape
    if len(keys) == 0:
        return np.zeros((nh, hd), np.float32)
    nkv = keys.shape[1]
    qg = q.reshape(nkv, nh // nkv, hd).astype(np.float64)  # the heads of each kv head
    k = keys.transpose(1, 2, 0).astype(np.float64, copy=False)  # kv_heads x hd x m
    v = values.transpose(1, 0, 2).astype(np.float64, copy=False)  # kv_heads x m x hd
    scores = scale * (qg @ k)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    out = (weights / weights.sum(axis=-1, keepdims=True)) @ v
    return out.reshape(nh, hd).astype(np.float32)


def kv_write(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, stride, kv_dim = p["rows"], p["stride"], p["kv_dim"]
    src = b["src"][: rows * stride].reshape(rows, stride)
    k_cache = _cache_view(b["k_cache"], p, kv_dim)
    v_cache = _cache_view(b["v_cache"], p, kv_dim)
    for r in range(rows):
        (row,) = cache_rows(b, p, int(b["seqs"][r]), [int(b["positions"][r])])
        if row >= 0:
            with np.errstate(over="ignore"):  # past f16's range a value rounds to inf, as the GPU stores it
                k_cache[row] = src[r, p["k_offset"] : p["k_offset"] + kv_dim]
                v_cache[row] = src[r, p["v_offset"] : p["v_offset"] + kv_dim]


def attention(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, nh, nkv, hd, q_stride = p["rows"], p["n_heads"], p["n_kv_heads"], p["head_dim"], p["q_stride"]
    q = b["q"][: rows * q_stride].reshape(rows, q_stride)[:, : nh * hd].reshape(rows, nh, hd)
    keys = _cache_view(b["k_cache"], p, nkv * hd).reshape(-1, nkv, hd)
    values = _cache_view(b["v_cache"], p, nkv * hd).reshape(-1, nkv, hd)
    seqs, positions = b["seqs"][:rows].astype(np.int64), b["positions"][:rows]
    out = np.empty((rows, nh, hd), np.float32)
    for seq in _distinct(seqs):
        mine = np.flatnonzero(seqs == seq)
        seen, counts = _visible_prefixes(b, p, int(seq), positions[mine])
        k, v = keys[seen].astype(np.float64), values[seen].astype(np.float64)  # once for all its rows
        for r, m in zip(mine, counts, strict=True):
            out[r] = _attend(q[r], k[:m], v[:m], p["scale"])
    b["out"][: rows * nh * hd] = out.ravel()


def decode_attention(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    """rope, then each row's attention over the cache as it was plus its own new row, then kv_write
    of every row (on a copy of qkv: qkv stays as it is)."""
    rows, nh, nkv, hd, stride = p["rows"], p["n_heads"], p["n_kv_heads"], p["head_dim"], p["stride"]
    q_dim, kv_dim = nh * hd, nkv * hd
    qkv = b["qkv"][: rows * stride].copy()
    positions, seqs = b["positions"][:rows], b["seqs"][:rows]
    rope(
        {"x": qkv, "positions": positions, "inv_freq": b["inv_freq"]},
        {"rows": rows, "heads": nh + nkv, "head_dim": hd, "stride": stride, "offset": 0},
        {},
    )
    qkv = qkv.reshape(rows, stride)
    k_cache = _cache_view(b["k_cache"], p, kv_dim)
    v_cache = _cache_view(b["v_cache"], p, kv_dim)
    out = np.empty((rows, nh, hd), np.float32)
    for r in range(rows):
        seq, pos = int(seqs[r]), int(positions[r])
        seen = visible_rows(b, p, seq, pos)
        keys, values = k_cache[seen], v_cache[seen]  # copies: the own row goes in as the cache stores it
        (own,) = cache_rows(b, p, seq, [pos])
        if own >= 0:
            keys[-1] = qkv[r, q_dim : q_dim + kv_dim]
            values[-1] = qkv[r, q_dim + kv_dim : q_dim + 2 * kv_dim]
        out[r] = _attend(qkv[r, :q_dim].reshape(nh, hd), keys.reshape(-1, nkv, hd), values.reshape(-1, nkv, hd),
                         p["scale"])  # fmt: skip
    b["out"][: rows * q_dim] = out.ravel()
    paged = {k: p[k] for k in ("block_size", "blocks_per_seq", "n_blocks", "n_seqs")}
    kv_write(
        {"src": qkv.ravel(), "positions": positions, "seqs": seqs, "block_tables": b["block_tables"],
         "k_cache": b["k_cache"], "v_cache": b["v_cache"]},
        {"rows": rows, "stride": stride, "k_offset": q_dim, "v_offset": q_dim + kv_dim, "kv_dim": kv_dim, **paged},
        c,
    )  # fmt: skip


def silu_mul(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, n = p["rows"], p["n"]
    gate_up = b["gate_up"][: rows * 2 * n].reshape(rows, 2 * n).astype(np.float64)
    b["out"][: rows * n] = (_silu(gate_up[:, :n]) * gate_up[:, n:]).astype(np.float32).ravel()


def add(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    n = p["n"]
    b["x"][:n] = (b["x"][:n].astype(np.float64) + b["y"][:n]).astype(np.float32)


def _distinct(values: np.ndarray) -> np.ndarray:
    """np.unique's values, by a sort: np.unique's hash (NumPy >= 2.3) releases the GIL inside C++, and a
    daemon thread still there when the interpreter exits aborts the process (tests/test_threads.py)."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if ordered.size else ordered


def _first_argmax(x: np.ndarray) -> int:
    if np.all(np.isnan(x)):
        return 0
    return int(np.argmax(np.where(np.isnan(x), -np.inf, x)))


def argmax(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, n = p["rows"], p["n"]
    x = b["x"][: rows * n].reshape(rows, n)
    b["out"][:rows] = [_first_argmax(row) for row in x]


def sample_token(
    logits: np.ndarray,
    history: np.ndarray,
    seed: int,
    step: int,
    temperature: float,
    top_k: int,
    top_p: float,
    penalty: float,
    min_p: float = 0.0,
) -> int:
    """The sampler, as a plain function (the `sample` kernel and host code share it)."""
    n = len(logits)
    logits = logits.astype(np.float64).copy()
    if penalty != 1.0:
        seen = _distinct(history[history < n].astype(np.int64))
        logits[seen] = np.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
    if temperature <= 0:
        return _first_argmax(logits)
    probs = np.exp((logits - logits.max()) / temperature)
    probs /= probs.sum()
    keep = np.ones(n, bool)
    if 0 < top_k < n:
        keep &= probs >= np.sort(probs)[::-1][top_k - 1]
    if top_p < 1.0:
        ordered = np.sort(probs)[::-1]
        cut = int(np.searchsorted(np.cumsum(ordered), top_p))
        keep &= probs >= ordered[min(cut, n - 1)]
    if min_p > 0:
        keep &= probs >= min_p * probs.max()
    kept = np.flatnonzero(keep)
    target = uniform(seed, step) * probs[kept].sum()
    chosen = int(np.searchsorted(np.cumsum(probs[kept]), target, side="right"))
    return int(kept[min(chosen, len(kept) - 1)])


def sample(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, n, hist_cap = p["rows"], p["n"], p["hist_cap"]
    logits = b["logits"][: rows * n].reshape(rows, n)
    for r in range(rows):
        s = int(b["seqs"][r])
        seed, step, hist_len = (int(v) for v in b["state"][4 * s : 4 * s + 3])
        temperature, top_k, top_p, penalty, min_p = (
            float(v) for v in b["settings"][SAMPLE_SETTINGS * s : SAMPLE_SETTINGS * s + 5]
        )
        history = b["history"][s * hist_cap : (s + 1) * hist_cap]
        token = sample_token(
            logits[r], history[: min(hist_len, hist_cap)], seed, step, temperature, int(top_k), top_p, penalty, min_p
        )
        b["out"][r] = token
        if hist_len < hist_cap:
            history[hist_len] = token


def advance(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    steps = np.uint32(p["steps"])
    with np.errstate(over="ignore"):
        for r in range(p["rows"]):
            b["positions"][r] += steps
            s = int(b["seqs"][r])
            b["state"][4 * s + 1 : 4 * s + 3] += steps


REFERENCE: dict[str, Callable[[Arrays, dict[str, Any], dict[str, Any]], None]] = {
    "embed": embed,
    "rmsnorm": rmsnorm,
    "matmul": matmul,
    "rope": rope,
    "kv_write": kv_write,
    "attention": attention,
    "decode_attention": decode_attention,
    "silu_mul": silu_mul,
    "add": add,
    "argmax": argmax,
    "sample": sample,
    "advance": advance,
}
