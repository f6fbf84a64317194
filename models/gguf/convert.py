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
from typing import Any

import numpy as np
from shaderbay.dtypes import from_f32
from shaderbay.errors import MissingTensor, UnsupportedDtype

from ..safetensors_writer import SafetensorsWriter
from .config import architecture, hf_config
from .dequant import check_supported, dequantize
from .errors import GGUFArchitectureError
from .names import LAYER_TENSORS, rotary_heads, sort_key, unpermute_rotary, weight_tensors
from .reader import GGUFFile, GGUFTensor
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


def _plan(meta: GGUFFile) -> list[tuple[str, GGUFTensor]]:
    """(Hugging Face name, tensor) of every weight, each checked to be of a type that dequantizes."""
    plan = list(weight_tensors(meta).items())
    for _, t in plan:
        check_supported(t.ggml_type, f"{meta.name}: tensor {t.name!r} is stored as ")
    return plan


def _check_complete(meta: GGUFFile, have: set[str], n_layer: int) -> None:
    required = ["model.embed_tokens.weight", "model.norm.weight"]
    required += [f"model.layers.{i}.{s}" for i in range(n_layer) for s in LAYER_TENSORS]
    missing = [r for r in required if r not in have]
    if missing:
        raise MissingTensor(
            f"{meta.name}: {len(missing)} tensors are missing, e.g. {missing[0]!r}; the GGUF is incomplete"
        )


def _zero_biases(meta: GGUFFile, config: dict[str, Any], have: set[str]) -> list[tuple[str, tuple[int, ...]]]:
    """HF Llama's attention_bias means q, k, v and o all have biases: the ones the GGUF lacks are zeros."""
    if config["model_type"] == "qwen2":
        if any(hf.endswith("o_proj.bias") for hf in have):
            raise GGUFArchitectureError(f"{meta.name}: a qwen2 model with an output-projection bias is not supported")
        return []
    if not config["attention_bias"]:
        return []
    hd, n_kv = config["head_dim"], config["num_key_value_heads"]
    sizes = {"q": config["num_attention_heads"] * hd, "k": n_kv * hd, "v": n_kv * hd, "o": config["hidden_size"]}
    names = (f"model.layers.{i}.self_attn.{p}_proj.bias" for i in range(config["num_hidden_layers"]) for p in sizes)
    return [(hf, (sizes[hf.split(".")[-2][0]],)) for hf in names if hf not in have]


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
    plan = _plan(meta)
    tok = build_tokenizer(meta)
    config = hf_config(meta, dtype, tok.generation)
    have = {hf for hf, _ in plan}
    _check_complete(meta, have, config["num_hidden_layers"])
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    permute = config["model_type"] != "qwen2"  # llama.cpp permutes Q/K rows (weights and biases) for llama only
    full = [(hf, t, t.shape) for hf, t in plan] + [(hf, None, s) for hf, s in _zero_biases(meta, config, have)]
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
                heads = rotary_heads(hf, n_head, n_kv) if permute else None
                writer.write(hf, from_f32(unpermute_rotary(w, heads) if heads else w, wdtype))
                done += math.prod(shape)
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
    if progress is not None:
        progress(total, total, "done")
    return out
