"""Convert a Llama-family GGUF file (llama.cpp's format) into a Hugging Face-style model directory.

``convert_gguf(path, out_dir)`` writes::

    config.json              LlamaForCausalLM hyper-parameters (Qwen2ForCausalLM for qwen2)
    model.safetensors        weights under Hugging Face names, float16 / float32 / bfloat16
    tokenizer.json           the tokenizer rebuilt from the GGUF metadata (``tokenizers`` format)
    tokenizer_config.json    special tokens, ``chat_template``, ``add_bos_token``...
    generation_config.json   bos / eos (/ pad) ids

Weights are dequantized with vectorised NumPy (F32, F16, BF16, Q8_0, Q4_0, Q4_1 natively; Q5_0,
Q5_1 and the K-quants through ``gguf.quants``), and llama.cpp's rotary row permutation of the Q
and K projections is undone, so the directory loads like the original checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from shaderbay.errors import (
    CheckpointError,
    ConversionError,
    MissingTensor,
    TokenizerError,
    UnsupportedArchitecture,
    UnsupportedDtype,
)

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_TENSOR_TYPES",
    "OUTPUT_DTYPES",
    "GGUFFileError",
    "GGUFArchitectureError",
    "GGUFTensorTypeError",
    "GGUFTokenizerError",
    "GGUFFile",
    "SUPPORTED_PRE_TOKENIZERS",
    "convert_gguf",
    "convert_gguf_tokenizer",
    "read_gguf_metadata",
    "dequantize",
    "unpermute_rotary",
    "permute_rotary",
    "normalize_dtype",
]

ProgressFn = Callable[[float, float, str], None]

GGUF_MAGIC = b"GGUF"

#: GGUF ``general.architecture`` values this converter understands.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")

#: Output dtypes: canonical name -> (safetensors dtype tag, bytes per element).
OUTPUT_DTYPES = {"float16": ("F16", 2), "float32": ("F32", 4), "bfloat16": ("BF16", 2)}
_DTYPE_ALIASES = {
    "float16": "float16",
    "f16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "f32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


# --- errors -------------------------------------------------------------------------------------
# Each is also the generic typed error a caller may already catch (CheckpointError,
# UnsupportedArchitecture, UnsupportedDtype), and all are ConversionErrors.


class GGUFFileError(ConversionError, CheckpointError):
    """The file is missing, not a GGUF file, or truncated/corrupt."""


class GGUFArchitectureError(ConversionError, UnsupportedArchitecture):
    """The GGUF holds a model architecture the converter does not handle."""


class GGUFTensorTypeError(ConversionError, UnsupportedDtype):
    """A tensor is stored in a ggml type the converter cannot dequantize."""


class GGUFTokenizerError(ConversionError, TokenizerError):
    """The tokenizer stored in the GGUF cannot be rebuilt faithfully."""


def normalize_dtype(dtype: str) -> str:
    """Canonical output dtype name (``float16``, ``float32`` or ``bfloat16``) for ``dtype`` or an alias."""
    key = str(getattr(dtype, "name", dtype)).lower().removeprefix("torch.").removeprefix("numpy.")
    if key not in _DTYPE_ALIASES:
        raise UnsupportedDtype(
            f"cannot write weights as {dtype!r}: choose one of float16, float32, bfloat16 "
            "(e.g. `shaderbay convert MODEL.gguf OUT_DIR --dtype float16`)"
        )
    return _DTYPE_ALIASES[key]


# --- reading --------------------------------------------------------------------------------------


_VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_VALUE_DTYPES = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_T_STRING, _T_ARRAY = 8, 9


class _Truncated(Exception):
    pass


class _Tensor:
    """One tensor's directory entry: name, ggml type, GGUF dims (``ne``, innermost first), data offset."""

    __slots__ = ("name", "type_id", "ne", "offset", "_file")

    def __init__(self, name: str, type_id: int, ne: tuple[int, ...], offset: int, file: GGUFFile):
        self.name, self.type_id, self.ne, self.offset, self._file = name, type_id, ne, offset, file

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy (row-major) shape: ``ne`` reversed."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64)) if self.ne else 1

    @property
    def type_name(self) -> str:
        import gguf

        try:
            return gguf.GGMLQuantizationType(self.type_id).name
        except ValueError:
            return f"ggml type {self.type_id}"

    @property
    def n_bytes(self) -> int:
        import gguf

        try:
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(self.type_id)]
        except (ValueError, KeyError):
            return -1
        return self.n_elements // block * size

    def raw(self) -> np.ndarray:
        """The tensor's stored bytes (a read-only view of the memory-mapped file)."""
        return self._file.raw(self)


