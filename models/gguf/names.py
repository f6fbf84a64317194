"""How a GGUF lays out a Llama-family model: its tensor names against Hugging Face's, and
llama.cpp's row permutation of the Q and K projections."""

from __future__ import annotations

import re

import numpy as np
from shaderbay.errors import ConversionError, MissingTensor, ShapeMismatch

from ..config import ModelConfig
from ..weights import tensor_shapes
from .errors import GGUFArchitectureError, GGUFFileError
from .reader import GGUFFile, GGUFTensor

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
#: the per-layer tensors every Llama-family layer has (Hugging Face names, without the layer prefix)
LAYER_TENSORS = (
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
ROPE_FREQS = "rope_freqs.weight"  # not a weight: folded into the config's rope_scaling
TOKEN_EMBD = "token_embd.weight"
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
_ATTN_BIAS = re.compile(r"^blk\.\d+\.attn_(q|k|v|output)\.bias$")


def hf_name(name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None if it has no Llama-family counterpart."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLK.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{int(m.group(1))}.{_LAYER_NAMES[m.group(2)]}"
    return None


def weight_tensors(meta: GGUFFile) -> dict[str, GGUFTensor]:
    """The model's weights by Hugging Face name (``rope_freqs`` left out: it is configuration).

    A tensor without a Llama-family counterpart is refused, naming it."""
    weights = {}
    for name, t in meta.tensors.items():
        if name == ROPE_FREQS:
            continue
        hf = hf_name(name)
        if hf is None:
            raise GGUFArchitectureError(
                f"{meta.name}: tensor {name!r} has no Llama-family counterpart; this "
                f"{meta.get('general.architecture')!r} GGUF uses a variant the converter does not handle"
            )
        weights[hf] = t
    return weights


def model_weights(meta: GGUFFile, config: ModelConfig) -> tuple[dict[str, GGUFTensor], dict[str, tuple[int, ...]]]:
    """The weights checked against the model the metadata describes: (tensors by Hugging Face name,
    the biases the GGUF leaves out, by name and shape). The left-out biases are zeros: Hugging Face
    Llama's attention_bias means q, k, v and o all have one, and Qwen2 always has q, k and v biases.

    Every tensor must be one the config implies, of the shape it implies (else ShapeMismatch,
    naming the tensor), and every weight that is not a bias must be there (else MissingTensor).
    """
    shapes = tensor_shapes(config)
    weights = weight_tensors(meta)
    for hf, t in weights.items():
        if hf not in shapes:
            raise GGUFFileError(
                f"{meta.name}: tensor {t.name!r} is not part of the model the metadata describes "
                f"({config.summary()}); the GGUF is inconsistent: re-export it"
            )
        if t.shape != shapes[hf]:
            raise ShapeMismatch(
                f"{meta.name}: tensor {t.name!r} has shape {list(t.shape)} but the metadata ({config.summary()}) "
                f"needs {list(shapes[hf])}; the GGUF is inconsistent: re-export it"
            )
    absent = [hf for hf in shapes if hf not in weights]
    missing = [hf for hf in absent if not hf.endswith("_proj.bias")]
    if missing:
        raise MissingTensor(
            f"{meta.name}: {len(missing)} tensors are missing, e.g. {missing[0]!r}; the GGUF is incomplete"
        )
    return weights, {hf: shapes[hf] for hf in absent}


def is_attention_bias(name: str) -> bool:
    return _ATTN_BIAS.match(name) is not None


def rotary_heads(hf: str, n_head: int, n_kv: int) -> int | None:
    """How many heads llama.cpp permuted the rows of ``hf`` in (Q and K, weights and biases), else None."""
    if hf.endswith(("q_proj.weight", "q_proj.bias")):
        return n_head
    if hf.endswith(("k_proj.weight", "k_proj.bias")):
        return n_kv
    return None


def sort_key(hf: str) -> list:
    """Natural order (layer 2 before layer 10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", hf)]


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of Q/K projection rows (HF rotate-half -> interleaved-pair layout)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ConversionError(f"cannot permute {rows} rows into {n_head} heads of even size")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_rotary`: GGUF Q/K rows back to Hugging Face's layout.

    Whole rows move, so this works as well on a quantized tensor's rows of blocks."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ConversionError(f"cannot un-permute {rows} rows into {n_head} heads of even size")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
