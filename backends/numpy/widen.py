"""Weight matrices widened to float64 for the matrix products: `values(w, dtype).astype(float64)`, bit for
bit, with fewer passes over memory.

Decoding a token widens every weight once, so this is most of a NumPy decode step. Blocks of 32 values
make NumPy pay a call per block for every broadcast operation; the forms below keep those to the few the
format needs. q8_0 and q4_0 go straight to float64: d * q is exact in float32 (11 + 8 significant bits),
so the float64 product is the same value. q4_1's d * q + m rounds in float32 (as ggml's does), so it is
computed there and widened, as are q4_k's (d * sc) * q - dmin * m and q6_k's (d * sc) * q (each
sub-block's d * sc is exact in float32, so one product per value rounds as ggml's two do). The nibbles
are split over the matrix's raw bytes in two whole-array operations, and each block's 16 bytes of low
(high) nibbles are moved as one 16-byte item. What is per
matrix (scales, views) is done once per matrix, what is per row block goes into scratch arrays reused
from one block to the next (one set per thread: backends may run in several threads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
from shaderbay.dtypes import BLOCK_DTYPES, value_shape

from .quants import LAYOUTS, q4_k_scale_min, values

_scratch = threading.local()


def scratch(name: str, size: int, dtype: type) -> np.ndarray:
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

# Fill(first block, end block, out: float64 [blocks, values a block]) for one matrix
Fill = Callable[[int, int, np.ndarray], None]


def _nibble_reader(raw: np.ndarray, dtype: str, max_blocks: int) -> Callable[[int, int], np.ndarray]:
    """nibbles(b0, b1): uint8 [b1 - b0, 32] of blocks b0..b1 of a q4_0/q4_1 matrix's bytes: value j < 16 the
    low nibble of qs[j], j + 16 its high. The nibbles are split over the blocks' whole bytes, then each
    block's 16 bytes of low (high) nibbles move as one item."""
    size = LAYOUTS[dtype].itemsize
    low, high = scratch("low", max_blocks * size, np.uint8), scratch("high", max_blocks * size, np.uint8)
    low_items, high_items = low.view(_QS_ITEMS[dtype])["qs"], high.view(_QS_ITEMS[dtype])["qs"]

    def nibbles(b0: int, b1: int) -> np.ndarray:
        n, part = b1 - b0, raw[b0 * size : b1 * size]
        np.bitwise_and(part, 0x0F, out=low[: n * size])
        np.right_shift(part, 4, out=high[: n * size])
        q = scratch("q", 32 * n, np.uint8).reshape(n, 32)
        halves = q.view("V16")  # [blocks, 2]: the low nibbles' 16 bytes, then the high nibbles'
        halves[:, 0] = low_items[:n]
        halves[:, 1] = high_items[:n]
        return q

    return nibbles


def _q8_0(raw: np.ndarray, max_blocks: int) -> Fill:
    qs, d = raw.view(_QS_ITEMS["q8_0"])["qs"], raw.view(LAYOUTS["q8_0"])["d"].astype(np.float64)[:, None]

    def fill(b0: int, b1: int, out: np.ndarray) -> None:
        q = scratch("q", out.size, np.uint8).view(np.int8).reshape(-1, 32)
        q.view("V32")[:, 0] = qs[b0:b1]
        np.copyto(out, q)
        np.multiply(out, d[b0:b1], out=out)

    return fill


def _q4_0(raw: np.ndarray, max_blocks: int) -> Fill:
    nibbles = _nibble_reader(raw, "q4_0", max_blocks)
    d = raw.view(LAYOUTS["q4_0"])["d"].astype(np.float64)[:, None]

    def fill(b0: int, b1: int, out: np.ndarray) -> None:
        q = nibbles(b0, b1).view(np.int8)
        np.subtract(q, 8, out=q)
        np.copyto(out, q)
        np.multiply(out, d[b0:b1], out=out)

    return fill


def _q4_1(raw: np.ndarray, max_blocks: int) -> Fill:
    nibbles = _nibble_reader(raw, "q4_1", max_blocks)
    blocks = raw.view(LAYOUTS["q4_1"])
    d, m = blocks["d"].astype(np.float32)[:, None], blocks["m"].astype(np.float32)[:, None]

    def fill(b0: int, b1: int, out: np.ndarray) -> None:
        y = scratch("f32", out.size, np.float32).reshape(-1, 32)
        np.copyto(y, nibbles(b0, b1))
        np.multiply(y, d[b0:b1], out=y)
        np.add(y, m[b0:b1], out=y)
        np.copyto(out, y)

    return fill