class GGUFFile:
    """A parsed GGUF file: ``metadata`` (key -> value) and ``tensors`` (name -> entry), data memory-mapped.

    A small self-contained parser (GGUF v2/v3, little-endian): it reads the 100k-entry vocabulary
    arrays much faster than ``gguf.GGUFReader``, and reports truncated or foreign files clearly.
    """

    def __init__(self, path: str | os.PathLike[str]):
        p = Path(path)
        self.path = p
        if not p.exists():
            raise GGUFFileError(f"GGUF file not found: {str(p)!r}; check the path (and that the download finished)")
        if not p.is_file():
            raise GGUFFileError(f"{str(p)!r} is not a file; pass the path of a .gguf model file")
        with open(p, "rb") as f:
            head = f.read(8)
        if head[:4] != GGUF_MAGIC:
            raise GGUFFileError(
                f"{str(p)!r} is not a GGUF file (it starts with {head[:4]!r}, not b'GGUF'); "
                "pass a llama.cpp .gguf model file, or load a Hugging Face directory directly"
            )
        version = int.from_bytes(head[4:8], "little") if len(head) == 8 else 0
        if version not in (2, 3):
            hint = "a big-endian GGUF" if version > 0xFFFF else f"GGUF version {version}"
            raise GGUFFileError(
                f"{str(p)!r} is {hint}, which is not supported (little-endian v2/v3 only); "
                "re-export the model with a recent llama.cpp convert_hf_to_gguf.py"
            )
        self.version = version
        self._mm = np.memmap(p, dtype=np.uint8, mode="r")
        try:
            self._parse()
        except _Truncated:
            raise GGUFFileError(
                f"{str(p)!r} ends inside its header: the file is truncated; download it again"
            ) from None
        except (UnicodeDecodeError, struct.error, ValueError) as e:
            raise GGUFFileError(f"{str(p)!r} has a corrupt GGUF header ({e}); download it again") from e

    # -- header parsing ------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._mm
        size = buf.shape[0]
        pos = 8

        def take(n: int) -> memoryview:
            nonlocal pos
            if pos + n > size:
                raise _Truncated
            out = memoryview(buf[pos : pos + n])
            pos += n
            return out

        def u32() -> int:
            return int.from_bytes(take(4), "little")

        def u64() -> int:
            return int.from_bytes(take(8), "little")

        def string() -> str:
            n = u64()
            if n > size:
                raise _Truncated
            return bytes(take(n)).decode("utf-8")

        def value(t: int) -> Any:
            if t == _T_STRING:
                return string()
            if t == _T_ARRAY:
                it, n = u32(), u64()
                if it == _T_STRING:
                    return [string() for _ in range(n)]
                if it in _VALUE_DTYPES:
                    dt = np.dtype(_VALUE_DTYPES[it])
                    arr = np.frombuffer(take(n * dt.itemsize), dtype=dt)
                    return [bool(v) for v in arr] if it == 7 else arr.tolist()
                return [value(it) for _ in range(n)]
            if t in _VALUE_FORMATS:
                fmt = _VALUE_FORMATS[t]
                return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]
            raise ValueError(f"unknown metadata value type {t}")

        n_tensors, n_kv = u64(), u64()
        if n_tensors > size or n_kv > size:
            raise ValueError("implausible tensor or key count")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(u32())
        infos = []
        for _ in range(n_tensors):
            name = string()
            n_dims = u32()
            if n_dims > 8:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            ne = tuple(u64() for _ in range(n_dims))
            type_id = u32()
            offset = u64()
            infos.append((name, type_id, ne, offset))
        align = int(meta.get("general.alignment", 32)) or 32
        self.data_start = pos + (-pos % align)
        self.metadata = meta
        self.tensors: dict[str, _Tensor] = {}
        for name, type_id, ne, offset in infos:
            if name in self.tensors:
                raise ValueError(f"tensor {name!r} appears twice")
            self.tensors[name] = _Tensor(name, type_id, ne, offset, self)

    def raw(self, t: _Tensor) -> np.ndarray:
        n = t.n_bytes
        start = self.data_start + t.offset
        if n < 0:
            raise GGUFTensorTypeError(
                f"{self.path.name}: tensor {t.name!r} uses {t.type_name}, unknown to the installed gguf "
                "package; upgrade it (`pip install -U gguf`) or re-export the model as Q8_0 or F16"
            )
        if start + n > self._mm.shape[0]:
            raise GGUFFileError(
                f"{self.path.name}: tensor {t.name!r} reaches past the end of the file: "
                "the file is truncated; download it again"
            )
        return self._mm[start : start + n]

    # -- metadata access ---------------------------------------------------------------------------

    def __contains__(self, key: str) -> bool:
        return key in self.metadata

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise ConversionError(
                f"{self.path.name}: metadata key {key!r} is missing; the GGUF was not written by a "
                "llama.cpp converter this tool understands; re-export it with a recent convert_hf_to_gguf.py"
            )
        return self.metadata[key]


