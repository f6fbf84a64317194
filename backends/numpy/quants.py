"""What the GGUF block formats mean: each block's bytes as ggml's C struct, and its values.

The structs are ggml's (`ggml-common.h`), byte for byte, as NumPy structured dtypes; each
`dequantize_*` is ggml's `dequantize_row_*` written over whole arrays of blocks, in the same
float32 operations in the same order, so that the result equals `gguf.quants.dequantize`
bit for bit (tests/test_quants.py checks it). `quantize` makes blocks from float32 values,
for synthetic weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType, quants
from shaderbay.dtypes import BLOCK_DTYPES, host_shape, to_f32, value_shape
from shaderbay.errors import BindingError

F16 = "<f2"

# typedef struct { ggml_half d; int8_t qs[32]; } block_q8_0;
Q8_0 = np.dtype([("d", F16), ("qs", "i1", 32)])
# typedef struct { ggml_half d; uint8_t qs[16]; } block_q4_0;  (value i: low nibble of qs[i], i + 16: high)
Q4_0 = np.dtype([("d", F16), ("qs", "u1", 16)])
# typedef struct { ggml_half d; ggml_half m; uint8_t qs[16]; } block_q4_1;
Q4_1 = np.dtype([("d", F16), ("m", F16), ("qs", "u1", 16)])
# typedef struct { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qs[128]; } block_q4_K;
Q4_K = np.dtype([("d", F16), ("dmin", F16), ("scales", "u1", 12), ("qs", "u1", 128)])
# typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; } block_q6_K;
Q6_K = np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", F16)])

LAYOUTS = {"q8_0": Q8_0, "q4_0": Q4_0, "q4_1": Q4_1, "q4_k": Q4_K, "q6_k": Q6_K}
GGML_TYPES = {name: GGMLQuantizationType[name.upper()] for name in LAYOUTS}
assert all(LAYOUTS[n].itemsize == f.nbytes for n, f in BLOCK_DTYPES.items()), "struct sizes"


def _f32(half: np.ndarray) -> np.ndarray:
    return half.astype(np.float32)[..., None]


def dequantize_q8_0(b: np.ndarray) -> np.ndarray:
    # y[j] = x[i].qs[j] * d
    return b["qs"].astype(np.float32) * _f32(b["d"])


def dequantize_q4_0(b: np.ndarray) -> np.ndarray:
    # y[j] = ((qs[j] & 0x0F) - 8) * d;  y[j + 16] = ((qs[j] >> 4) - 8) * d
    q = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=-1).astype(np.int8) - 8
    return _f32(b["d"]) * q.astype(np.float32)


def dequantize_q4_1(b: np.ndarray) -> np.ndarray:
    # y[j] = (qs[j] & 0x0F) * d + m;  y[j + 16] = (qs[j] >> 4) * d + m
    q = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=-1).astype(np.float32)
    return _f32(b["d"]) * q + _f32(b["m"])


def q4_k_scale_min(scales: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's get_scale_min_k4: the 6-bit scale and minimum of sub-block j (0..7)."""
    if j < 4:
        return scales[..., j] & 63, scales[..., j + 4] & 63
    sc = (scales[..., j + 4] & 0x0F) | ((scales[..., j - 4] >> 6) << 4)
    m = (scales[..., j + 4] >> 4) | ((scales[..., j] >> 6) << 4)
    return sc, m


def dequantize_q4_k(b: np.ndarray) -> np.ndarray:
    # 4 chunks of 64 values from 32 bytes of qs: sub-block 2c the low nibbles, 2c + 1 the high;
    # y = (d * sc) * q - (dmin * m)
    d, dmin = _f32(b["d"]), _f32(b["dmin"])
    out = []
    for c in range(4):
        q = b["qs"][..., 32 * c : 32 * c + 32]
        for j, nibbles in ((2 * c, q & 0x0F), (2 * c + 1, q >> 4)):
            sc, m = q4_k_scale_min(b["scales"], j)
            out.append((d * _f32(sc)) * nibbles.astype(np.float32) - dmin * _f32(m))
    return np.concatenate(out, axis=-1)


