"""The GGUF reader as a direct loader uses it: each tensor's ggml type, [out, in] shape and raw
blocks (a zero-copy view of the mapped file, the bytes gguf.GGUFReader sees), and the metadata as
(ModelConfig, Tokenizer, chat template), equal to what the converted directory gives."""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np
from fixtures_model import fixture_smollm2_gguf, write_tiny_gguf  # noqa: F401
from shaderbay.models.config import ModelConfig
from shaderbay.models.gguf import (
    GGUFFile,
    convert_gguf,
    convert_gguf_tokenizer,
    dequantize,
    model_metadata,
    unpermute_rotary,
    weight_tensors,
)
from shaderbay.models.tokenizer import Tokenizer
from test_gguf import MIXED


def test_tensors_are_typed_shaped_zero_copy_views(tmp_path):
    src = write_tiny_gguf(tmp_path / "mixed.gguf", types=MIXED)
    ours = GGUFFile(src).tensors
    theirs = {t.name: t for t in gguf.GGUFReader(src).tensors}
    assert set(ours) == set(theirs)
    for name, t in ours.items():
        ref = theirs[name]
        raw = t.raw()
        assert t.ggml_type == ref.tensor_type, name
        assert t.shape == tuple(int(d) for d in reversed(ref.shape.tolist())), name
        assert isinstance(raw, np.memmap) and raw.dtype == np.uint8 and not raw.flags.writeable, name
        np.testing.assert_array_equal(raw, np.asarray(ref.data).reshape(-1).view(np.uint8), err_msg=name)
        assert raw.nbytes == t.nbytes == ref.n_bytes, name
    q = ours["blk.0.attn_output.weight"]  # Q4_1, 64 x 64: rows of 2 blocks of 20 bytes
    assert q.type_name == "Q4_1" and q.shape == (64, 64) and q.rows().shape == (64, 40)
    assert np.shares_memory(q.rows(), q.raw())


def test_rows_of_blocks_unpermute_like_the_dequantized_weights(tmp_path):
    src = write_tiny_gguf(tmp_path / "q.gguf", types={"model.layers.0.self_attn.q_proj.weight": "Q8_0"})
    meta = GGUFFile(src)
    t = weight_tensors(meta)["model.layers.0.self_attn.q_proj.weight"]
    assert t.name == "blk.0.attn_q.weight"
    n_head = meta.get_int("llama.attention.head_count")
    whole = unpermute_rotary(dequantize(t.raw(), t.ggml_type, t.shape), n_head)
    blocks = np.ascontiguousarray(unpermute_rotary(t.rows(), n_head))
    np.testing.assert_array_equal(dequantize(blocks, t.ggml_type, t.shape), whole)


def _same_tokenizer(a: Tokenizer, b: Tokenizer, texts: list[str]) -> None:
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "bos_token_id", "eos_token_ids"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert (a.pad_token_id, a.add_bos_token, a.add_eos_token) == (b.pad_token_id, b.add_bos_token, b.add_eos_token)
    assert a.chat_template == b.chat_template
    for text in texts:
        assert a.encode(text) == b.encode(text), text
    msgs = [{"role": "user", "content": "Hi there"}]
    assert a.apply_chat_template(msgs) == b.apply_chat_template(msgs)


def test_metadata_equals_the_converted_directory(tmp_path):
    src = write_tiny_gguf(tmp_path / "t.gguf", add_bos=True)
    config, tok, template = model_metadata(src)
    out = convert_gguf(src, tmp_path / "out", dtype="float32")
    assert dataclasses.replace(config, torch_dtype="float32") == ModelConfig.from_dir(out)
    assert config.torch_dtype is None and config.n_layers == 2 and config.n_kv_heads == 2
    _same_tokenizer(tok, Tokenizer.from_dir(out), ["hello world", "<|im_start|>hello<|im_end|>", ""])
    assert template == tok.chat_template and "<|im_start|>" in template


def test_default_model_metadata(smollm2_gguf, tmp_path):
    config, tok, template = model_metadata(smollm2_gguf)
    assert (config.n_layers, config.dim, config.n_heads, config.n_kv_heads, config.vocab_size) == (30, 576, 9, 3, 49152)
    assert config.tie_word_embeddings and config.eos_token_ids == (2,)
    converted = Tokenizer.from_dir(convert_gguf_tokenizer(smollm2_gguf, tmp_path / "tok"))
    _same_tokenizer(tok, converted, ["Hello, world! 12345"])
    assert template.startswith("{% for message in messages %}")
    types = {t.ggml_type.name for t in GGUFFile(smollm2_gguf).tensors.values()}
    assert types == {"Q4_1", "Q8_0", "F32"}
