"""Decode's products with q8_0, q4_0 and q4_1 weights, from the blocks' bytes, exactly rounded.

A row's x . w is, rearranged exactly, a sum over its blocks of d * (q . x) (q4_0: minus 8 d * sum(x);
q4_1: plus m * sum(x)), the quants q read from the blocks' bytes as they lie (the nibbles split over
whole blocks, cast to float64 once) against x placed at the quants' byte offsets, zeros under the
scale bytes. For one row of x that takes half the time of widening every value (widen.py: four or
five NumPy passes a value); for several, the quants are scaled by d once and all rows go through one
product (benches/RESULTS.md, 2026-12-05).

Those two sum in different orders, so a row's float64 sum would depend on the rows count, which the
catalogue's batch invariance forbids. `rounded` makes it not: each product comes with a bound on its
float64 error, and the result is the float32 nearest the exact sum, y's own rounding wherever the
bound leaves no doubt, math.fsum of the exact terms for the rare rest (a float32 value times a float32
x is exact in float64).

The rearrangement is exact only where each value d * q + m is (ggml rounds q4_1's in float32: a block
whose m is far larger than d) and the scales are finite: `scales` checks a matrix, and kernels.py takes
the values' path for any matrix that fails it.
"""

from __future__ import annotations

import math

import numpy as np

from .quants import LAYOUTS, values
from .widen import scratch

FORMATS = ("q8_0", "q4_0", "q4_1")
_EXPONENT, _MAGNITUDE = 0x7C00, 0x7FFF  # float16 bits
# values a step of `times` takes (rows of w at a time): ns a value for one row of x on this 2-core VM,
# q4_1 3072 x 576 (q8_0 49152 x 576): 1 << 14: 1.39 (1.13), 1 << 16: 0.81 (0.75), 1 << 18: 0.71 (0.64);
# its scratch ~10 bytes a value
_BLOCK_VALUES = 1 << 18
# terms a product of several rows sums at a time before the partial sums are added: the error bound
# grows with the longest chain of roundings, and with it the outputs `rounded` must add exactly
_CHUNK = 96


def _head(w: np.ndarray, wdtype: str) -> np.ndarray:
    """Each block's scale bytes as one word (q4_1: d | m << 16), contiguous [n, blocks]."""
    word = "<u4" if wdtype == "q4_1" else "<u2"
    field = np.dtype({"names": ["head"], "formats": [word], "offsets": [0], "itemsize": LAYOUTS[wdtype].itemsize})
    return np.ascontiguousarray(np.ascontiguousarray(w).view(field)["head"])


def _spread_within(ed: np.ndarray, em: np.ndarray) -> np.ndarray:
    """Exponent fields (d's, m's, finite) whose sums are exact, for nonzero d and m (`scales`' bound)."""
    ed, em = np.maximum(ed, 1), np.maximum(em, 1)
    return np.maximum(em, ed + 4) - np.minimum(ed, em) <= 12


_FIELDS = np.arange(32 * 32)
# by d's exponent field | m's << 5: finite and within the bound, a zero field taken for a subnormal
_PAIR_EXACT = (_FIELDS & 31 != 31) & (_FIELDS >> 5 != 31) & _spread_within(_FIELDS & 31, _FIELDS >> 5)


def _exact(head: np.ndarray, wdtype: str) -> bool:
    """Whether the blocks' sums are the values' sums rearranged: finite scales, and for q4_1 every
    d * q + m (q < 16) exact in float32 (q8_0's and q4_0's d * q always are).

    From the float16 bits alone (their arithmetic in NumPy is slow): with e = max(exponent field, 1),
    a scale's ulp is 2^(e - 25) and its magnitude below 2^(e - 14), so |m| + 15 |d| < 2^(max(e_m, e_d + 4)
    - 13); every sum is a multiple of the smaller ulp, exact in float32 below 2^24 of it, which holds where
    max(e_m, e_d + 4) - min(e_d, e_m) <= 12, or where d or m is zero."""
    if wdtype != "q4_1":
        return bool(((head & _EXPONENT) != _EXPONENT).all())
    fits = _PAIR_EXACT[((head >> 10) & 31) | ((head >> 21) & (31 << 5))]
    if fits.all():
        return True
    # the blocks the table refused: exact only if finite with a zero d or m
    d, m = head[~fits] & 0xFFFF, head[~fits] >> 16
    finite = ((d & _EXPONENT) != _EXPONENT) & ((m & _EXPONENT) != _EXPONENT)
    return bool((finite & (((d & _MAGNITUDE) == 0) | ((m & _MAGNITUDE) == 0))).all())


