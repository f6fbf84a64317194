"""Weights for the matmul and embed cases in any weight dtype, GGUF block formats included.

A block-format matrix is drawn as values and quantized by the reference, each block at a scale
of its own: the zero block, small and large scales side by side in one row, so a kernel that
mixes up blocks, or a scale or minimum, is off by far more than any budget. Rows are whole
blocks (the catalogue's constraint): a drawn row length is rounded up to the next block, so
short rows are one block and longer ones a few.
"""

from __future__ import annotations

import numpy as np
from shaderbay.backends.numpy.quants import quantize
from shaderbay.dtypes import BLOCK_DTYPES, block_size

from .values import Values

# per-block factors: the zero block, then scales 2^16 apart (every f16 scale and minimum of
# the five formats stays a normal, finite number for values of magnitude up to 1)
BLOCK_SCALES = np.array([0.0, 2.0**-4, 1.0, 2.0**12], np.float32)


def row_length(k: int, dtype: str) -> int:
    """A drawn row length as the dtype can store it: whole blocks."""
    block = block_size(dtype)
    return -(-k // block) * block


def weights(v: Values, rows: int, k: int, lo: float, hi: float, dtype: str) -> np.ndarray:
    """rows x k weights stored as dtype, flat (k already whole blocks: see row_length). Plain dtypes
    take values in [lo, hi]; block formats values in [-1, 1] times their block's scale."""
    if dtype not in BLOCK_DTYPES:
        return v.floats(rows * k, lo, hi, dtype)
    block = block_size(dtype)
    x = v.floats(rows * k, -1.0, 1.0).reshape(-1, block)
    x *= BLOCK_SCALES[v.uints(len(x), 0, len(BLOCK_SCALES) - 1)][:, None]
    return quantize(x.reshape(rows, k), dtype).reshape(-1)