def dequantize_q6_k(b: np.ndarray) -> np.ndarray:
    # 2 halves of 128 values, from 64 bytes of ql and 32 of qh each: value 32 * s + l of a half
    # (s = 0..3, l = 0..31) is ql[l + 32 (s & 1)] (low nibble for s < 2, high after) with bits
    # 2s, 2s+1 of qh[l] on top, minus 32; sub-block of 16 values k has scale scales[k];
    # y = (d * scale) * q
    d = _f32(b["d"])
    out = []
    for h in range(2):
        ql, qh = b["ql"][..., 64 * h : 64 * h + 64], b["qh"][..., 32 * h : 32 * h + 32]
        for s in range(4):
            low = ql[..., 32 * (s & 1) : 32 * (s & 1) + 32]
            low = low & 0x0F if s < 2 else low >> 4
            q = (low | (((qh >> (2 * s)) & 3) << 4)).astype(np.int8) - 32
            for half16 in range(2):
                k = 8 * h + 2 * s + half16
                scale = b["scales"][..., k].astype(np.float32)[..., None]
                out.append((d * scale) * q[..., 16 * half16 : 16 * half16 + 16].astype(np.float32))
    return np.concatenate(out, axis=-1)


DEQUANTIZE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "q8_0": dequantize_q8_0,
    "q4_0": dequantize_q4_0,
    "q4_1": dequantize_q4_1,
    "q4_k": dequantize_q4_k,
    "q6_k": dequantize_q6_k,
}


def dequantize(data: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values of uint8 rows of blocks: shape [..., bytes] -> [..., values]."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blocks = data.reshape(-1).view(LAYOUTS[dtype])
    return DEQUANTIZE[dtype](blocks).reshape(value_shape(dtype, data.shape))


def values(array: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values of a host array of any weight dtype: blocks dequantized, bf16 decoded."""
    return dequantize(array, dtype) if dtype in BLOCK_DTYPES else to_f32(array, dtype)


# --- making blocks (synthetic weights) -------------------------------------------------------


def _nearest(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half away from zero."""
    return np.trunc(x + np.copysign(np.float32(0.5), x))


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 [n, 256] -> Q4_K blocks: per sub-block of 32, scale (max - min) / 15 and minimum
    -min (never negative), both quantized to 6 bits against the block's d and dmin."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    lo = np.minimum(sub.min(axis=-1), 0)
    scale = (sub.max(axis=-1) - lo) / 15
    out = np.zeros(n, Q4_K)
    d = (scale.max(axis=-1) / 63).astype(np.float16)
    dmin = (-lo.min(axis=-1) / 63).astype(np.float16)
    out["d"], out["dmin"] = d, dmin
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.clip(_nearest(scale / d[:, None].astype(np.float32)), 0, 63), 0)
        m = np.where(dmin[:, None] > 0, np.clip(_nearest(-lo / dmin[:, None].astype(np.float32)), 0, 63), 0)
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    s = out["scales"]
    s[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    step = d[:, None].astype(np.float32) * sc.astype(np.float32)
    low = dmin[:, None].astype(np.float32) * m.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step[..., None] > 0, _nearest((sub + low[..., None]) / step[..., None]), 0)
    q = np.clip(q, 0, 15).astype(np.uint8).reshape(n, 4, 2, 32)
    out["qs"] = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    return out.view(np.uint8).reshape(n, Q4_K.itemsize)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 [n, 256] -> Q6_K blocks: per sub-block of 16, scale max|x| / 31 quantized to int8
    against the block's d, values rounded to -32..31."""
    n = x.shape[0]
    sub = x.reshape(n, 16, 16)
    scale = np.abs(sub).max(axis=-1) / 31
    out = np.zeros(n, Q6_K)
    d = (scale.max(axis=-1) / 127).astype(np.float16)
    out["d"] = d
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.clip(_nearest(scale / d[:, None].astype(np.float32)), -128, 127), 0)
    out["scales"] = sc.astype(np.int8)
    step = d[:, None].astype(np.float32) * sc.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step[..., None] != 0, _nearest(sub / step[..., None]), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # [half, s, l]
    low, high = q & 0x0F, q >> 4
    out["ql"] = (low[:, :, 0:2] | (low[:, :, 2:4] << 4)).reshape(n, 128)
    out["qh"] = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(n, 64)
    return out.view(np.uint8).reshape(n, Q6_K.itemsize)


_OWN_QUANTIZERS = {"q4_k": quantize_q4_k, "q6_k": quantize_q6_k}  # gguf 0.19 has no quantizer for these


def quantize(values: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 rows of blocks holding float32 values [..., cols] (cols a multiple of the block)."""
    if dtype not in LAYOUTS:
        raise BindingError(f"{dtype!r} is not a block format; use one of {', '.join(LAYOUTS)}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    shape = host_shape(dtype, values.shape)
    own = _OWN_QUANTIZERS.get(dtype)
    if own is None:
        return quants.quantize(values, GGML_TYPES[dtype]).reshape(shape)
    return own(values.reshape(-1, BLOCK_DTYPES[dtype].block)).reshape(shape)
