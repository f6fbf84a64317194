"""Dequantizing a ggml tensor to float32 with ``gguf.quants.dequantize``, in bounded chunks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from shaderbay.errors import ConversionError

from .errors import GGUFTensorTypeError

#: ggml tensor types ``convert_gguf`` dequantizes (the gguf package knows more, e.g. the IQ types,
#: but their dequantizers are slow and the project's targets are these).
SUPPORTED_TENSOR_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
_UNSUPPORTED_FIX = "re-quantize the model with llama.cpp's llama-quantize to Q8_0, Q4_1 or F16, or use another GGUF"

# Elements dequantized at once: bounds the float32 temporaries for big matrices.
_CHUNK_ELEMENTS = 1 << 22


def ggml_type(value: Any) -> GGMLQuantizationType:
    """A ``GGMLQuantizationType`` from itself, its number or its name (``"Q4_1"``)."""
    try:
        return GGMLQuantizationType[value] if isinstance(value, str) else GGMLQuantizationType(int(value))
    except (KeyError, ValueError):
        raise GGUFTensorTypeError(
            f"tensor type {value!r} is unknown; upgrade gguf (`pip install -U gguf`) "
            "or re-export the model as Q8_0 or F16"
        ) from None


def check_supported(qtype: GGMLQuantizationType, where: str = "") -> None:
    if qtype.name not in SUPPORTED_TENSOR_TYPES:
        raise GGUFTensorTypeError(
            f"{where}{qtype.name} is not supported (supported: {', '.join(SUPPORTED_TENSOR_TYPES)}); {_UNSUPPORTED_FIX}"
        )


def dequantize(raw: np.ndarray | bytes, qtype: Any, shape: Iterable[int]) -> np.ndarray:
    """The raw bytes of one ggml tensor as a float32 array of ``shape`` (row-major: GGUF's ``ne`` reversed).

    ``qtype`` is a ``gguf.GGMLQuantizationType``, its number or its name.
    """
    qtype = ggml_type(qtype)
    check_supported(qtype, "tensor type ")
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    block, type_size = GGML_QUANT_SIZES[qtype]
    if n % block:
        raise ConversionError(
            f"{n} elements is not a whole number of {qtype.name} blocks of {block}; the file is corrupt"
        )
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes | bytearray | memoryview) else raw
    buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    if buf.size != n // block * type_size:
        raise ConversionError(
            f"{qtype.name} tensor of shape {shape} needs {n // block * type_size} bytes but {buf.size} are stored; "
            "the file is truncated or corrupt: download it again"
        )
    # Whole rows go to gguf.quants, which works through 16 rows at a time (16 blocks at a time if
    # handed blocks as rows: 15x slower on the default model).
    row = shape[-1] if shape and shape[-1] % block == 0 else n
    rows = buf.reshape(n // row, row // block * type_size)
    out = np.empty((n // row, row), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // row)
    for r0 in range(0, rows.shape[0], step):
        out[r0 : r0 + step] = gguf_dequantize(rows[r0 : r0 + step], qtype)
    return out.reshape(shape)
