"""The Llama-family model: config, loading, the forward pass against an independent reference,
generation (greedy, sampled, EOS, context limit), the text API and the CLI, on every backend."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import shaderbay
from fixtures_model import write_tiny_gguf
from shaderbay.backends.numpy.kernels import sample_token
from shaderbay.benches.shapes import Shape, named_shape
from shaderbay.dtypes import to_f32
from shaderbay.errors import ContextLengthExceeded, InvalidOption, ModelError, UnsupportedArchitecture
from shaderbay.models.checkpoint import SafetensorsCheckpoint
from shaderbay.models.config import ModelConfig
from shaderbay.models.model import Model
from shaderbay.models.synthetic import (
    SHAPES,
    stored_dtypes,
    synthetic_arrays,
    synthetic_checkpoint,
    synthetic_config,
)
from shaderbay.rope import inverse_frequencies

PROMPT = [3, 17, 42, 5, 99, 7, 1, 64, 200, 11]


def _load(source, backend, **kw) -> Model:
    return shaderbay.load(source, backend=backend, **kw)


# --- an independent reference: Hugging Face's Llama/Qwen2 math, in float64, unfused -----------


def reference_logits(raw_config: dict, arrays: dict[str, np.ndarray], dtype: str, ids: list[int]) -> np.ndarray:
    c = ModelConfig.from_dict(raw_config)

    def w(name: str) -> np.ndarray:
        return to_f32(arrays[name], dtype).astype(np.float64)

    def rms(x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + c.rms_eps) * weight

    def linear(x, prefix):
        y = x @ w(prefix + ".weight").T
        if prefix + ".bias" in arrays:
            y = y + w(prefix + ".bias")
        return y

    T, hd = len(ids), c.head_dim
    inv = inverse_frequencies(hd, c.rope_theta, c.rope_scaling)
    angle = (np.arange(T, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]

    def rope(x):  # [T, heads, hd], rotate-half
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    x = w("model.embed_tokens.weight")[ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        h = rms(x, w(p + "input_layernorm.weight"))
        q = rope(linear(h, p + "self_attn.q_proj").reshape(T, c.n_heads, hd))
        k = rope(linear(h, p + "self_attn.k_proj").reshape(T, c.n_kv_heads, hd))
        v = linear(h, p + "self_attn.v_proj").reshape(T, c.n_kv_heads, hd)
        group = c.n_heads // c.n_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", probs, v).reshape(T, c.q_dim)
        x = x + linear(attn, p + "self_attn.o_proj")
        h = rms(x, w(p + "post_attention_layernorm.weight"))
        gate, up = linear(h, p + "mlp.gate_proj"), linear(h, p + "mlp.up_proj")
        x = x + linear(gate / (1 + np.exp(-gate)) * up, p + "mlp.down_proj")
    head = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
    return rms(x, w("model.norm.weight")) @ w(head).T


@pytest.mark.parametrize(
    "name,dtype", [("tiny", "f32"), ("tiny-qwen2", "f32"), ("tiny-llama3", "f32"), ("tiny", "bf16"), ("tiny", "f16")]
)
def test_forward_matches_an_independent_reference(numpy_backend, name, dtype):
    raw = synthetic_config(name, dtype)
    arrays = synthetic_arrays(raw, dtype, seed=1)
    ids = PROMPT[:7]
    want = reference_logits(raw, arrays, dtype, ids)
    with _load(synthetic_checkpoint(name, dtype, seed=1), numpy_backend, cache_dtype="f32") as model:
        got = model.logits(ids, all_positions=True)
        assert got.shape == (len(ids), raw["vocab_size"])
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-5)
        np.testing.assert_allclose(model.logits(ids), want[-1], atol=2e-4, rtol=1e-5)
    with _load(synthetic_checkpoint(name, dtype, seed=1), numpy_backend, cache_dtype="f16") as model:
        np.testing.assert_allclose(model.logits(ids, all_positions=True), want, atol=3e-2)


def test_chunked_prefill_equals_one_pass(numpy_backend):
    ckpt = synthetic_checkpoint("tiny", "f32")
    with _load(ckpt, numpy_backend) as whole, _load(ckpt, numpy_backend, prefill_chunk=4) as chunked:
        np.testing.assert_allclose(chunked.logits(PROMPT, True), whole.logits(PROMPT, True), atol=1e-5)
        assert list(chunked.tokens(PROMPT, 6)) == list(whole.tokens(PROMPT, 6))


def test_decode_steps_agree_with_prefill(numpy_backend):
    """Teacher forcing: the greedy tokens from the recorded decode step are the argmaxes of one prefill."""
    with _load(synthetic_checkpoint("tiny-qwen2", "f32"), numpy_backend) as model:
        out = list(model.tokens(PROMPT, 12))
        assert len(out) == 12 and len(set(out)) > 3
        logits = model.logits(PROMPT + out[:-1], all_positions=True)
        assert logits[len(PROMPT) - 1 :].argmax(-1).tolist() == out


# --- every backend against NumPy --------------------------------------------------------------


@pytest.mark.parametrize(
    "name,dtype,sharded",
    [("tiny", "f32", False), ("tiny", "f16", True), ("tiny", "bf16", False), ("tiny-qwen2", "f16", False),
     ("tiny-llama3", "bf16", False)],
)  # fmt: skip
def test_every_backend_generates_the_numpy_tokens(model_backend, numpy_backend, make_checkpoint, name, dtype, sharded):
    path = make_checkpoint(name, dtype, shards=3 if sharded else 1)
    with _load(path, numpy_backend, cache_dtype="f32") as ref:
        want = list(ref.tokens(PROMPT, 16))
        want_sampled = list(ref.tokens(PROMPT, 8, temperature=0.7, top_k=40, seed=7, repetition_penalty=1.2))
    with _load(path, model_backend, cache_dtype="f32") as model:
        assert list(model.tokens(PROMPT, 16)) == want
        assert list(model.tokens(PROMPT[:3], 4)) == list(model.tokens(PROMPT[:3], 4))
        assert list(model.tokens(PROMPT, 8, temperature=0.7, top_k=40, seed=7, repetition_penalty=1.2)) == want_sampled
        assert np.argmax(model.logits(PROMPT)) == want[0]


def test_a_consumer_that_stops_early_leaves_nothing_running(model_backend, make_checkpoint):
    """Decoding runs a step ahead of the tokens handed out: a generator closed early (or ended by a
    stop token) waits for the step still running, and the next generation is unaffected."""
    with _load(make_checkpoint("tiny", "f32"), model_backend, cache_dtype="f32") as model:
        want = list(model.tokens(PROMPT, 12))
        gen = model.tokens(PROMPT, 12)
        assert [next(gen) for _ in range(4)] == want[:4]
        gen.close()
        assert list(model.tokens(PROMPT, 12, stop=[want[5]]))[-1] == want[5]
        assert list(model.tokens(PROMPT, 12)) == want
        assert model.stats.generated_tokens == 12


def test_every_backend_keeps_weights_in_stored_precision(model_backend, make_checkpoint):
    with _load(make_checkpoint("tiny", "bf16"), model_backend) as model:
        w = model.llama.weights
        (qkv,) = w.layers[0].qkv  # q, k and v in one matrix
        assert w.embed.dtype == "bf16" and qkv.w.dtype == "bf16" and w.lm_head.dtype == "bf16"
        assert w.layers[0].attn_norm.dtype == "f32"
        c = model.config
        assert qkv.first == 0 and qkv.w.shape == (c.q_dim + 2 * c.kv_dim, c.dim)
        assert w.layers[0].wgu.shape == (2 * c.ffn_dim, c.dim)


# --- loading --------------------------------------------------------------------------------


def test_written_checkpoints_load_like_in_memory_ones(numpy_backend, make_checkpoint):
    mem = synthetic_checkpoint("tiny-qwen2", "bf16")
    with _load(mem, numpy_backend) as a:
        want = list(a.tokens(PROMPT, 8))
    for shards in (1, 2):
        with _load(make_checkpoint("tiny-qwen2", "bf16", shards=shards), numpy_backend) as b:
            assert list(b.tokens(PROMPT, 8)) == want


def test_tied_embeddings_share_one_tensor(numpy_backend):
    with _load(synthetic_checkpoint("tiny-qwen2", "f16"), numpy_backend) as tied:
        assert tied.llama.weights.lm_head is tied.llama.weights.embed
    with _load(synthetic_checkpoint("tiny", "f16"), numpy_backend) as untied:
        assert untied.llama.weights.lm_head is not untied.llama.weights.embed


def test_checkpoints_are_memory_mapped(make_checkpoint):
    with SafetensorsCheckpoint(make_checkpoint("tiny", "f16")) as ckpt:
        a = ckpt.array("model.embed_tokens.weight")
        assert a.dtype == np.float16 and a.shape == (256, 64)
        assert isinstance(a.base, np.memmap) or isinstance(a, np.memmap) or not a.flags.owndata


def test_synthetic_shapes():
    c = ModelConfig.from_dict(synthetic_config("smollm2-135m"))
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size) == (
        576, 30, 9, 3, 64, 1536, 49152)  # fmt: skip
    assert c.tie_word_embeddings and c.rope_theta == 100000 and c.max_position_embeddings == 8192
    assert 130e6 < c.n_params < 140e6
    c = ModelConfig.from_dict(synthetic_config("llama-3.2-1b"))
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size) == (
        2048, 16, 32, 8, 64, 8192, 128256)  # fmt: skip
    assert c.rope_scaling["factor"] == 32 and c.rope_theta == 500000 and c.tie_word_embeddings
    assert 1.2e9 < c.n_params < 1.3e9
    assert {"tiny", "tiny-qwen2"} <= set(SHAPES)
    assert ModelConfig.from_dict(synthetic_config("tiny-qwen2")).qkv_bias


def test_synthetic_weights_are_deterministic_and_varied():
    a = synthetic_checkpoint("smollm2-135m", "f16", seed=3, num_hidden_layers=1)
    b = synthetic_checkpoint("smollm2-135m", "f16", seed=3, num_hidden_layers=1)
    emb = a.array("model.embed_tokens.weight")
    assert emb.dtype == np.float16 and emb.shape == (49152, 576)
    np.testing.assert_array_equal(emb, b.array("model.embed_tokens.weight"))
    assert len(np.unique(emb[:, :8], axis=0)) == 49152  # no repeated rows
    assert 0.05 < float(np.std(emb[:1000].astype(np.float32))) < 0.15


def test_the_q4_k_m_mix_is_llama_cpps():
    """llama.cpp's Q4_K_M: q6_k for the tied table and for v and down in the layers use_more_bits picks (16
    layers: 0, 1, 4, 7, 10, 13, 14, 15), q4_k elsewhere."""
    config = ModelConfig.from_dict(synthetic_config("llama-3.2-1b"))
    dtypes = stored_dtypes(config, "q4_k_m")
    assert dtypes["model.embed_tokens.weight"] == "q6_k" and dtypes["model.norm.weight"] == "f32"
    richer = [i for i in range(16) if dtypes[f"model.layers.{i}.mlp.down_proj.weight"] == "q6_k"]
    assert richer == [0, 1, 4, 7, 10, 13, 14, 15]
    for i in range(16):
        v = dtypes[f"model.layers.{i}.self_attn.v_proj.weight"]
        assert v == ("q6_k" if i in richer else "q4_k")
        others = ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.o_proj")
        assert {dtypes[f"model.layers.{i}.{p}.weight"] for p in others} == {"q4_k"}
    # the bench's byte counts follow the mix: between all-q4_k and all-q6_k
    shape = named_shape("llama-3.2-1b")
    assert shape.weights_bytes("q4_k") < shape.weights_bytes("q4_k_m") < shape.weights_bytes("q6_k")


def test_a_q4_k_m_model_runs_with_each_tensor_in_its_format(numpy_backend):
    ckpt = synthetic_checkpoint("tiny", "q4_k_m", hidden_size=256, intermediate_size=512, num_hidden_layers=8)
    assert ckpt.infos()["model.layers.0.mlp.down_proj.weight"].dtype == "q6_k"  # layers 0, 3, 6, 7: more bits
    with shaderbay.load(ckpt, backend=numpy_backend) as model:
        layers = model.llama.weights.layers
        richer = [0, 3, 6, 7]  # q and k in one q4_k product, v in a q6_k one
        for i, layer in enumerate(layers):
            parts = [(p.first, p.w.dtype) for p in layer.qkv]
            qk = model.config.q_dim + model.config.kv_dim
            assert parts == ([(0, "q4_k"), (qk, "q6_k")] if i in richer else [(0, "q4_k")]), i
        assert model.weight_bytes == Shape("tiny", ckpt.config).weights_bytes("q4_k_m")
        assert len(list(model.tokens([1, 2, 3], max_tokens=4, ignore_eos=True))) == 4


@pytest.mark.slow
def test_synthetic_1b_builds_in_memory_quickly():
    import time

    t0 = time.perf_counter()
    ckpt = synthetic_checkpoint("llama-3.2-1b", "f16")
    assert time.perf_counter() - t0 < 30
    assert sum(a.size for a in ckpt.arrays.values()) > 1.2e9


def test_config_variants():
    base = synthetic_config("tiny")
    mistral = ModelConfig.from_dict({**base, "architectures": ["MistralForCausalLM"], "sliding_window": 4096})
    assert mistral.architecture == "MistralForCausalLM" and mistral.sliding_window == 4096
    qwen = ModelConfig.from_dict({**base, "architectures": ["Qwen2ForCausalLM"], "sliding_window": 4096})
    assert qwen.qkv_bias and not qwen.o_bias and qwen.sliding_window is None
    llama_bias = ModelConfig.from_dict({**base, "attention_bias": True, "eos_token_id": [5, 9]})
    assert llama_bias.qkv_bias and llama_bias.o_bias and llama_bias.eos_token_ids == (5, 9)
    assert ModelConfig.from_dict({**base, "head_dim": 32}).q_dim == 4 * 32
    scaled = ModelConfig.from_dict({**base, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    assert scaled.rope_scaling["factor"] == 8.0
    with pytest.raises(UnsupportedArchitecture, match="GPT2LMHeadModel"):
        ModelConfig.from_dict({**base, "architectures": ["GPT2LMHeadModel"]})


def test_llama_attention_and_mlp_biases_load(numpy_backend, tmp_path):
    from shaderbay.models.synthetic import write_checkpoint

    raw = {**synthetic_config("tiny"), "attention_bias": True, "mlp_bias": True}
    arrays = synthetic_arrays(raw, "f32", seed=2)
    write_checkpoint(raw, tmp_path, "f32", arrays=arrays)
    with _load(tmp_path, numpy_backend) as model:
        np.testing.assert_allclose(
            model.logits(PROMPT, True), reference_logits(raw, arrays, "f32", PROMPT), atol=2e-4, rtol=1e-5
        )


# --- generation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(numpy_backend):
    model = _load(synthetic_checkpoint("tiny", "f32"), numpy_backend, max_context=64)
    yield model
    model.close()


def test_decode_is_recorded_once_and_replayed(tiny_model):
    c = tiny_model.config
    # 5 a layer (qkv, decode_attention, o, gate_up, down) + embed, lm_head, argmax, advance
    assert tiny_model.dispatches_per_token == 5 * c.n_layers + 4
    list(tiny_model.tokens(PROMPT, 4))
    decode = tiny_model.llama.decode_list()
    list(tiny_model.tokens(PROMPT[:5], 6))
    assert tiny_model.llama.decode_list() is decode
    assert decode.sealed


def test_stop_tokens_end_generation(tiny_model):
    free = list(tiny_model.tokens(PROMPT, 10))
    stop = free[3]
    first = free.index(stop)
    got = list(tiny_model.tokens(PROMPT, 10, stop=[stop]))
    assert got == free[: first + 1]
    with pytest.raises(InvalidOption, match="max_tokens must be an integer >= 1"):
        tiny_model.tokens(PROMPT, 0)
    assert list(tiny_model.tokens(PROMPT, 1)) == free[:1]


def test_context_length_limit(tiny_model):
    assert len(list(tiny_model.tokens(PROMPT, 64 - len(PROMPT) + 1))) == 64 - len(PROMPT) + 1
    with pytest.raises(ContextLengthExceeded, match="64") as err:
        list(tiny_model.tokens(PROMPT, 64 - len(PROMPT) + 2))
    assert err.value.limit == 64
    with pytest.raises(ContextLengthExceeded):
        tiny_model.logits(list(range(65)))
    with pytest.raises(ModelError, match="empty"):
        list(tiny_model.tokens([], 4))
    with pytest.raises(ModelError, match="vocabulary"):
        list(tiny_model.tokens([0, 256], 4))


def test_sampling_on_the_device_matches_the_host_sampler(tiny_model):
    """Each sampled token equals the reference sampler applied to that step's logits, history and state."""
    options = dict(temperature=0.9, top_k=50, top_p=0.9, repetition_penalty=1.3)
    seed = 1234
    out = list(tiny_model.tokens(PROMPT, 10, seed=seed, **options))
    assert out == list(tiny_model.tokens(PROMPT, 10, seed=seed, **options))
    assert out != list(tiny_model.tokens(PROMPT, 10, seed=seed + 1, **options))
    for step, token in enumerate(out):
        seq = PROMPT + out[:step]
        logits = tiny_model.logits(seq)
        want = sample_token(logits, np.array(seq, np.uint32), seed, step, 0.9, 50, 0.9, 1.3)
        assert token == want, f"step {step}"


