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
from shaderbay.kernels import BATCH_ROWS, uniform

from .quants import values

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
    return g / (1.0 + np.exp(-g))


def _weights_f64(w: np.ndarray, wdtype: str) -> np.ndarray:
    return (w if wdtype in ("f32", "f16") else values(w, wdtype)).astype(np.float64)


_BLOCK = 1 << 16  # weight elements widened at a time for a batch of rows (a cache-sized block)


def _times_weights(x64: np.ndarray, w: np.ndarray, wdtype: str) -> np.ndarray:
    """x64 @ w.T in float64. Up to BATCH_ROWS rows (decode), row by row, each row through the same
    BLAS call whatever the rows count, so a row's result never depends on the others (one BLAS
    product orders its sums by its shape: 1 and 4 rows of a 2048-wide f16 matrix differ in the last
    float64 bits of ~7% of the outputs, which rounding to float32 sometimes shows), and w is widened
    block by block, never whole. Above BATCH_ROWS (prefill), one product."""
    rows, n, k = x64.shape[0], w.shape[0], x64.shape[1]
    if rows > BATCH_ROWS:
        return x64 @ _weights_f64(w, wdtype).T
    step = max(1, _BLOCK // k)
    y = np.empty((rows, n))
    for start in range(0, n, step):
        block = _weights_f64(w[start : start + step], wdtype)
        for r in range(rows):
            np.matmul(block, x64[r], out=y[r, start : start + step])
    return y


def matmul(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, n, k = p["rows"], p["n"], p["k"]
    if c["prologue"] == "silu_mul":
        gate_up = b["x"][: rows * 2 * k].reshape(rows, 2 * k).astype(np.float64)
        x = (_silu(gate_up[:, :k]) * gate_up[:, k:]).astype(np.float32)
    else:
        x = b["x"][: rows * k].reshape(rows, k)
        if c["prologue"] == "rmsnorm":
            x = _rms_normalise(x, b["norm_weight"][:k], p["eps"])
    y = _times_weights(x.astype(np.float64), _matrix(b["w"], c["wdtype"], n, k), c["wdtype"])
    if c["bias"]:
        y += b["bias"][:n]
    if c["epilogue"] == "silu_mul":  # rows of w interleave gate and up
        y = _silu(y[:, 0::2].astype(np.float32).astype(np.float64)) * y[:, 1::2].astype(np.float32)
        n //= 2
    out = b["out"][: rows * n].reshape(rows, n)
    if c["accumulate"]:
        y += out
    out[...] = y.astype(np.float32)


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


def _cache_view(buffer: np.ndarray, max_seq: int, width: int) -> np.ndarray:
    return buffer[: max_seq * width].reshape(max_seq, width)


def kv_write(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, stride, kv_dim, max_seq = p["rows"], p["stride"], p["kv_dim"], p["max_seq"]
    src = b["src"][: rows * stride].reshape(rows, stride)
    k_cache = _cache_view(b["k_cache"], max_seq, kv_dim)
    v_cache = _cache_view(b["v_cache"], max_seq, kv_dim)
    for r, pos in enumerate(b["positions"][:rows].astype(np.int64)):
        if pos < max_seq:
            k_cache[pos] = src[r, p["k_offset"] : p["k_offset"] + kv_dim]
            v_cache[pos] = src[r, p["v_offset"] : p["v_offset"] + kv_dim]


def attention(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, nh, nkv, hd = p["rows"], p["n_heads"], p["n_kv_heads"], p["head_dim"]
    max_seq, q_stride = p["max_seq"], p["q_stride"]
    q = b["q"][: rows * q_stride].reshape(rows, q_stride)[:, : nh * hd].reshape(rows, nh, hd)
    keys = _cache_view(b["k_cache"], max_seq, nkv * hd).reshape(max_seq, nkv, hd)
    values = _cache_view(b["v_cache"], max_seq, nkv * hd).reshape(max_seq, nkv, hd)
    out = np.empty((rows, nh, hd), np.float32)
    group = nh // nkv
    for r, pos in enumerate(b["positions"][:rows].astype(np.int64)):
        length = min(pos + 1, max_seq)
        for h in range(nh):
            k = keys[:length, h // group].astype(np.float64)
            v = values[:length, h // group].astype(np.float64)
            scores = p["scale"] * (k @ q[r, h].astype(np.float64))
            weights = np.exp(scores - scores.max())
            out[r, h] = (weights / weights.sum()) @ v
    b["out"][: rows * nh * hd] = out.ravel()


def decode_attention(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    """rope, kv_write and attention of one row, composed (on a copy of the row: qkv stays as it is)."""
    nh, nkv, hd, stride, max_seq = p["n_heads"], p["n_kv_heads"], p["head_dim"], p["stride"], p["max_seq"]
    q_dim, kv_dim = nh * hd, nkv * hd
    row = b["qkv"][:stride].copy()
    positions = b["positions"][:1]
    rope(
        {"x": row, "positions": positions, "inv_freq": b["inv_freq"]},
        {"rows": 1, "heads": nh + nkv, "head_dim": hd, "stride": stride, "offset": 0},
        {},
    )
    cached = {"k_cache": b["k_cache"], "v_cache": b["v_cache"]}
    kv_write(
        {"src": row, "positions": positions, **cached},
        {"rows": 1, "stride": stride, "k_offset": q_dim, "v_offset": q_dim + kv_dim, "kv_dim": kv_dim,
         "max_seq": max_seq},
        c,
    )  # fmt: skip
    attention(
        {"q": row, "positions": positions, "out": b["out"], **cached},
        {"rows": 1, "n_heads": nh, "n_kv_heads": nkv, "head_dim": hd, "q_stride": stride, "max_seq": max_seq,
         "scale": p["scale"]},
        c,
    )  # fmt: skip


def silu_mul(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    rows, n = p["rows"], p["n"]
    gate_up = b["gate_up"][: rows * 2 * n].reshape(rows, 2 * n).astype(np.float64)
    b["out"][: rows * n] = (_silu(gate_up[:, :n]) * gate_up[:, n:]).astype(np.float32).ravel()


def add(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    n = p["n"]
    b["x"][:n] = (b["x"][:n].astype(np.float64) + b["y"][:n]).astype(np.float32)


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
        seen = np.unique(history[history < n].astype(np.int64))
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
    seed, step, hist_len = (int(v) for v in b["state"][:3])
    used = min(hist_len, p["hist_cap"])
    token = sample_token(
        b["logits"][: p["n"]],
        b["history"][:used],
        seed,
        step,
        p["temperature"],
        p["top_k"],
        p["top_p"],
        p["penalty"],
        p["min_p"],
    )
    b["out"][0] = token
    if hist_len < p["hist_cap"]:
        b["history"][hist_len] = token


def advance(b: Arrays, p: dict[str, Any], c: dict[str, Any]) -> None:
    steps = np.uint32(p["steps"])
    with np.errstate(over="ignore"):
        b["position"][0] += steps
        b["state"][1:3] += steps


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
