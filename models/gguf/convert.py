"""Converting a Llama-family GGUF into a Hugging Face-style checkpoint directory::

    config.json              LlamaForCausalLM hyper-parameters (Qwen2ForCausalLM for qwen2)
    model.safetensors        weights under Hugging Face names, float16 / float32 / bfloat16
    tokenizer.json           the tokenizer rebuilt from the GGUF metadata (``tokenizers`` format)
    tokenizer_config.json    special tokens, ``chat_template``, ``add_bos_token``...
    generation_config.json   bos / eos (/ pad) ids

Weights are dequantized with ``gguf.quants`` and llama.cpp's rotary row permutation of the Q and K
projections is undone, so the directory loads like the original checkpoint. Everything is written
into a temporary folder beside the output, which replaces the output only once complete.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from shaderbay.dtypes import from_f32
from shaderbay.errors import UnsupportedDtype

from ..safetensors_writer import SafetensorsWriter
from .config import architecture, model_config
from .dequant import check_supported, dequantize
from .names import model_weights, rotary_heads, sort_key, unpermute_rotary, weight_tensors
from .reader import GGUFFile
from .tokenizer import build_tokenizer
from .writing import atomic_write_text, staged_dir

ProgressFn = Callable[[float, float, str], None]

#: Output dtypes: canonical name -> the shaderbay dtype of the stored weights.
OUTPUT_DTYPES = {"float16": "f16", "float32": "f32", "bfloat16": "bf16"}
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


def normalize_dtype(dtype: str) -> str:
    """Canonical output dtype name (``float16``, ``float32`` or ``bfloat16``) for ``dtype`` or an alias."""
    key = str(getattr(dtype, "name", dtype)).lower().removeprefix("torch.").removeprefix("numpy.")
    if key not in _DTYPE_ALIASES:
        raise UnsupportedDtype(
            f"cannot write weights as {dtype!r}: choose one of float16, float32, bfloat16 "
            "(e.g. `shaderbay convert MODEL.gguf OUT_DIR --dtype float16`)"
        )
    return _DTYPE_ALIASES[key]


def convert_gguf_tokenizer(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write only ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json``."""
    tok = build_tokenizer(GGUFFile(gguf_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.write(out)
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
    (``done``/``total`` count weight elements). Returns ``Path(out_dir)``, which is replaced as a
    whole once the conversion is complete; a failed conversion leaves it as it was.
    """
    dtype = normalize_dtype(dtype)
    meta = GGUFFile(gguf_path)
    architecture(meta)
    weight_tensors(meta)  # an unknown tensor name is the first thing to report
    tok = build_tokenizer(meta)
    config = model_config(meta, tok, dtype)
    weights, zeros = model_weights(meta, config)
    for t in weights.values():
        check_supported(t.ggml_type, f"{meta.name}: tensor {t.name!r} is stored as ")
    permute = config.architecture != "Qwen2ForCausalLM"  # llama.cpp permutes Q/K rows for llama only
    full = [(hf, t, t.shape) for hf, t in weights.items()] + [(hf, None, shape) for hf, shape in zeros.items()]
    full.sort(key=lambda p: sort_key(p[0]))
    total = float(sum(math.prod(shape) for _, _, shape in full))
    wdtype = OUTPUT_DTYPES[dtype]

    out = Path(out_dir)
    with staged_dir(out) as tmp:
        tok.write(tmp)
        entries = [(hf, shape, wdtype) for hf, _, shape in full]
        source = {"format": "pt", "source": meta.name, "converter": "shaderbay.models.gguf"}
        done = 0.0
        with SafetensorsWriter(tmp / "model.safetensors", entries, source) as writer:
            if progress is not None:
                progress(0.0, total, "tokenizer")
            for hf, t, shape in full:
                if progress is not None:
                    progress(done, total, hf)
                w = np.zeros(shape, np.float32) if t is None else dequantize(t.raw(), t.type_id, shape)
                heads = rotary_heads(hf, config.n_heads, config.n_kv_heads) if permute else None
                writer.write(hf, from_f32(unpermute_rotary(w, heads) if heads else w, wdtype))
                done += math.prod(shape)
        atomic_write_text(tmp / "config.json", json.dumps(config.raw, indent=2) + "\n")
    if progress is not None:
        progress(total, total, "done")
    return out