def _half(bits: np.ndarray) -> np.ndarray:
    return bits.astype(np.uint16).view(np.float16).astype(np.float64)


def scales(w: np.ndarray, wdtype: str, by_block: bool = False) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(d, offset) as float64 [n, blocks] ([blocks, n] if by_block), each block's sum being d * (q . x) +
    offset * sum(x) (offset: q4_0 -8 d, q4_1 m, q8_0 None), or None where the sums over blocks are not
    the values' (`_exact`)."""
    head = _head(w, wdtype)
    if not _exact(head, wdtype):
        return None
    if by_block:
        head = np.ascontiguousarray(head.T)
    d = _half(head & 0xFFFF if wdtype == "q4_1" else head)
    if wdtype == "q8_0":
        return d, None
    if wdtype == "q4_0":
        return d, -8.0 * d
    return d, _half(head >> 16)


def _x_at_quants(x64: np.ndarray, wdtype: str) -> np.ndarray:
    """[rows, parts, blocks, block bytes]: each part's x values at its quants' byte offsets, zeros
    elsewhere (q8_0: one part, a value a byte; q4_x: the low nibbles' values, then the high ones')."""
    layout = LAYOUTS[wdtype]
    size, at = layout.itemsize, layout.fields["qs"][1]
    rows, k = x64.shape
    parts = 1 if wdtype == "q8_0" else 2
    out = np.zeros((rows, parts, k // 32, size))
    out[..., at:] = x64.reshape(rows, k // 32, parts, -1).transpose(0, 2, 1, 3)
    return out


def _quants(raw: np.ndarray, wdtype: str, out: np.ndarray) -> None:
    """The quants of raw blocks [rows, blocks, bytes] as float64, each part (q4_x: low, then high
    nibbles) into out[..., part, :, :] (the bytes in place, the scale bytes' garbage included)."""
    if wdtype == "q8_0":
        np.copyto(out[..., 0, :, :], raw.view(np.int8))
        return
    nibble = scratch("nibble", raw.size, np.uint8).reshape(raw.shape)
    np.copyto(out[..., 0, :, :], np.bitwise_and(raw, 0x0F, out=nibble))
    np.copyto(out[..., 1, :, :], np.right_shift(raw, 4, out=nibble))


def times(
    x64: np.ndarray, w: np.ndarray, wdtype: str, d: np.ndarray, offset: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(x64 @ values(w).T in float64, a bound on its error) for a matrix whose `scales` are (d, offset)
    (by block for one row of x), summed in an order that depends on the rows count (`rounded` makes
    the result independent of it). One row of x: a product per block of q . x (no pass scales the
    quants); several: the quants scaled by d once and, beside them, each block's offset, times x at the
    quants' offsets and its block sums in one product, in chunks of _CHUNK terms (ns a value, q4_1
    3072 x 576, 1 / 31 rows of x: 0.9 / 5.0, the values' path 1.3 / 4.6; benches/RESULTS.md)."""
    rows = x64.shape[0]
    n, size = w.shape[0], LAYOUTS[wdtype].itemsize
    nb = w.shape[1] // size
    parts = 1 if wdtype == "q8_0" else 2
    step = max(1, _BLOCK_VALUES // (32 * nb))
    xb = x64.reshape(rows, nb, 32)
    xsums = xb.sum(axis=2)  # [rows, blocks]
    xq = _x_at_quants(x64, wdtype)  # [rows, parts, blocks, bytes]
    y = np.empty((rows, n))
    if rows == 1:
        xq1 = xq[0][..., None].copy()  # [parts, blocks, bytes, 1]
        for s in range(0, n, step):
            e = min(n, s + step)
            q = scratch("q64", parts * (e - s) * nb * size, np.float64).reshape(parts, e - s, nb, size)
            _quants(w[s:e].reshape(e - s, nb, size), wdtype, q.transpose(1, 0, 2, 3))
            dots = np.matmul(q.transpose(0, 2, 1, 3), xq1)[..., 0]  # [parts, blocks, rows of w]: q . x
            sums = dots[0] + dots[1] if parts == 2 else dots[0]
            sums *= d[:, s:e]
            if offset is not None:
                sums += offset[:, s:e] * xsums[0][:, None]
            y[0, s:e] = sums.sum(axis=0)
    else:
        width = parts * nb * size
        xs = np.concatenate([xq.reshape(rows, width), xsums if offset is not None else xsums[:, :0]], axis=1)
        xs = np.ascontiguousarray(xs.T)  # [width (+ blocks), rows]
        for s in range(0, n, step):
            e = min(n, s + step)
            matrix = scratch("dq", (e - s) * xs.shape[0], np.float64).reshape(e - s, -1)
            dq = matrix[:, :width].reshape(e - s, parts, nb, size)
            _quants(w[s:e].reshape(e - s, nb, size), wdtype, dq)
            dq *= d[s:e, None, :, None]
            if offset is not None:
                matrix[:, width:] = offset[s:e]
            acc = xs[:_CHUNK].T @ matrix[:, :_CHUNK].T  # [rows of x, rows of w]
            for a in range(_CHUNK, xs.shape[0], _CHUNK):
                acc += xs[a : a + _CHUNK].T @ matrix[:, a : a + _CHUNK].T
            y[:, s:e] = acc
    # every term and partial sum is at most sum over blocks of (|d| max|q| + |offset|) * sum(|x|); a
    # term goes through at most a row's bytes and offsets, or a block's 32 x values and its sums, in roundings
    magnitude = np.abs(d) * (128.0 if wdtype == "q8_0" else 15.0)
    if offset is not None:
        magnitude += np.abs(offset)
    steps = (_CHUNK + -(-(parts * nb * size + nb) // _CHUNK) if rows > 1 else parts * size + nb) + 36
    return y, _gamma(steps) * (np.abs(xb).sum(axis=2) @ (magnitude if rows == 1 else magnitude.T))


_UNIT = 2.0**-53  # float64's unit roundoff


def _gamma(steps: int) -> float:
    """The relative error bound of `steps` float64 roundings (Higham's gamma_n)."""
    return steps * _UNIT / (1.0 - steps * _UNIT)


def rounded(
    y: np.ndarray, bound: np.ndarray, addends: list[np.ndarray], x64: np.ndarray, w: np.ndarray, wdtype: str
) -> np.ndarray:
    """float32 of the exact x64 @ values(w).T + sum(addends), of which y (float64, `times`' products
    plus the addends) is within bound plus the addends' roundings: y's own rounding wherever the whole
    interval rounds alike, the exact sum (math.fsum) elsewhere. So the bits never depend on how y was
    summed, nor on the other rows."""
    extra = sum((np.abs(a) for a in addends), np.zeros_like(y))
    slack = bound + _gamma(len(addends) + 2) * (np.abs(y) + extra + bound) + np.finfo(np.float64).tiny
    low, high = (y - slack).astype(np.float32), (y + slack).astype(np.float32)
    out = y.astype(np.float32)
    unsure = np.argwhere((low != high) & np.isfinite(y))
    for r, i in unsure:
        row = values(w[i : i + 1], wdtype)[0].astype(np.float64)
        out[r, i] = _exact_f32([*(row * x64[r]), *(float(a[r, i]) for a in addends)])
    return out


def _exact_f32(terms: list[float]) -> np.float32:
    """The float32 nearest the exact sum of float64 terms (ties to even). fsum gives the float64 nearest
    it; rounding that again errs only when it lies exactly halfway between two float32s, where the sign
    of what fsum left out decides."""
    total = math.fsum(terms)
    near = np.float32(total)
    if float(near) == total or not np.isfinite(near):
        return near
    other = np.nextafter(near, np.float32(np.inf if total > float(near) else -np.inf))
    if total != (float(near) + float(other)) / 2.0:
        return near
    rest = math.fsum([*terms, -total])
    if rest == 0.0:
        return near
    return max(near, other) if rest > 0.0 else min(near, other)
