"""Element types a buffer binding can hold, and their host (NumPy) representation.

bfloat16 has no NumPy dtype: it travels as its raw 16-bit pattern in a uint16 array.
"""

from __future__ import annotations

import numpy as np

from .errors import BindingError

# name -> NumPy dtype of the host array that holds the bytes
HOST_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(np.uint16),
    "u32": np.dtype(np.uint32),
    "i32": np.dtype(np.int32),
    "u8": np.dtype(np.uint8),
}

WEIGHT_DTYPES = ("f32", "f16", "bf16")


def itemsize(dtype: str) -> int:
    return host_dtype(dtype).itemsize


def host_dtype(dtype: str) -> np.dtype:
    try:
        return HOST_DTYPES[dtype]
    except KeyError:
        raise BindingError(f"unknown dtype {dtype!r}; use one of {', '.join(HOST_DTYPES)}") from None


def dtype_of(array: np.ndarray) -> str:
    """The shaderbay dtype name of a host array (uint16 arrays are taken as bf16 bit patterns)."""
    for name, dt in HOST_DTYPES.items():
        if array.dtype == dt:
            return name
    raise BindingError(
        f"arrays of {array.dtype} cannot go to a device; convert to float32, float16, "
        "uint16 (bfloat16 bits), uint32 or int32"
    )


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bit patterns, to nearest even; a NaN keeps its sign and top payload
    bits, made quiet (rounding could otherwise carry a NaN's payload into infinity)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(u.view(np.float32))
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def from_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values in the host form of ``dtype`` (bf16 as bit patterns; f16 overflows to infinity)."""
    if dtype == "bf16":
        return f32_to_bf16(x)
    with np.errstate(over="ignore"):
        return np.asarray(x).astype(host_dtype(dtype))


def to_f32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Host values of a stored array as float32 (decoding bf16 bit patterns)."""
    if dtype == "bf16":
        return bf16_to_f32(array)
    return np.asarray(array).astype(np.float32)