def read_gguf_metadata(gguf_path: str | os.PathLike[str]) -> dict[str, Any]:
    """All metadata key/values of a GGUF file (long arrays such as the vocabulary included)."""
    return dict(GGUFFile(gguf_path).metadata)


# --- dequantization -------------------------------------------------------------------------------


def _f16(raw: np.ndarray) -> np.ndarray:
    """View little-endian bytes (..., 2) as float16 (..., 1) promoted to float32."""
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32)


def _deq_f32(raw: np.ndarray, n: int) -> np.ndarray:
    return raw.view("<f4").astype(np.float32, copy=True)


def _deq_f16(raw: np.ndarray, n: int) -> np.ndarray:
    return raw.view("<f2").astype(np.float32)


def _deq_bf16(raw: np.ndarray, n: int) -> np.ndarray:
    return (raw.view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)


def _deq_q8_0(raw: np.ndarray, n: int) -> np.ndarray:
    # block: f16 scale d, 32 x int8 q;  x = d * q
    blocks = raw.reshape(-1, 34)
    d = _f16(blocks[:, :2])
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (q * d).reshape(-1)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    # 16 bytes per block -> 32 values: low nibbles are elements 0..15, high nibbles 16..31
    lo = qs & np.uint8(0x0F)
    hi = qs >> np.uint8(4)
    return np.concatenate([lo, hi], axis=1)


def _deq_q4_0(raw: np.ndarray, n: int) -> np.ndarray:
    # block: f16 scale d, 16 bytes of 4-bit q;  x = d * (q - 8)
    blocks = raw.reshape(-1, 18)
    d = _f16(blocks[:, :2])
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
    return (q.astype(np.float32) * d).reshape(-1)


def _deq_q4_1(raw: np.ndarray, n: int) -> np.ndarray:
    # block: f16 scale d, f16 minimum m, 16 bytes of 4-bit q;  x = d * q + m
    blocks = raw.reshape(-1, 20)
    d = _f16(blocks[:, :2])
    m = _f16(blocks[:, 2:4])
    q = _nibbles(blocks[:, 4:]).astype(np.float32)
    return (d * q + m).reshape(-1)


