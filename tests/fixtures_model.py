"""Shared test fixtures for the model files: the golden data, the real SmolLM2 GGUF converted once per
session, and tiny synthetic GGUF files written with ``gguf.GGUFWriter``.

Import the fixtures you use into a test module: ``from fixtures_model import fixture_golden  # noqa: F401``
registers the fixture ``golden`` there (each ``fixture_X`` function provides the fixture ``X``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN_NAME = "smollm2_golden.json"


def golden_path() -> Path | None:
    """``$SHADERBAY_GOLDEN`` (file or directory), ``tests/golden/``, or ``../shared/golden/`` next to the repo."""
    candidates = []
    env = os.environ.get("SHADERBAY_GOLDEN")
    if env:
        p = Path(env)
        candidates.append(p / GOLDEN_NAME if p.is_dir() else p)
    candidates += [REPO / "tests" / "golden" / GOLDEN_NAME, REPO.parent / "shared" / "golden" / GOLDEN_NAME]
    return next((c for c in candidates if c.is_file()), None)


def smollm2_gguf_path() -> Path | None:
    from shaderbay.models.default import DefaultModelMissing, default_gguf_path

    try:
        return default_gguf_path()
    except DefaultModelMissing:
        return None


def link_default_model(gguf: Path) -> None:
    """Make the default model `gguf` (found before a test pointed SHADERBAY_CACHE at a fresh folder)
    findable in the new cache, as `make install` puts it there."""
    from shaderbay.models.default import package_dir

    link = package_dir() / gguf.parent.name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(gguf.parent, target_is_directory=True)


def golden_data() -> dict:
    """The golden cases; they ship in tests/golden/, so their absence is a failure, never a skip."""
    p = golden_path()
    if p is None:
        pytest.fail(f"golden data {GOLDEN_NAME} not found (set SHADERBAY_GOLDEN to its directory)")
    return json.loads(p.read_text(encoding="utf-8"))


def required_smollm2_gguf() -> Path:
    """The default model's GGUF; `make install` puts it there, so its absence is a failure."""
    p = smollm2_gguf_path()
    if p is None:
        pytest.fail("the default model is not installed: python -m shaderbay.models.default (make install runs it)")
    return p


@pytest.fixture(scope="session", name="golden")
def fixture_golden() -> dict:
    return golden_data()


@pytest.fixture(scope="session", name="smollm2_gguf")
def fixture_smollm2_gguf() -> Path:
    return required_smollm2_gguf()


@pytest.fixture(scope="session", name="smollm2_tokenizer_dir")
def fixture_smollm2_tokenizer_dir(smollm2_gguf, tmp_path_factory) -> Path:
    """Only the tokenizer files of the real model (fast: no weights)."""
    from shaderbay.models.gguf import convert_gguf_tokenizer

    return convert_gguf_tokenizer(smollm2_gguf, tmp_path_factory.mktemp("smollm2-tokenizer"))


@pytest.fixture(scope="session", name="smollm2_f32_dir")
def fixture_smollm2_f32_dir(smollm2_gguf, tmp_path_factory) -> Path:
    """The real model converted to float32, once per session (about 1.5 s on 2 cores)."""
    from shaderbay.models.gguf import convert_gguf

    return convert_gguf(smollm2_gguf, tmp_path_factory.mktemp("smollm2-f32"), dtype="float32")


