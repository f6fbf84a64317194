"""Which dtype each GGUF tensor is uploaded in: its own where the backend's matrix kernels take it
(the GGUF block formats are shaderbay dtypes, byte for byte), else the nearest one they take,
converted once at load."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize
from shaderbay.backend import Backend
from shaderbay.dtypes import BLOCK_DTYPES, from_f32
from shaderbay.errors import BindingError, UnsupportedKernel

#: ggml type -> the shaderbay dtype whose host array is the tensor's stored bytes
STORED: dict[GGMLQuantizationType, str] = {
    GGMLQuantizationType.F32: "f32",
    GGMLQuantizationType.F16: "f16",
    GGMLQuantizationType.BF16: "bf16",
    **{GGMLQuantizationType[d.upper()]: d for d in BLOCK_DTYPES},
}
# A tensor the backend cannot run goes to the first of these it can: the finest block format (its
# rounding, at most 1/254 of a block's largest value, is far below a 2-6 bit format's own step),
# else float16, else float32 (which every backend runs).
_NEAREST = ("q8_0", "f16", "f32")
_MATRIX_KERNELS = ("matmul", "embed")  # every weight matrix is read by one of these, the table by both


def runnable_dtypes(backend: Backend) -> frozenset[str]:
    """The weight dtypes this backend's matrix kernels take: the catalogue lists a dtype among the
    kernels' weight dtypes and the backend makes their pipelines for it."""
    runnable = set()
    for dtype in STORED.values():
        try:
            for name in _MATRIX_KERNELS:
                backend.pipeline(name, wdtype=dtype)
        except (BindingError, UnsupportedKernel):
            continue
        runnable.add(dtype)
    return frozenset(runnable)


def upload_dtype(qtype: GGMLQuantizationType, runnable: frozenset[str]) -> str:
    """The dtype a tensor of ggml type ``qtype`` is uploaded in, given the runnable dtypes."""
    stored = STORED.get(qtype)
    return stored if stored in runnable else next(d for d in _NEAREST if d in runnable or d == "f32")


def common_dtype(dtypes: set[str], runnable: frozenset[str]) -> str:
    """One dtype for matrices of these dtypes uploaded as one: q8_0 for block formats alone, f16 for
    those and f16, else f32 (the first of these the backend runs)."""
    floats = dtypes - set(BLOCK_DTYPES)
    nearest = _NEAREST if not floats else _NEAREST[1:] if floats == {"f16"} else _NEAREST[2:]
    return next(d for d in nearest if d in runnable or d == "f32")


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values [rows, cols] as the host array of ``dtype`` (rows of blocks for q8_0)."""
    if dtype in BLOCK_DTYPES:
        return quantize(values, GGMLQuantizationType[dtype.upper()])
    return from_f32(values, dtype)
