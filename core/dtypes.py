"""Element types a buffer binding can hold, and their host (NumPy) representation.

bfloat16 has no NumPy dtype: it travels as its raw 16-bit pattern in a uint16 array.

The block dtypes are GGUF's quantization formats: a row of values is stored as blocks of
`block` values in `nbytes` bytes each, the bytes exactly as in a GGUF file (their meaning:
`shaderbay.backends.numpy.quants`). A tensor of a block dtype has the shape of its values
([rows, cols], cols a multiple of the block); on the host it is a uint8 array of the same
rows, `cols // block * nbytes` bytes wide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class BlockFormat:
    block: int  # values per block
    nbytes: int  # bytes per block


BLOCK_DTYPES: dict[str, BlockFormat] = {
    "q8_0": BlockFormat(32, 34),  # f16 scale, 32 int8
    "q4_0": BlockFormat(32, 18),  # f16 scale, 32 4-bit values
    "q4_1": BlockFormat(32, 20),  # f16 scale and minimum, 32 4-bit values
    "q4_k": BlockFormat(256, 144),  # f16 scale and minimum, 8 x (6-bit scale, 6-bit minimum), 256 4-bit values
    "q6_k": BlockFormat(256, 210),  # 256 6-bit values, 16 int8 scales, f16 scale
}
HOST_DTYPES.update(dict.fromkeys(BLOCK_DTYPES, np.dtype(np.uint8)))

WEIGHT_DTYPES = ("f32", "f16", "bf16", *BLOCK_DTYPES)


def itemsize(dtype: str) -> int:
    """Bytes per value of a plain dtype (block dtypes have none: see nbytes and bytes_per_value)."""
    if dtype in BLOCK_DTYPES:
        raise BindingError(f"{dtype} stores values in blocks, not one by one; use nbytes(dtype, shape)")
    return host_dtype(dtype).itemsize


def block_size(dtype: str) -> int:
    """Values per block: 1 for a plain dtype."""
    fmt = BLOCK_DTYPES.get(dtype)
    return fmt.block if fmt else 1


def bytes_per_value(dtype: str) -> float:
    fmt = BLOCK_DTYPES.get(dtype)
    return fmt.nbytes / fmt.block if fmt else host_dtype(dtype).itemsize


def host_shape(dtype: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the host array holding a tensor of this shape (block rows as bytes)."""
    fmt = BLOCK_DTYPES.get(dtype)
    if fmt is None:
        return tuple(shape)
    if not shape or shape[-1] % fmt.block:
        raise BindingError(f"a {dtype} tensor's rows hold whole blocks of {fmt.block} values; got shape {list(shape)}")
    return (*shape[:-1], shape[-1] // fmt.block * fmt.nbytes)


def value_shape(dtype: str, host: tuple[int, ...]) -> tuple[int, ...]:
    """The tensor shape of a host array (the inverse of host_shape)."""
    fmt = BLOCK_DTYPES.get(dtype)
    if fmt is None:
        return tuple(host)
    if not host or host[-1] % fmt.nbytes:
        raise BindingError(f"{dtype} rows are whole blocks of {fmt.nbytes} bytes; got a uint8 array of {list(host)}")
    return (*host[:-1], host[-1] // fmt.nbytes * fmt.block)


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(host_shape(dtype, shape)) * host_dtype(dtype).itemsize


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
    if dtype in BLOCK_DTYPES:
        raise BindingError(f"{dtype} blocks decode with shaderbay.backends.numpy.quants.dequantize")
    if dtype == "bf16":
        return bf16_to_f32(array)
    return np.asarray(array).astype(np.float32)