# --- tiny synthetic GGUF files ----------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("Ġw", "o")]
TINY_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a small byte-level BPE vocabulary with 3 control tokens."""
    tokens = list(TINY_SPECIALS) + [bytes_to_unicode()[b] for b in range(256)]
    types = [3] * len(TINY_SPECIALS) + [1] * 256
    for a, b in TINY_MERGES:
        tokens.append(a + b)
        types.append(1)
    return tokens, types, [f"{a} {b}" for a, b in TINY_MERGES]


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, written out independently."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


TINY = dict(hidden=64, heads=4, kv_heads=2, ffn=96, layers=2)


def tiny_hf_weights(seed: int = 0, tied: bool = True, dims: dict[str, int] = TINY) -> dict[str, np.ndarray]:
    """Random float32 weights of a tiny Llama (of ``dims``, TINY's keys), in Hugging Face names and layout."""
    rng = np.random.default_rng(seed)
    h, nh, nkv, f = dims["hidden"], dims["heads"], dims["kv_heads"], dims["ffn"]
    hd = h // nh
    vocab = len(tiny_vocab()[0])
    w: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": rng.standard_normal((vocab, h)),
        "model.norm.weight": 1 + 0.1 * rng.standard_normal(h),
    }
    if not tied:
        w["lm_head.weight"] = rng.standard_normal((vocab, h))
    for i in range(dims["layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h)
        w[p + "self_attn.q_proj.weight"] = rng.standard_normal((nh * hd, h))
        w[p + "self_attn.k_proj.weight"] = rng.standard_normal((nkv * hd, h))
        w[p + "self_attn.v_proj.weight"] = rng.standard_normal((nkv * hd, h))
        w[p + "self_attn.o_proj.weight"] = rng.standard_normal((h, nh * hd))
        w[p + "mlp.gate_proj.weight"] = rng.standard_normal((f, h))
        w[p + "mlp.up_proj.weight"] = rng.standard_normal((f, h))
        w[p + "mlp.down_proj.weight"] = rng.standard_normal((h, f))
    return {k: v.astype(np.float32) for k, v in w.items()}


_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
}


def gguf_name(hf: str) -> str:
    if hf in _TO_GGUF:
        return _TO_GGUF[hf]
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{_TO_GGUF[rest]}"


def encode_tensor(x: np.ndarray, qtype_name: str) -> tuple[np.ndarray, object]:
    """(array to hand to GGUFWriter.add_tensor, raw_dtype) storing float32 ``x`` as ``qtype_name``; the
    block formats shaderbay runs are quantized by its reference quantizers, the others by gguf's."""
    import gguf
    from shaderbay.backends.numpy import quants

    q = gguf.GGMLQuantizationType[qtype_name]
    if qtype_name == "F32":
        return x.astype(np.float32), None
    if qtype_name == "F16":
        return x.astype(np.float16), None
    if qtype_name == "BF16":
        bits = (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # truncation: exact bf16 values
        return bits.view(np.uint8).reshape(*x.shape[:-1], x.shape[-1] * 2), q
    if qtype_name.lower() in quants.LAYOUTS:
        return quants.quantize(x, qtype_name.lower()), q
    return gguf.quants.quantize(x.astype(np.float32), q), q


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    weights: dict[str, np.ndarray] | None = None,
    types: dict[str, str] | None = None,
    default_type: str = "F32",
    tokenizer_pre: str = "smollm",
    tokenizer_model: str = "gpt2",
    add_bos: bool = False,
    extra_tensors: dict[str, tuple[np.ndarray, object]] | None = None,
    permute_qk: bool | None = None,
    dims: dict[str, int] = TINY,
) -> Path:
    """A small llama-style GGUF: ``weights`` (HF names, float32) stored as ``types[hf_name]`` (or
    ``default_type``; norms always F32), Q/K permuted the way llama.cpp does, plus a byte-level BPE tokenizer."""
    import gguf

    weights = tiny_hf_weights(dims=dims) if weights is None else weights
    types = types or {}
    w = gguf.GGUFWriter(str(path), arch)
    h, nh, nkv = dims["hidden"], dims["heads"], dims["kv_heads"]
    w.add_block_count(dims["layers"])
    w.add_context_length(256)
    w.add_embedding_length(h)
    w.add_feed_forward_length(dims["ffn"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(h // nh)
    tokens, ttypes, merges = tiny_vocab()
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(tokenizer_pre)
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(add_bos)
    w.add_chat_template(TINY_TEMPLATE)
    if permute_qk is None:
        permute_qk = arch != "qwen2"  # llama.cpp permutes Q/K (weights and biases) for llama only
    for hf, x in weights.items():
        if permute_qk and hf.endswith(("q_proj.weight", "q_proj.bias")):
            x = llamacpp_permute(x, nh)
        elif permute_qk and hf.endswith(("k_proj.weight", "k_proj.bias")):
            x = llamacpp_permute(x, nkv)
        qt = "F32" if x.ndim == 1 else types.get(hf, default_type)
        data, raw = encode_tensor(x, qt)
        w.add_tensor(gguf_name(hf), data, raw_dtype=raw)
    for name, (data, raw) in (extra_tensors or {}).items():
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(name="tiny_gguf")
def fixture_tiny_gguf(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")
