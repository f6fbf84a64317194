"""Tokenizer: golden ids of the real SmolLM2 tokenizer rebuilt from its GGUF, decoding, streaming,
and chat templates rendered the way Hugging Face renders them."""

from __future__ import annotations

import json

import pytest
from fixtures_model import (  # noqa: F401  (fixture_X provides the fixture X)
    fixture_golden,
    fixture_smollm2_gguf,
    fixture_smollm2_tokenizer_dir,
    fixture_tiny_gguf,
    write_tiny_gguf,
)
from shaderbay.errors import TokenizerError
from shaderbay.models.gguf import convert_gguf_tokenizer
from shaderbay.models.tokenizer import ChatTemplateError, StreamDecoder, Tokenizer


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_dir(smollm2_tokenizer_dir)


def _chat_cases(golden):
    return [c for c in golden["cases"] if isinstance(c["prompt"], dict)]


# --- the real tokenizer against the golden data --------------------------------------------------------


def test_golden_input_ids_for_every_case(tok, golden):
    for case in golden["cases"]:
        assert tok.encode(case["text"]) == case["input_ids"], case["text"]
        assert tok.encode(case["text"], add_special_tokens=True) == case["input_ids"]  # SmolLM2 adds no BOS


def test_golden_chat_template_rendering(tok, golden):
    cases = _chat_cases(golden)
    assert cases, "the golden data has a chat case"
    for case in cases:
        text = tok.apply_chat_template(case["prompt"]["messages"], add_generation_prompt=True)
        assert text == case["text"]
        assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system message
        assert tok.encode_chat(case["prompt"]["messages"]) == case["input_ids"]