def test_greedy_with_repetition_penalty(tiny_model):
    plain = list(tiny_model.tokens(PROMPT, 12))
    penalised = list(tiny_model.tokens(PROMPT, 12, repetition_penalty=5.0))
    assert len(set(penalised)) >= len(set(plain))
    seq = PROMPT + penalised[:4]
    want = sample_token(tiny_model.logits(seq), np.array(seq, np.uint32), 0, 4, 0.0, 0, 1.0, 5.0)
    assert penalised[4] == want


def test_bad_sampling_options(tiny_model):
    for bad in (dict(top_p=0.0), dict(top_k=-1), dict(repetition_penalty=0.0)):
        with pytest.raises(ModelError):
            list(tiny_model.tokens(PROMPT, 2, **bad))


def test_stats(tiny_model):
    list(tiny_model.tokens(PROMPT, 8))
    s = tiny_model.stats
    assert s.prompt_tokens == len(PROMPT) and s.generated_tokens == 8
    assert s.prefill_s > 0 and s.decode_s > 0 and s.decode_tokens_per_s > 0


def test_no_tokenizer_means_token_ids(tiny_model):
    with pytest.raises(ModelError, match="tokenizer"):
        tiny_model.generate("hello")


def test_load_by_synthetic_name_and_backend_instance(numpy_backend):
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend) as model:
        assert model.backend is numpy_backend and not model.owns_backend
        assert model.config.dim == 64
    with shaderbay.load("synthetic:tiny", backend="numpy") as model:
        assert model.owns_backend and model.backend.name == "numpy"


