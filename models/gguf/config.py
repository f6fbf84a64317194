"""A GGUF's hyper-parameters as a Hugging Face ``config.json`` and a ``ModelConfig``, every value
checked for type and range (and against the tensor directory) before anything is sized from it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gguf import Keys
from shaderbay.errors import ConversionError, MissingTensor

from ..config import ModelConfig
from ..tokenizer import Tokenizer
from .dequant import dequantize
from .errors import GGUFArchitectureError, GGUFFileError
from .names import LAYER_TENSORS, ROPE_FREQS, TOKEN_EMBD, is_attention_bias
from .reader import GGUFFile
from .tokenizer import GGUFTokenizer, build_tokenizer

#: GGUF ``general.architecture`` values handled here.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
_MAX_WIDTH = 1 << 20  # hidden, ffn and head sizes: far above any model, far below an overflow


def architecture(meta: GGUFFile) -> str:
    arch = meta.get(Keys.General.ARCHITECTURE)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFArchitectureError(
            f"{meta.name}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); use a Llama-family GGUF"
        )
    return arch


def llama3_rope_scaling(freqs: np.ndarray, theta: float, head_dim: int) -> dict[str, Any]:
    """Recognise Llama 3.x rope frequency factors (GGUF ``rope_freqs``) as HF ``rope_scaling``."""
    freqs = np.asarray(freqs, dtype=np.float64).reshape(-1)
    factor = float(freqs.max()) if freqs.size else 0.0
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


def _rope_scaling(meta: GGUFFile, a: str, theta: float, head_dim: int) -> dict[str, Any] | None:
    if ROPE_FREQS in meta.tensors:
        t = meta.tensors[ROPE_FREQS]
        with np.errstate(all="ignore"):  # garbage factors are refused below, not warned about
            return llama3_rope_scaling(dequantize(t.raw(), t.type_id, t.shape), theta, head_dim)
    s_type = meta.get_str(Keys.Rope.SCALING_TYPE.format(arch=a), None)
    if s_type in (None, "none"):
        return None
    if s_type not in ("linear", "yarn"):
        raise GGUFArchitectureError(f"{meta.name}: rope scaling type {s_type!r} is not supported")
    factor = meta.get_float(Keys.Rope.SCALING_FACTOR.format(arch=a), 1.0, lo=0.0, lo_open=True, hi=1e6)
    if factor == 1.0:
        return None
    scaling: dict[str, Any] = {"rope_type": s_type, "factor": factor}
    orig = meta.get_int(Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=a), None)
    if orig:
        scaling["original_max_position_embeddings"] = orig
    return scaling


def _scalar_int(meta: GGUFFile, key: str, what: str, *default: int, **limits: int) -> int:
    """An int key that some architectures store per layer (an array): those are refused by name."""
    if isinstance(meta.get(key), list):
        raise GGUFArchitectureError(f"{meta.name}: per-layer {what} ({key}) are not supported by Llama-family models")
    return meta.get_int(key, *default, **limits)


def hf_config(meta: GGUFFile, dtype: str, generation: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face ``config.json`` of the model; ``generation`` gives the bos / eos / pad ids."""
    arch = a = architecture(meta)
    embd = meta.tensors.get(TOKEN_EMBD)
    if embd is None:
        raise MissingTensor(f"{meta.name}: tensor {TOKEN_EMBD!r} is missing; the GGUF is incomplete")
    if len(embd.shape) != 2:
        raise GGUFFileError(f"{meta.name}: tensor {TOKEN_EMBD!r} has shape {list(embd.shape)}, not a matrix")
    # a layer has at least its 9 tensors: a larger count is refused before any per-layer list exists
    n_layer = meta.get_int(Keys.LLM.BLOCK_COUNT.format(arch=a), hi=max(1, len(meta.tensors) // len(LAYER_TENSORS)))
    hidden = meta.get_int(Keys.LLM.EMBEDDING_LENGTH.format(arch=a), hi=_MAX_WIDTH)
    vocab, embd_width = embd.shape
    if embd_width != hidden:
        raise GGUFFileError(
            f"{meta.name}: {TOKEN_EMBD!r} has rows of {embd_width} but the embedding length is {hidden}; "
            "the GGUF is corrupt"
        )
    n_head = meta.get_int(Keys.Attention.HEAD_COUNT.format(arch=a), hi=hidden)
    n_kv = _scalar_int(meta, Keys.Attention.HEAD_COUNT_KV.format(arch=a), "KV head counts", n_head, hi=n_head)
    if n_head % n_kv:
        raise GGUFFileError(f"{meta.name}: {n_head} attention heads do not split into {n_kv} KV head groups")
    key_length = Keys.Attention.KEY_LENGTH.format(arch=a)
    if key_length not in meta and hidden % n_head:
        raise GGUFFileError(f"{meta.name}: the embedding length {hidden} is not divisible into {n_head} heads")
    head_dim = meta.get_int(key_length, hidden // n_head, hi=_MAX_WIDTH)
    v_dim = meta.get_int(Keys.Attention.VALUE_LENGTH.format(arch=a), head_dim, hi=_MAX_WIDTH)
    if v_dim != head_dim:
        raise GGUFArchitectureError(f"{meta.name}: key length {head_dim} != value length {v_dim}; not a Llama layout")
    rope_dim = meta.get_int(Keys.Rope.DIMENSION_COUNT.format(arch=a), head_dim, hi=_MAX_WIDTH)
    if rope_dim != head_dim:
        raise GGUFArchitectureError(
            f"{meta.name}: partial rotary embeddings ({rope_dim} of {head_dim} dims) are not a Llama layout"
        )
    ffn = _scalar_int(meta, Keys.LLM.FEED_FORWARD_LENGTH.format(arch=a), "feed-forward sizes", hi=_MAX_WIDTH)
    theta = meta.get_float(Keys.Rope.FREQ_BASE.format(arch=a), 10000.0, lo=0.0, lo_open=True)
    eps = meta.get_float(Keys.Attention.LAYERNORM_RMS_EPS.format(arch=a), 1e-6, lo=0.0, lo_open=True, hi=1.0)

    config: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": "qwen2" if arch == "qwen2" else "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(meta, a, theta, head_dim),
        "max_position_embeddings": meta.get_int(Keys.LLM.CONTEXT_LENGTH.format(arch=a), 2048),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in meta.tensors,
        "attention_bias": any(is_attention_bias(name) for name in meta.tensors),
        "mlp_bias": False,
        "bos_token_id": generation.get("bos_token_id"),
        "eos_token_id": generation.get("eos_token_id"),
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if generation.get("pad_token_id") is not None:
        config["pad_token_id"] = generation["pad_token_id"]
    if arch == "qwen2":
        config["use_sliding_window"] = False
    else:
        config["pretraining_tp"] = 1
    # recorded for people, never used: a value of the wrong type is left out rather than refused
    name, file_type = meta.get(Keys.General.NAME), meta.get(Keys.General.FILE_TYPE)
    config["gguf"] = {
        "file": meta.name,
        "name": name if isinstance(name, str) else None,
        "architecture": arch,
        "file_type": file_type if type(file_type) is int else None,
    }
    return config


def model_metadata(
    gguf: GGUFFile | str | os.PathLike[str],
) -> tuple[ModelConfig, Tokenizer, str | list[dict[str, str]] | None]:
    """What a GGUF's metadata says about its model: (ModelConfig, Tokenizer, chat template).

    The config is the one ``convert_gguf`` writes (its ``torch_dtype`` is None: the weights keep their
    ggml types), the tokenizer the one ``Tokenizer.from_dir`` reads back from the converted folder.
    """
    meta = gguf if isinstance(gguf, GGUFFile) else GGUFFile(gguf)
    tok = build_tokenizer(meta)
    return model_config(meta, tok), tok.tokenizer(), tok.config.get("chat_template")


def model_config(meta: GGUFFile, tok: GGUFTokenizer, dtype: str | None = None) -> ModelConfig:
    config = hf_config(meta, dtype, tok.generation)
    n_tokens = tok.backend.get_vocab_size(with_added_tokens=True)
    if n_tokens > config["vocab_size"]:
        raise GGUFFileError(
            f"{meta.name}: the tokenizer has {n_tokens} tokens but {TOKEN_EMBD!r} has only {config['vocab_size']} "
            "rows; the GGUF is inconsistent: re-export it"
        )
    return ModelConfig.from_dict(config, source=meta.name, generation=tok.generation)