def test_chat_template_variants(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"  # no default system
    with pytest.raises(ChatTemplateError, match="list of"):
        tok.apply_chat_template({"role": "user", "content": "Hi"})


def test_golden_decode_round_trip(tok, golden):
    for case in golden["cases"]:
        assert tok.decode(case["input_ids"]) == case["text"]
        assert tok.decode(case["greedy_32_ids"]) == case["greedy_32_text"]


def test_special_tokens(tok, golden):
    assert tok.bos_token == "<|im_start|>" and tok.bos_token_id == golden["bos_token_id"] == 1
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == golden["eos_token_id"] == 2
    assert tok.is_eos(2) and not tok.is_eos(0) and tok.pad_token_id == 2
    assert tok.vocab_size == 49152
    assert tok.encode("a<|im_end|>b<|endoftext|>") == [
        tok.token_to_id("a"),
        2,
        tok.token_to_id("b"),
        0,
    ]
    assert tok.decode([1, 2], skip_special_tokens=True) == ""


@pytest.mark.parametrize(
    "text,expected",
    [
        ("12345", ["1", "2", "3", "4", "5"]),  # digits are split one by one (Digits pre-tokenizer)
        (" 2023", ["Ġ", "2", "0", "2", "3"]),
        ("it's", ["it", "'s"]),
        ("a\x04b", ["a", "b"]),  # bytes with no vocabulary entry are dropped, as by the original tokenizer
    ],
)
def test_pre_tokenization_edge_cases(tok, text, expected):
    assert [tok.id_to_token(i) for i in tok.encode(text)] == expected


ROUND_TRIP = [
    "",
    " ",
    "  Leading spaces, émojis 🚀 and numbers 12345 — tokenization edge cases.",
    "日本語のテキスト 中文 한국어 Привет مرحبا שלום",
    "👨‍👩‍👧 🇬🇧 é (e + combining accent)",
    "tabs\tand\r\nnewlines\n\n\n  trailing  ",
    "<|im_start|>user\nhi<|im_end|>\n",
    "def f(x):\n    return x ** 2  # ½ ² Ⅻ",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


# --- streaming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ROUND_TRIP[2:])
def test_stream_decoder_never_splits_characters(tok, text):
    ids = tok.encode(text)
    stream = tok.stream_decoder()
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert stream.text == text


def test_stream_decoder_waits_for_multibyte_characters(tok):
    ids = tok.encode("🚀")  # four UTF-8 bytes in several byte-level tokens
    assert len(ids) > 1
    stream = StreamDecoder(tok)
    assert [stream.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert stream.push(ids[-1]) == "🚀"
    assert stream.flush() == ""


def test_stream_decoder_golden_continuations(tok, golden):
    for case in golden["cases"]:
        stream = tok.stream_decoder()
        text = "".join(stream.feed(case["greedy_32_ids"])) + stream.flush()
        assert text == case["greedy_32_text"]
        quiet = tok.stream_decoder(skip_special_tokens=True)
        text = "".join(quiet.feed(case["greedy_32_ids"])) + quiet.flush()
        assert text == tok.decode(case["greedy_32_ids"], skip_special_tokens=True)


def test_stream_decoder_flushes_an_unfinished_character(tok):
    ids = tok.encode("🚀")
    stream = tok.stream_decoder()
    assert stream.push(ids[0]) == ""
    assert stream.flush() == "\ufffd"


# --- tiny model: loading rules and template features -----------------------------------------------------


def _tiny_dir(tmp_path, **kwargs):
    src = write_tiny_gguf(tmp_path / "t.gguf", **kwargs)
    return convert_gguf_tokenizer(src, tmp_path / "tok")


def test_tiny_tokenizer_merges_and_specials(tmp_path):
    t = Tokenizer.from_dir(_tiny_dir(tmp_path))
    assert [t.id_to_token(i) for i in t.encode("hello wo")] == ["hello", "Ġwo"]
    assert t.encode("<|im_start|>") == [1]
    assert t.decode(t.encode("hello world")) == "hello world"


def test_add_bos_token(tmp_path):
    t = Tokenizer.from_dir(_tiny_dir(tmp_path, add_bos=True))
    assert t.encode("hello", add_special_tokens=True) == [1, t.token_to_id("hello")]
    assert t.encode("hello") == [t.token_to_id("hello")]


def _with_template(d, template, **extra):
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    cfg.update(extra)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return Tokenizer.from_dir(d)


def test_template_environment_like_hugging_face(tmp_path):
    d = _tiny_dir(tmp_path)
    template = (
        "{{ bos_token }}{% for m in messages %}\n"
        "  {% if m.role == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}\n"
        "  {% generation %}[{{ m.role }}]{{ m.content | tojson }}{% endgeneration %}\n"
        "{% if loop.index > 5 %}{% break %}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    t = _with_template(d, template)
    # trim_blocks + lstrip_blocks: block tags eat their line's indentation and trailing newline
    assert t.apply_chat_template([{"role": "user", "content": "é"}]) == '<|im_start|>[user]"é">'
    with pytest.raises(ChatTemplateError, match="refused the messages: no tools here"):
        t.apply_chat_template([{"role": "tool", "content": "x"}])
    sandboxed = _with_template(d, "{{ messages.append(1) }}")
    with pytest.raises(ChatTemplateError):
        sandboxed.apply_chat_template([{"role": "user", "content": "x"}])


def test_named_templates_and_missing_template(tmp_path):
    d = _tiny_dir(tmp_path)
    t = _with_template(d, [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}])
    assert t.apply_chat_template([{"role": "user", "content": "x"}]) == "D"
    assert t.apply_chat_template([{"role": "user", "content": "x"}], template_name="tool_use") == "T"
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        Tokenizer.from_dir(d).apply_chat_template([{"role": "user", "content": "x"}])


def test_eos_ids_from_generation_config(tmp_path):
    d = _tiny_dir(tmp_path)
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [0, 2]}))
    t = Tokenizer.from_dir(d)
    assert t.eos_token_id == 2 and t.eos_token_ids == (2, 0)  # tokenizer_config's eos first
    assert t.is_eos(0) and t.is_eos(2)


def test_from_dir_errors(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.from_dir(tmp_path / "nowhere")
    with pytest.raises(TokenizerError, match="has no tokenizer.json; convert the model"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="could not be loaded"):
        Tokenizer.from_dir(tmp_path)


def test_decode_rejects_foreign_ids(tmp_path):
    t = Tokenizer.from_dir(_tiny_dir(tmp_path))
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        t.decode([10**6])


def test_the_templates_turn_end_token_ends_generation(tmp_path):
    """The special token the template closes an assistant's message with is an end token too (Llama 3's
    <|eot_id|> is not its EOS); a template closing turns with plain text adds none."""
    d = _tiny_dir(tmp_path)
    assert Tokenizer.from_dir(d).turn_end_ids() == (2,)  # ChatML: <|im_end|>
    ends_with_start = "{% for m in messages %}{{ m.content }}<|im_start|>{% endfor %}"
    assert _with_template(d, ends_with_start).turn_end_ids() == (1,)
    assert _with_template(d, "{% for m in messages %}{{ m.content }}\n{% endfor %}").turn_end_ids() == ()
