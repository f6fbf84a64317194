"""Random-weight checkpoints of named shapes, for tests and benches (no download, no tokenizer).

`synthetic_checkpoint(name)` builds one in memory (the 1B shape in a few seconds: large
tensors are cut from a shared pool of random numbers rather than drawn one by one); with a
GGUF block dtype (q4_0, ...) its matrices are blocks quantized by the reference (the pool
quantized once, tensors cut from it block by block) and its norms float32, as in a GGUF; a mix
(q4_k_m) gives each tensor the format llama.cpp's quantizer would;
`write_checkpoint(name, out_dir)` writes config.json and safetensors (single or sharded)
for tests of the loader. The same (name, dtype, seed) gives the same weights either way.
Weights are scaled (2/sqrt(fan-in)) so that greedy generation wanders over many tokens with
logits well separated: with 0.02-scale weights the logits are nearly flat, and backends that
round differently would disagree about the argmax.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from shaderbay.backends.numpy.quants import quantize
from shaderbay.dtypes import BLOCK_DTYPES, block_size, from_f32, host_shape
from shaderbay.errors import ModelError

from .checkpoint import INDEX_NAME, MemoryCheckpoint
from .config import ModelConfig
from .safetensors_writer import write_safetensors
from .weights import tensor_shapes

_BASE: dict[str, Any] = {
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "eos_token_id": None,
}

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 256,
    },
    "tiny-qwen2": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 256, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
    },
    "tiny-llama3": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 32, "intermediate_size": 96, "vocab_size": 300, "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
    },
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
        "rope_theta": 100000.0, "max_position_embeddings": 8192,
    },
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True,
        "rope_theta": 500000.0, "max_position_embeddings": 131072,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    },
}  # fmt: skip

_DTYPES = {"f32": "f32", "float32": "f32", "f16": "f16", "float16": "f16", "bf16": "bf16", "bfloat16": "bf16"}
_DTYPES.update({name: name for name in BLOCK_DTYPES})
# Mixes of block formats, as llama.cpp's quantizer makes them (llama_tensor_get_type), by name: Q4_K_M is
# q4_k with q6_k for the output matrix (the embedding table when tied) and for v and down in the layers
# _more_bits picks; each goes up in its own format, as the GGUF loader takes such a file.
MIXES = {"q4_k_m": ("q4_k", "q6_k")}
_DTYPES.update({name: name for name in MIXES})
_MORE_BITS_SUFFIXES = ("self_attn.v_proj.weight", "mlp.down_proj.weight")
_TORCH = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
# a matrix whose rows are not whole blocks of the asked format (k-quants on a 576-wide model)
# takes this one, as llama.cpp's quantizer falls back to a 32-value format
FALLBACK_BLOCK_DTYPE = "q8_0"
_POOL = 1 << 22  # values in the shared pool large tensors are cut from
_DIRECT = 1 << 16  # tensors up to this many values are drawn directly
_CHUNK = 1 << 20  # larger ones are copied from the pool in slices this long, at random offsets


def normalize_dtype(dtype: str) -> str:
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        names = ", ".join([*BLOCK_DTYPES, *MIXES])
        raise ModelError(f"unknown weight dtype {dtype!r}; use f32, f16, bf16 or {names}") from None


def synthetic_config(name: str, dtype: str = "f32", **overrides: Any) -> dict[str, Any]:
    """The config.json dict of a named shape (overrides replace keys, e.g. num_hidden_layers=2)."""
    if name not in SHAPES:
        raise ModelError(f"no synthetic model named {name!r}; known: {', '.join(SHAPES)}")
    config = {**_BASE, **SHAPES[name], "torch_dtype": _TORCH.get(normalize_dtype(dtype), "float32"), **overrides}
    return json.loads(json.dumps(config))  # a deep copy


class _Filler:
    """Random values: small tensors drawn directly, large ones cut from a shared pool."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self._pool: np.ndarray | None = None
        self._cast: dict[tuple[float, str, float], np.ndarray] = {}

    def normal(self, shape: tuple[int, ...], scale: float, dtype: str, shift: float = 0.0) -> np.ndarray:
        n = math.prod(shape)
        if n <= _DIRECT:
            x = self.rng.standard_normal(n, dtype=np.float32) * np.float32(scale) + np.float32(shift)
            return from_f32(x, dtype).reshape(shape)
        key = (scale, dtype, shift)
        if key not in self._cast:
            self._cast[key] = from_f32(self._base() * np.float32(scale) + np.float32(shift), dtype)
        return self._cut(self._cast[key], n, shape[-1], _CHUNK).reshape(shape)

    def blocks(self, shape: tuple[int, ...], scale: float, dtype: str) -> np.ndarray:
        """uint8 rows of `dtype` blocks of normal values (shape: the values'; its rows whole blocks)."""
        block = block_size(dtype)
        if math.prod(shape) <= _DIRECT:
            return quantize(self.normal(shape, scale, "f32"), dtype)
        key = (scale, dtype, 0.0)
        if key not in self._cast:
            self._cast[key] = quantize(self._base().reshape(-1, block) * np.float32(scale), dtype)
        blocks = self._cut(self._cast[key], math.prod(shape) // block, shape[-1] // block, _CHUNK // block)
        return blocks.reshape(host_shape(dtype, shape))

    def _base(self) -> np.ndarray:
        if self._pool is None:
            self._pool = self.rng.standard_normal(_POOL + _CHUNK, dtype=np.float32)
        return self._pool

    def _cut(self, pool: np.ndarray, n: int, k: int, chunk: int) -> np.ndarray:
        """n items (values, or rows of block bytes) of rows k long, in slices of `chunk` from the pool.

        Slices start at random places, at distinct alignments to the rows (mod the row length),
        so that no two rows of the tensor are copies of one stretch of the pool."""
        out = np.empty((n, *pool.shape[1:]), pool.dtype)
        size = len(pool) - chunk
        count = -(-n // chunk)
        residues = self.rng.permutation(k)[:count] if count <= k else self.rng.integers(0, k, count)
        bases = self.rng.integers(0, size - k, size=count)
        offsets = [int(b + (r + i * chunk - b) % k) for i, (b, r) in enumerate(zip(bases, residues, strict=True))]
        for i, off in enumerate(offsets):
            start = i * chunk
            stop = min(n, start + chunk)
            out[start:stop] = pool[off : off + stop - start]
        return out


def stored_dtype(shape: tuple[int, ...], dtype: str) -> str:
    """The dtype a tensor of this shape is stored in when a model's weights are `dtype`: with a block
    dtype, vectors (norms, biases) are float32 and matrices whose rows are not whole blocks take
    FALLBACK_BLOCK_DTYPE."""
    if dtype not in BLOCK_DTYPES:
        return dtype
    if len(shape) == 1:
        return "f32"
    return dtype if shape[-1] % block_size(dtype) == 0 else FALLBACK_BLOCK_DTYPE


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between."""
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * n_layers // 8 or (layer - eighth) % 3 == 2


def stored_dtypes(config: ModelConfig, dtype: str) -> dict[str, str]:
    """Every tensor's stored dtype (stored_dtype), a mix's per tensor."""
    shapes = tensor_shapes(config)
    if dtype not in MIXES:
        return {name: stored_dtype(shape, dtype) for name, shape in shapes.items()}
    base, more = MIXES[dtype]
    output = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
    dtypes = {}
    for name, shape in shapes.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else -1
        richer = name == output or (name.endswith(_MORE_BITS_SUFFIXES) and _more_bits(layer, config.n_layers))
        dtypes[name] = stored_dtype(shape, more if richer else base)
    return dtypes


def synthetic_arrays(config: dict[str, Any], dtype: str = "f32", seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights for a config dict, by Hugging Face name, stored as `dtype` (bf16 as uint16 bits,
    blocks as uint8 rows; see stored_dtype)."""
    dtype = normalize_dtype(dtype)
    cfg = ModelConfig.from_dict(config, source="synthetic config")
    fill = _Filler(seed)
    arrays: dict[str, np.ndarray] = {}
    dtypes = stored_dtypes(cfg, dtype)
    for name, shape in tensor_shapes(cfg).items():
        stored = dtypes[name]
        if name.endswith("norm.weight"):
            arrays[name] = fill.normal(shape, 0.1, stored, shift=1.0)
        elif name.endswith(".bias"):
            arrays[name] = fill.normal(shape, 0.2, stored)
        else:
            fan_in = cfg.dim if name in ("model.embed_tokens.weight", "lm_head.weight") else shape[1]
            scale = 2.0 / math.sqrt(fan_in)
            is_blocks = stored in BLOCK_DTYPES
            arrays[name] = fill.blocks(shape, scale, stored) if is_blocks else fill.normal(shape, scale, stored)
    return arrays


def synthetic_checkpoint(name: str, dtype: str = "f16", seed: int = 0, **overrides: Any) -> MemoryCheckpoint:
    """An in-memory checkpoint of a named shape: `shaderbay.load(synthetic_checkpoint("tiny"))`."""
    dtype = normalize_dtype(dtype)
    raw = synthetic_config(name, dtype, **overrides)
    arrays = synthetic_arrays(raw, dtype, seed)
    config = ModelConfig.from_dict(raw, source=f"synthetic {name}")
    return MemoryCheckpoint(config, arrays, stored_dtypes(config, dtype), name=name)


def write_checkpoint(
    name: str | dict[str, Any],
    out_dir: str | Path,
    dtype: str = "f32",
    seed: int = 0,
    shards: int = 1,
    arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write config.json and model.safetensors (or `shards` files with their index) to `out_dir`."""
    dtype = normalize_dtype(dtype)
    if dtype in BLOCK_DTYPES or dtype in MIXES:
        raise ModelError(f"safetensors cannot hold {dtype} blocks; use synthetic_checkpoint (in memory)")
    raw = synthetic_config(name, dtype) if isinstance(name, str) else dict(name)
    arrays = synthetic_arrays(raw, dtype, seed) if arrays is None else arrays
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    names = list(arrays)
    if shards <= 1:
        write_safetensors(out / "model.safetensors", {n: (arrays[n], dtype) for n in names})
        return out
    weight_map = {}
    per = -(-len(names) // shards)
    for i in range(shards):
        filename = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i * per : (i + 1) * per]
        write_safetensors(out / filename, {n: (arrays[n], dtype) for n in part})
        weight_map.update(dict.fromkeys(part, filename))
    total = sum(a.nbytes for a in arrays.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return out