def _q4_k(raw: np.ndarray, max_blocks: int) -> Fill:
    size = LAYOUTS["q4_k"].itemsize
    blocks = raw.view(LAYOUTS["q4_k"])
    pairs = [q4_k_scale_min(blocks["scales"], j) for j in range(8)]  # (sc, m) of each sub-block
    sc, m = (np.stack([p[i] for p in pairs], axis=1).astype(np.float32) for i in (0, 1))
    scale = (blocks["d"].astype(np.float32)[:, None] * sc)[..., None]  # [blocks, 8 sub-blocks, 1]
    offset = (blocks["dmin"].astype(np.float32)[:, None] * m)[..., None]
    chunks = np.dtype({"names": ["qs"], "formats": ["(4,)V32"], "offsets": [LAYOUTS["q4_k"].fields["qs"][1]],
                       "itemsize": size})  # fmt: skip
    low, high = scratch("low", max_blocks * size, np.uint8), scratch("high", max_blocks * size, np.uint8)
    low_items, high_items = low.view(chunks)["qs"], high.view(chunks)["qs"]  # [blocks, 4]: 32 bytes each

    def fill(b0: int, b1: int, out: np.ndarray) -> None:
        n, part = b1 - b0, raw[b0 * size : b1 * size]
        np.bitwise_and(part, 0x0F, out=low[: n * size])
        np.right_shift(part, 4, out=high[: n * size])
        q = scratch("q", 256 * n, np.uint8).reshape(n, 8, 32)  # chunk c of qs: sub-blocks 2c and 2c + 1
        halves = q.view("V32").reshape(n, 4, 2)
        halves[:, :, 0] = low_items[:n]
        halves[:, :, 1] = high_items[:n]
        y = scratch("f32", 256 * n, np.float32).reshape(n, 8, 32)
        np.copyto(y, q)
        np.multiply(y, scale[b0:b1], out=y)
        np.subtract(y, offset[b0:b1], out=y)
        np.copyto(out.reshape(n, 8, 32), y)

    return fill


def _q6_k(raw: np.ndarray, max_blocks: int) -> Fill:
    blocks = raw.view(LAYOUTS["q6_k"])
    scale = (blocks["d"].astype(np.float32)[:, None] * blocks["scales"].astype(np.float32))[
        ..., None
    ]  # [blocks, 16, 1]

    def fill(b0: int, b1: int, out: np.ndarray) -> None:
        n, b = b1 - b0, blocks[b0:b1]
        # value 128 h + 32 s + l of half h: ql[64 h + l + 32 (s & 1)]'s low nibble (s < 2) or high, and bits
        # 2s, 2s + 1 of qh[32 h + l]: the low nibbles of a half's 64 ql bytes are its first 64 values
        q = scratch("q", 256 * n, np.uint8).reshape(n, 2, 2, 64)
        ql = b["ql"].reshape(n, 2, 64)
        np.bitwise_and(ql, 0x0F, out=q[:, :, 0])
        np.right_shift(ql, 4, out=q[:, :, 1])
        bits = scratch("bits", 256 * n, np.uint8).reshape(n, 2, 4, 32)
        qh = b["qh"].reshape(n, 2, 32)
        for s in range(4):
            np.right_shift(qh, 2 * s, out=bits[:, :, s])
        np.bitwise_and(bits, 3, out=bits)
        np.left_shift(bits, 4, out=bits)
        q4 = q.reshape(n, 2, 4, 32)
        np.bitwise_or(q4, bits, out=q4)
        signed = q.view(np.int8)
        np.subtract(signed, 32, out=signed)
        y = scratch("f32", 256 * n, np.float32).reshape(n, 16, 16)
        np.copyto(y, signed.reshape(n, 16, 16))
        np.multiply(y, scale[b0:b1], out=y)
        np.copyto(out.reshape(n, 16, 16), y)

    return fill


_FAST = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1, "q4_k": _q4_k, "q6_k": _q6_k}


def _filler(w: np.ndarray, wdtype: str, step: int) -> Callable[[int, np.ndarray], None]:
    """fill(start, out): the float64 values of rows start.. of w (out's rows, at most step of them)."""
    rows, cols = value_shape(wdtype, w.shape)
    make = _FAST.get(wdtype)
    if make is None:

        def plain(start: int, out: np.ndarray) -> None:
            part = w[start : start + len(out)]
            np.copyto(out, part if wdtype in ("f32", "f16") else values(part, wdtype))

        return plain
    block = BLOCK_DTYPES[wdtype].block
    per_row = cols // block  # blocks a row
    fill = make(np.ascontiguousarray(w).reshape(-1), min(step, rows) * per_row)
    return lambda start, out: fill(start * per_row, (start + len(out)) * per_row, out.reshape(-1, block))


def row_blocks(w: np.ndarray, wdtype: str, step: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float64 values) of each `step` rows of the host rows w of a weight matrix (uint8 rows of
    blocks for block dtypes), equal to `values(w, wdtype).astype(np.float64)`'s rows; the values are in this
    thread's scratch, valid until the next block."""
    rows, cols = value_shape(wdtype, w.shape)
    fill = _filler(w, wdtype, step)
    for start in range(0, rows, step):
        out = scratch("f64", min(step, rows - start) * cols, np.float64).reshape(-1, cols)
        fill(start, out)
        yield start, out


def weights_f64(w: np.ndarray, wdtype: str, step: int) -> np.ndarray:
    """The whole matrix's float64 values, a fresh array, filled `step` rows at a time (the scratch stays
    the size of a row block)."""
    rows, cols = value_shape(wdtype, w.shape)
    out = np.empty((rows, cols))
    fill = _filler(w, wdtype, step)
    for start in range(0, rows, step):
        fill(start, out[start : start + step])
    return out