def test_close_frees_the_model_buffers(numpy_backend):
    before = numpy_backend.bytes_allocated
    model = _load(synthetic_checkpoint("tiny", "f16"), numpy_backend)
    assert numpy_backend.bytes_allocated > before
    model.close()
    assert numpy_backend.bytes_allocated == before


# --- text: a tiny model with a real tokenizer (converted from a GGUF) ------------------------


def test_text_generation_stream_and_chat(numpy_backend, text_model_dir):
    with _load(text_model_dir, numpy_backend) as model:
        assert model.tokenizer is not None and 2 in model.eos_token_ids
        ids = model.encode("hello world")
        assert model.decode(ids) == "hello world"
        tokens = list(model.tokens("hello world", 12, ignore_eos=True))
        text = model.generate("hello world", 12, ignore_eos=True)
        assert text == model.decode(tokens)
        assert "".join(model.generate("hello world", 12, stream=True, ignore_eos=True)) == text
        assert "".join(model.stream("hello world", 12, ignore_eos=True)) == text
        messages = [{"role": "user", "content": "hello"}]
        chat_ids = model.encode_chat(messages)
        assert model.decode(chat_ids).endswith("<|im_start|>assistant\n")
        reply = list(model.tokens(chat_ids, 10))
        stops = set(model.eos_token_ids)
        want = model.decode([t for t in reply if t not in stops])
        assert model.chat(messages, 10) == want
        assert "<|im_end|>" not in want or 2 not in reply