_NATIVE = {
    "F32": _deq_f32,
    "F16": _deq_f16,
    "BF16": _deq_bf16,
    "Q8_0": _deq_q8_0,
    "Q4_0": _deq_q4_0,
    "Q4_1": _deq_q4_1,
}
# Types delegated to gguf-py's own (vectorised) dequantizers.
_VIA_GGUF = ("Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

#: ggml tensor types ``convert_gguf`` can dequantize.
SUPPORTED_TENSOR_TYPES = tuple(_NATIVE) + _VIA_GGUF

# Rows dequantized at once: bounds the float32 temporaries for big matrices.
_CHUNK_ELEMENTS = 1 << 22


def dequantize(raw: np.ndarray | bytes, ggml_type: Any, shape: Iterable[int]) -> np.ndarray:
    """Dequantize the raw bytes of one ggml tensor to a float32 array of numpy ``shape``.

    ``ggml_type`` is a ``gguf.GGMLQuantizationType`` or its name (``"Q4_1"``); ``shape`` is the
    NumPy shape (row-major: GGUF's ``ne`` reversed).
    """
    import gguf

    try:
        if isinstance(ggml_type, str):
            qtype = gguf.GGMLQuantizationType[ggml_type]
        else:
            qtype = gguf.GGMLQuantizationType(int(ggml_type))
    except (KeyError, ValueError):
        raise GGUFTensorTypeError(
            f"tensor type {ggml_type!r} is unknown; upgrade gguf (`pip install -U gguf`) or re-export "
            "the model as Q8_0 or F16"
        ) from None
    name = qtype.name
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if name not in SUPPORTED_TENSOR_TYPES:
        raise GGUFTensorTypeError(
            f"tensor type {name} is not supported (supported: {', '.join(SUPPORTED_TENSOR_TYPES)}); "
            "re-quantize the model with llama.cpp's llama-quantize to Q8_0, Q4_1 or F16, or use another GGUF"
        )
    if n % block:
        raise ConversionError(f"{n} elements is not a whole number of {name} blocks of {block}; the file is corrupt")
    nbytes = n // block * type_size
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes | bytearray | memoryview) else raw
    buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    if buf.size != nbytes:
        raise ConversionError(
            f"{name} tensor of shape {shape} needs {nbytes} bytes but {buf.size} are stored; "
            "the file is truncated or corrupt: download it again"
        )
    out = np.empty(n, dtype=np.float32)
    chunk_blocks = max(1, _CHUNK_ELEMENTS // block)
    n_blocks = n // block
    for b0 in range(0, n_blocks, chunk_blocks):
        b1 = min(n_blocks, b0 + chunk_blocks)
        part = buf[b0 * type_size : b1 * type_size]
        if name in _NATIVE:
            vals = _NATIVE[name](part, (b1 - b0) * block)
        else:
            vals = gguf.quants.dequantize(part.reshape(b1 - b0, type_size), qtype).reshape(-1)
        out[b0 * block : b1 * block] = vals
    return out.reshape(shape)


# --- rotary permutation ---------------------------------------------------------------------------


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of Q/K projection rows (HF rotate-half -> interleaved-pair layout)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ConversionError(f"cannot permute {rows} rows into {n_head} heads of even size")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_rotary`: GGUF Q/K rows back to Hugging Face's layout."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ConversionError(f"cannot un-permute {rows} rows into {n_head} heads of even size")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- names and hyper-parameters --------------------------------------------------------------------

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_SKIPPED = {"rope_freqs.weight"}  # folded into config.rope_scaling
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
_ATTN_BIAS = re.compile(r"^blk\.\d+\.attn_(q|k|v|output)\.bias$")


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLK.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{int(m.group(1))}.{_LAYER_NAMES[m.group(2)]}"
    return None


def _sort_key(hf: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", hf)]


def _llama3_rope_scaling(freqs: np.ndarray, theta: float, head_dim: int) -> dict[str, Any]:
    """Recognise Llama 3.x rope frequency factors (GGUF ``rope_freqs``) as HF ``rope_scaling``."""
    freqs = np.asarray(freqs, dtype=np.float64).reshape(-1)
    factor = float(freqs.max())
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    for original in (8192, 4096, 16384, 32768):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (1.0, 8.0)):
            low_wl, high_wl = original / low, original / high
            smooth = (original / wavelen - low) / (high - low)
            expect = np.where(
                wavelen < high_wl,
                1.0,
                np.where(wavelen > low_wl, factor, 1.0 / ((1 - smooth) / factor + smooth)),
            )
            if freqs.shape == expect.shape and np.allclose(freqs, expect, rtol=1e-3, atol=1e-4):
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": original,
                }
    raise ConversionError(
        "the GGUF carries rope frequency factors (rope_freqs) that match no known Llama 3 rope scaling; "
        "convert the original Hugging Face checkpoint instead"
    )


def _build_config(meta: GGUFFile, tensors: dict[str, _Tensor], dtype: str, special: dict[str, Any]) -> dict[str, Any]:
    arch = meta.require("general.architecture")
    a = arch
    n_layer = int(meta.require(f"{a}.block_count"))
    hidden = int(meta.require(f"{a}.embedding_length"))
    n_head = int(meta.require(f"{a}.attention.head_count"))
    n_kv = meta.get(f"{a}.attention.head_count_kv", n_head)
    if isinstance(n_kv, list):
        raise GGUFArchitectureError(
            f"{meta.path.name}: per-layer KV head counts are not supported by Llama-family models here"
        )
    n_kv = int(n_kv)
    head_dim = int(meta.get(f"{a}.attention.key_length", hidden // n_head))
    v_dim = int(meta.get(f"{a}.attention.value_length", head_dim))
    if v_dim != head_dim:
        raise GGUFArchitectureError(
            f"{meta.path.name}: key length {head_dim} != value length {v_dim}; not a Llama layout"
        )
    rope_dim = int(meta.get(f"{a}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise GGUFArchitectureError(
            f"{meta.path.name}: partial rotary embeddings ({rope_dim} of {head_dim} dims) are not a Llama layout"
        )
    ffn = meta.require(f"{a}.feed_forward_length")
    if isinstance(ffn, list):
        raise GGUFArchitectureError(f"{meta.path.name}: per-layer feed-forward sizes are not supported")
    theta = float(meta.get(f"{a}.rope.freq_base", 10000.0))
    embd = tensors["token_embd.weight"]
    vocab = int(embd.shape[0])
    ctx = int(meta.get(f"{a}.context_length", 2048))

    rope_scaling = None
    s_type = meta.get(f"{a}.rope.scaling.type")
    s_factor = meta.get(f"{a}.rope.scaling.factor")
    if s_type in ("linear", "yarn") and s_factor and float(s_factor) != 1.0:
        rope_scaling = {"rope_type": s_type, "factor": float(s_factor)}
        orig = meta.get(f"{a}.rope.scaling.original_context_length")
        if orig:
            rope_scaling["original_max_position_embeddings"] = int(orig)
    elif s_type not in (None, "none", "linear", "yarn"):
        raise GGUFArchitectureError(f"{meta.path.name}: rope scaling type {s_type!r} is not supported")
    if "rope_freqs.weight" in tensors:
        t = tensors["rope_freqs.weight"]
        freqs = dequantize(t.raw(), t.type_id, t.shape)
        rope_scaling = _llama3_rope_scaling(freqs, theta, head_dim)

    config: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": "qwen2" if arch == "qwen2" else "llama",
        "hidden_size": hidden,
        "intermediate_size": int(ffn),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(meta.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": ctx,
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": any(_ATTN_BIAS.match(name) for name in tensors),
        "mlp_bias": False,
        "bos_token_id": special.get("bos_token_id"),
        "eos_token_id": special.get("eos_token_id"),
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if special.get("pad_token_id") is not None:
        config["pad_token_id"] = special["pad_token_id"]
    if arch == "qwen2":
        config["use_sliding_window"] = False
    if arch == "llama" or arch == "mistral":
        config["pretraining_tp"] = 1
    config["gguf"] = {
        "file": meta.path.name,
        "name": meta.get("general.name"),
        "architecture": arch,
        "file_type": meta.get("general.file_type"),
    }
    return config


# --- tokenizer -------------------------------------------------------------------------------------

# token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
_TT_UNKNOWN, _TT_CONTROL, _TT_USER, _TT_UNUSED, _TT_BYTE = 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> how the original tokenizer.json splits text before BPE
_PRE_STARCODER = ("smollm", "starcoder", "refact", "codeshell")
_PRE_GPT2 = ("gpt-2", "gpt2", "phi-2", "jina-es", "jina-de")
_PRE_LLAMA3 = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe")
_PRE_QWEN2 = ("qwen2", "deepseek-r1-qwen")
SUPPORTED_PRE_TOKENIZERS = _PRE_STARCODER + _PRE_GPT2 + _PRE_LLAMA3 + _PRE_QWEN2


def _split_merge(merge: str, vocab: dict[str, int]) -> tuple[str, str]:
    left, sep, right = merge.partition(" ")
    if sep and left in vocab and right in vocab:
        return left, right
    for i in range(1, len(merge) - 1):  # a token may contain a space: find the split that works
        if merge[i] == " " and merge[:i] in vocab and merge[i + 1 :] in vocab:
            return merge[:i], merge[i + 1 :]
    raise GGUFTokenizerError(f"merge {merge!r} names tokens missing from the vocabulary; the GGUF is corrupt")


def _special_ids(meta: GGUFFile, n_vocab: int) -> dict[str, Any]:
    def tid(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is None:
            return None
        v = int(v)
        return v if 0 <= v < n_vocab else None

    bos, eos, unk, pad = tid("bos_token_id"), tid("eos_token_id"), tid("unknown_token_id"), tid("padding_token_id")
    eos_all: list[int] = []
    for v in (eos, tid("eot_token_id"), tid("eom_token_id")):
        if v is not None and v not in eos_all:
            eos_all.append(v)
    return {
        "bos_token_id": bos,
        "eos_token_id": eos_all[0] if len(eos_all) == 1 else (eos_all or None),
        "eos_ids": eos_all,
        "unk_token_id": unk,
        "pad_token_id": pad,
    }


def _build_tokenizer(meta: GGUFFile):
    """(tokenizers.Tokenizer, added-token records, special ids) rebuilt from GGUF metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise GGUFTokenizerError(
            f"{meta.path.name} has no tokenizer (tokenizer.ggml.model is missing); "
            "use a GGUF exported with its tokenizer, or a Hugging Face directory with tokenizer.json"
        )
    if model != "gpt2":
        raise GGUFTokenizerError(
            f"{meta.path.name}: tokenizer model {model!r} is not supported (only 'gpt2' byte-level BPE is); "
            "convert the original Hugging Face checkpoint with its tokenizer.json instead"
        )
    tokens: list[str] = meta.require("tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges_raw: list[str] = meta.get("tokenizer.ggml.merges") or []
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    merges = [_split_merge(m, vocab) for m in merges_raw]

    normalizer = None
    ignore_merges = False
    if pre in _PRE_STARCODER:
        pre_tok = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    elif pre in _PRE_GPT2:
        pre_tok = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    elif pre in _PRE_LLAMA3 or pre in _PRE_QWEN2:
        pattern = _LLAMA3_SPLIT if pre in _PRE_LLAMA3 else _QWEN2_SPLIT
        pre_tok = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        )
        ignore_merges = pre in _PRE_LLAMA3
        if pre in _PRE_QWEN2:
            normalizer = normalizers.NFC()
    else:
        raise GGUFTokenizerError(
            f"{meta.path.name}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not known, so token ids "
            f"could differ from the original's; known: {', '.join(SUPPORTED_PRE_TOKENIZERS)}. "
            "Convert the original Hugging Face checkpoint with its tokenizer.json instead"
        )

    bpe_kwargs: dict[str, Any] = dict(
        vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False
    )
    try:
        bpe = models.BPE(**bpe_kwargs, ignore_merges=ignore_merges)
    except TypeError:  # tokenizers < 0.19 has no ignore_merges
        bpe = models.BPE(**bpe_kwargs)
    tk = Tokenizer(bpe)
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.pre_tokenizer = pre_tok
    tk.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)

    added = []
    for i, (t, ty) in enumerate(zip(tokens, types, strict=False)):
        if ty in (_TT_CONTROL, _TT_UNKNOWN, _TT_USER) and vocab.get(t) == i:
            added.append({"id": i, "content": t, "special": ty != _TT_USER})
    tk.add_tokens(
        [AddedToken(a["content"], special=a["special"], normalized=False, lstrip=False, rstrip=False) for a in added]
    )
    # AddedToken ids come from the vocabulary when the content is in it: check nothing was appended
    if tk.get_vocab_size(with_added_tokens=True) != len(vocab):
        raise GGUFTokenizerError(
            f"{meta.path.name}: added tokens do not match the vocabulary; the GGUF is inconsistent"
        )

    special = _special_ids(meta, len(tokens))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    bos_id, eos_id = special["bos_token_id"], special["eos_ids"][0] if special["eos_ids"] else None
    if (add_bos and bos_id is not None) or (add_eos and eos_id is not None):
        single, pair, sp = "$A:0", "$A:0 $B:1", []
        if add_bos and bos_id is not None:
            single, pair = f"{tokens[bos_id]}:0 {single}", f"{tokens[bos_id]}:0 $A:0 {tokens[bos_id]}:1 $B:1"
            sp.append((tokens[bos_id], bos_id))
        if add_eos and eos_id is not None:
            single, pair = f"{single} {tokens[eos_id]}:0", f"{pair} {tokens[eos_id]}:1"
            if eos_id != bos_id:
                sp.append((tokens[eos_id], eos_id))
        tk.post_processor = processors.Sequence(
            [
                processors.ByteLevel(add_prefix_space=False, trim_offsets=False),
                processors.TemplateProcessing(single=single, pair=pair, special_tokens=sp),
            ]
        )
    else:
        tk.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    special["add_bos_token"] = add_bos
    special["add_eos_token"] = add_eos
    return tk, added, special, tokens


def _write_tokenizer(meta: GGUFFile, out: Path) -> dict[str, Any]:
    tk, added, special, tokens = _build_tokenizer(meta)
    _atomic_write_text(out / "tokenizer.json", tk.to_str(pretty=False))

    def tok(i):
        return tokens[i] if i is not None else None

    chat_template = meta.get("tokenizer.chat_template")
    named = {
        k.removeprefix("tokenizer.chat_template."): meta.get(k)
        for k in meta.metadata
        if k.startswith("tokenizer.chat_template.")
    }
    if named:
        chat_template = ([{"name": "default", "template": chat_template}] if chat_template else []) + [
            {"name": k, "template": v} for k, v in named.items()
        ]
    ctx_key = f"{meta.get('general.architecture')}.context_length"
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": special["add_bos_token"],
        "add_eos_token": special["add_eos_token"],
        "add_prefix_space": False,
        "bos_token": tok(special["bos_token_id"]),
        "eos_token": tok(special["eos_ids"][0]) if special["eos_ids"] else None,
        "unk_token": tok(special["unk_token_id"]),
        "pad_token": tok(special["pad_token_id"]),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get(ctx_key, 2048)),
        "added_tokens_decoder": {
            str(a["id"]): {
                "content": a["content"],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": a["special"],
            }
            for a in added
        },
    }
    if chat_template:
        tok_config["chat_template"] = chat_template
    _atomic_write_text(out / "tokenizer_config.json", json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")

    gen = {"bos_token_id": special["bos_token_id"], "eos_token_id": special["eos_token_id"]}
    if special["pad_token_id"] is not None:
        gen["pad_token_id"] = special["pad_token_id"]
    _atomic_write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    return special


# --- safetensors writing -----------------------------------------------------------------------------


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept quiet."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def _encode(x: np.ndarray, dtype: str) -> bytes | memoryview:
    if dtype == "float32":
        arr = np.ascontiguousarray(x, dtype="<f4")
    elif dtype == "float16":
        with np.errstate(over="ignore"):
            arr = np.ascontiguousarray(x.astype("<f2"))
    else:
        arr = _to_bf16_bits(x).astype("<u2", copy=False)
    return memoryview(arr).cast("B")


class _SafetensorsWriter:
    """Streams tensors into a .safetensors file whose header is fixed up front."""

    def __init__(self, path: Path, entries: list[tuple[str, tuple[int, ...]]], dtype: str, metadata: dict[str, str]):
        tag, size = OUTPUT_DTYPES[dtype]
        header: dict[str, Any] = {"__metadata__": metadata}
        self._expected: list[tuple[str, int]] = []
        offset = 0
        for name, shape in entries:
            nbytes = int(np.prod(shape, dtype=np.int64)) * size
            header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._expected.append((name, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self.path = path
        self._tmp = path.with_name(path.name + ".partial")
        self._f = open(self._tmp, "wb")
        self._f.write(len(raw).to_bytes(8, "little"))
        self._f.write(raw)
        self._i = 0
        self.dtype = dtype

    def write(self, name: str, x: np.ndarray) -> None:
        exp_name, exp_bytes = self._expected[self._i]
        data = _encode(x, self.dtype)
        if name != exp_name or data.nbytes != exp_bytes:
            raise ConversionError(
                f"internal error: wrote {name} ({data.nbytes} B), expected {exp_name} ({exp_bytes} B)"
            )
        self._f.write(data)
        self._i += 1

    def close(self, ok: bool) -> None:
        self._f.close()
        if ok and self._i == len(self._expected):
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- conversion ------------------------------------------------------------------------------------


def _check_architecture(meta: GGUFFile) -> str:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFArchitectureError(
            f"{meta.path.name}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); use a Llama-family GGUF"
        )
    return arch


def convert_gguf_tokenizer(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write only ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json``."""
    meta = GGUFFile(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(meta, out)
    return out


def convert_gguf(
    gguf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dtype: str = "float16",
    progress: ProgressFn | None = None,
) -> Path:
    """Convert a Llama-family GGUF file into a Hugging Face-style directory ``out_dir``.

    ``dtype`` is the weight dtype of ``model.safetensors`` (``float16``, ``float32`` or
    ``bfloat16``). ``progress(done, total, label)`` is called as tensors are converted
    (``done``/``total`` count weight elements). Returns ``Path(out_dir)``. Existing files of the
    same names in ``out_dir`` are replaced; each file appears only once complete.
    """
    dtype = normalize_dtype(dtype)
    path = Path(gguf_path)
    meta = GGUFFile(path)
    arch = _check_architecture(meta)

    tensors = meta.tensors
    plan: list[tuple[str, Any]] = []
    for name, t in tensors.items():
        if name in _SKIPPED:
            continue
        hf = _hf_name(name)
        if hf is None:
            raise GGUFArchitectureError(
                f"{path.name}: tensor {name!r} has no Llama-family counterpart; this {arch!r} GGUF uses a "
                "variant the converter does not handle"
            )
        if t.type_name not in SUPPORTED_TENSOR_TYPES:
            raise GGUFTensorTypeError(
                f"{path.name}: tensor {name!r} is stored as {t.type_name}, which is not supported "
                f"(supported: {', '.join(SUPPORTED_TENSOR_TYPES)}); re-quantize the model with llama.cpp's "
                "llama-quantize to Q8_0, Q4_1 or F16, or use another GGUF"
            )
        plan.append((hf, t))
    if "token_embd.weight" not in tensors:
        raise MissingTensor(f"{path.name}: tensor 'token_embd.weight' is missing; the GGUF is incomplete")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = _write_tokenizer(meta, out)
    config = _build_config(meta, tensors, dtype, special)

    n_layer = config["num_hidden_layers"]
    required = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{s}"
        for i in range(n_layer)
        for s in (
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        )
    ]
    have = {hf for hf, _ in plan}
    missing = [r for r in required if r not in have]
    if missing:
        raise MissingTensor(
            f"{path.name}: {len(missing)} tensors are missing, e.g. {missing[0]!r}; the GGUF is incomplete"
        )
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    full: list[tuple[str, Any, tuple[int, ...]]] = [(hf, t, t.shape) for hf, t in plan]
    if arch == "qwen2":
        if any(hf.endswith("o_proj.bias") for hf in have):
            raise GGUFArchitectureError(f"{path.name}: a qwen2 model with an output-projection bias is not supported")
    elif config["attention_bias"]:
        # HF Llama's attention_bias means q, k, v and o all have biases: the missing ones are zeros
        hd, hidden = config["head_dim"], config["hidden_size"]
        sizes = {"q": n_head * hd, "k": n_kv * hd, "v": n_kv * hd, "o": hidden}
        for i in range(n_layer):
            for proj, size in sizes.items():
                hf = f"model.layers.{i}.self_attn.{proj}_proj.bias"
                if hf not in have:
                    full.append((hf, None, (size,)))
    full.sort(key=lambda p: _sort_key(p[0]))
    entries = [(hf, shape) for hf, _, shape in full]
    total = float(sum(int(np.prod(shape)) for _, _, shape in full))

    writer = _SafetensorsWriter(
        out / "model.safetensors",
        entries,
        dtype,
        {"format": "pt", "source": path.name, "converter": "shaderbay.models.gguf"},
    )
    ok = False
    done = 0.0
    try:
        if progress is not None:
            progress(0.0, total, "tokenizer")
        for hf, t, shape in full:
            if progress is not None:
                progress(done, total, hf)
            if t is None:
                writer.write(hf, np.zeros(shape, np.float32))
                continue
            w = dequantize(t.raw(), t.type_id, shape)
            if arch != "qwen2":  # llama.cpp permutes Q/K rows (weights and biases) for llama only
                if hf.endswith(("q_proj.weight", "q_proj.bias")):
                    w = unpermute_rotary(w, n_head)
                elif hf.endswith(("k_proj.weight", "k_proj.bias")):
                    w = unpermute_rotary(w, n_kv)
            writer.write(hf, w)
            done += int(t.n_elements)
        ok = True
    finally:
        writer.close(ok)
    _atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    if progress is not None:
        progress(total, total, "done")
    return out
