"""Weight rows widened to float64 for the matrix products: `values(w, dtype).astype(float64)`, bit for bit,
with fewer passes over memory.

Decoding a token widens every weight once, so this is most of a NumPy decode step. Blocks of 32 values
make NumPy pay a call per block for every broadcast operation; the forms below keep those to the few the
format needs. q8_0 and q4_0 go straight to float64: d * q is exact in float32 (11 + 8 significant bits),
so the float64 product is the same value. q4_1's d * q + m rounds in float32 (as ggml's does), so it is
computed there and widened. The nibbles are split over the rows' raw bytes in two whole-array operations,
and each block's 16 bytes of low (high) nibbles are moved as one 16-byte item. Outputs go into a scratch
reused from one row block to the next (one per thread: backends may run in several threads).
"""

from __future__ import annotations

import threading

import numpy as np
from shaderbay.dtypes import value_shape

from .quants import LAYOUTS, values

_scratch = threading.local()


def _buffer(name: str, size: int, dtype: type) -> np.ndarray:
    """This thread's scratch array `name` with at least size elements (grown, never shrunk)."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype)
        setattr(_scratch, name, buf)
    return buf[:size]


def _qs_item(layout: np.dtype) -> np.dtype:
    """A block struct whose only field is its qs bytes as one np.void item (moved as one by NumPy)."""
    qs_type, offset = layout.fields["qs"][:2]
    return np.dtype({"names": ["qs"], "formats": [f"V{qs_type.itemsize}"], "offsets": [offset],
                     "itemsize": layout.itemsize})  # fmt: skip


_QS_ITEMS = {name: _qs_item(LAYOUTS[name]) for name in ("q8_0", "q4_0", "q4_1")}


def _qs_items(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Each block's qs bytes of `raw` (flat bytes of whole blocks) as one item per block."""
    return raw.view(_QS_ITEMS[dtype])["qs"]


def _nibbles(raw: np.ndarray, dtype: str, count: int) -> np.ndarray:
    """uint8 [blocks, 32] of a q4_0/q4_1 block array: value j < 16 the low nibble of qs[j], j + 16 its high."""
    low, high = _buffer("low", raw.size, np.uint8), _buffer("high", raw.size, np.uint8)
    np.bitwise_and(raw, 0x0F, out=low)
    np.right_shift(raw, 4, out=high)
    q = _buffer("q", count, np.uint8).reshape(-1, 32)
    halves = q.view("V16")  # [blocks, 2]: the low nibbles' 16 bytes, then the high nibbles'
    halves[:, 0] = _qs_items(low, dtype)
    halves[:, 1] = _qs_items(high, dtype)
    return q


def _q8_0(raw: np.ndarray, blocks: np.ndarray, out: np.ndarray) -> None:
    q = _buffer("q", out.size, np.uint8).view(np.int8).reshape(-1, 32)
    q.view("V32")[:, 0] = _qs_items(raw, "q8_0")
    np.copyto(out, q)
    np.multiply(out, blocks["d"].astype(np.float64)[:, None], out=out)


def _q4_0(raw: np.ndarray, blocks: np.ndarray, out: np.ndarray) -> None:
    q = _nibbles(raw, "q4_0", out.size).view(np.int8)
    np.subtract(q, 8, out=q)
    np.copyto(out, q)
    np.multiply(out, blocks["d"].astype(np.float64)[:, None], out=out)


def _q4_1(raw: np.ndarray, blocks: np.ndarray, out: np.ndarray) -> None:
    y = _buffer("f32", out.size, np.float32).reshape(-1, 32)
    np.copyto(y, _nibbles(raw, "q4_1", out.size))
    np.multiply(y, blocks["d"].astype(np.float32)[:, None], out=y)
    np.add(y, blocks["m"].astype(np.float32)[:, None], out=y)
    np.copyto(out, y)


_FAST = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1}


def weights_f64(w: np.ndarray, wdtype: str, reuse: bool = False) -> np.ndarray:
    """float64 values of the host rows w of a weight matrix (uint8 rows of blocks for block dtypes), equal to
    `values(w, wdtype).astype(np.float64)`. reuse: into this thread's scratch, valid until the next call."""
    rows, cols = value_shape(wdtype, w.shape)
    out = _buffer("f64", rows * cols, np.float64).reshape(rows, cols) if reuse else np.empty((rows, cols))
    fast = _FAST.get(wdtype)
    if fast is None:
        np.copyto(out, w if wdtype in ("f32", "f16") else values(w, wdtype))
    else:
        raw = np.ascontiguousarray(w).reshape(-1)
        fast(raw, raw.view(LAYOUTS[wdtype]), out.reshape(-1, 32))
    return out