# --- the CLI --------------------------------------------------------------------------------


def _cli(monkeypatch, argv):
    from shaderbay import cli

    return cli.main(argv)


def test_cli_generate_synthetic(monkeypatch, capsys):
    assert _cli(monkeypatch, ["generate", "hi", "--synthetic", "tiny", "--backend", "numpy", "--max-tokens", "5"]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 5 and all(t.isdigit() for t in out.split())
    assert "tokens/s" in err


def test_cli_convert_then_generate(monkeypatch, capsys, tmp_path):
    tiny_gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    out_dir = tmp_path / "converted"
    assert _cli(monkeypatch, ["convert", str(tiny_gguf), str(out_dir), "--dtype", "bf16"]) == 0
    assert json.loads((out_dir / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    capsys.readouterr()
    argv = ["generate", "hello", "--model", str(out_dir), "--backend", "numpy", "--max-tokens", "6", "--chat"]
    assert _cli(monkeypatch, argv + ["--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "3"]) == 0
    out, err = capsys.readouterr()
    assert "tokens/s" in err and out.endswith("\n")


def test_cli_reports_errors_without_a_traceback(monkeypatch, capsys, tmp_path):
    assert _cli(monkeypatch, ["generate", "hi", "--model", str(tmp_path), "--backend", "numpy"]) == 2
    assert "config.json" in capsys.readouterr().err


# --- tables larger than one binding ---------------------------------------------------------


@pytest.fixture()
def small_bindings(model_backend):
    """The backend, pretending it can bind only 64 KiB at once (its other limits unchanged)."""
    import dataclasses

    caps = model_backend.caps
    model_backend.caps = dataclasses.replace(caps, max_binding_size=65536)
    yield model_backend
    model_backend.caps = caps


@pytest.mark.parametrize("name", ["tiny", "tiny-qwen2"])
def test_tables_larger_than_a_binding(small_bindings, numpy_backend, tmp_path, name):
    """Embedding rows come from the host and the lm_head is bound in parts; results do not change."""
    from shaderbay.models.synthetic import write_checkpoint

    path = write_checkpoint(synthetic_config(name, "f16", vocab_size=1500), tmp_path, "f16")  # 192 KB tables
    with _load(path, numpy_backend, cache_dtype="f32", max_context=128) as ref:
        want_logits = ref.logits(PROMPT, True)
        want = list(ref.tokens(PROMPT, 12))
        want_sampled = list(ref.tokens(PROMPT, 6, temperature=0.8, seed=5))
    with _load(path, small_bindings, cache_dtype="f32", max_context=128) as model:
        w = model.llama.weights
        assert w.embed is None and w.host_embed is not None and len(w.lm_head_parts) > 1
        np.testing.assert_allclose(model.logits(PROMPT, True), want_logits, atol=1e-3)
        assert list(model.tokens(PROMPT, 12)) == want
        assert list(model.tokens(PROMPT, 6, temperature=0.8, seed=5)) == want_sampled


def test_a_failed_load_leaves_nothing_allocated(numpy_backend):
    before = numpy_backend.bytes_allocated
    with pytest.raises(ModelError, match="cache_dtype"):
        _load(synthetic_checkpoint("tiny", "f16"), numpy_backend, cache_dtype="f8")
    with pytest.raises(ModelError, match="max_context"):
        _load(synthetic_checkpoint("tiny", "f16"), numpy_backend, max_context=-3)
    assert numpy_backend.bytes_allocated == before


def test_a_kv_cache_larger_than_a_binding_is_refused_clearly(numpy_backend, monkeypatch):
    import dataclasses

    monkeypatch.setattr(numpy_backend, "caps", dataclasses.replace(numpy_backend.caps, max_binding_size=1 << 16))
    before = numpy_backend.bytes_allocated
    with pytest.raises(ModelError, match="max_context <= 512"):
        _load(synthetic_checkpoint("tiny", "f16"), numpy_backend, max_context=2048, cache_dtype="f32")
    assert numpy_backend.bytes_allocated == before
