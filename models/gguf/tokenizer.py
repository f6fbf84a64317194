"""The tokenizer stored in a GGUF's metadata, rebuilt as a ``tokenizers`` byte-level BPE with the
original's pre-tokenizer, special tokens and chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import Keys, TokenType

from ..tokenizer import Tokenizer
from .errors import GGUFTokenizerError
from .reader import GGUFFile
from .writing import atomic_write_text

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> how the original tokenizer.json splits text before BPE
_PRE_STARCODER = ("smollm", "starcoder", "refact", "codeshell")
_PRE_GPT2 = ("gpt-2", "gpt2", "phi-2", "jina-es", "jina-de")
_PRE_LLAMA3 = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe")
_PRE_QWEN2 = ("qwen2", "deepseek-r1-qwen")
SUPPORTED_PRE_TOKENIZERS = _PRE_STARCODER + _PRE_GPT2 + _PRE_LLAMA3 + _PRE_QWEN2
_ADDED_TYPES = (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED)  # added tokens; user ones not special
_ID_KEYS = {  # special id -> metadata key
    "bos": Keys.Tokenizer.BOS_ID,
    "eos": Keys.Tokenizer.EOS_ID,
    "eot": Keys.Tokenizer.EOT_ID,
    "eom": Keys.Tokenizer.EOM_ID,
    "unk": Keys.Tokenizer.UNK_ID,
    "pad": Keys.Tokenizer.PAD_ID,
}


@dataclass(frozen=True)
class GGUFTokenizer:
    """The rebuilt tokenizer and the Hugging Face files that describe it."""

    backend: Any  # tokenizers.Tokenizer
    config: dict[str, Any]  # tokenizer_config.json
    generation: dict[str, Any]  # generation_config.json: bos / eos (/ pad) ids

    def write(self, out: Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and generation_config.json into ``out``."""
        atomic_write_text(out / "tokenizer.json", self.backend.to_str(pretty=False))
        atomic_write_text(out / "tokenizer_config.json", json.dumps(self.config, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(out / "generation_config.json", json.dumps(self.generation, indent=2) + "\n")

    def tokenizer(self) -> Tokenizer:
        """The project's Tokenizer, the same as ``Tokenizer.from_dir`` gives for the written files."""
        eos = self.generation["eos_token_id"]
        return Tokenizer(
            self.backend,
            bos_token=self.config["bos_token"],
            eos_token=self.config["eos_token"],
            unk_token=self.config["unk_token"],
            pad_token=self.config["pad_token"],
            eos_token_ids=eos if isinstance(eos, list) else [e for e in (eos,) if e is not None],
            chat_template=self.config.get("chat_template"),
            add_bos_token=self.config["add_bos_token"],
            add_eos_token=self.config["add_eos_token"],
        )


def _split_merge(merge: str, vocab: dict[str, int], name: str) -> tuple[str, str]:
    left, sep, right = merge.partition(" ")
    if sep and left in vocab and right in vocab:
        return left, right
    for i in range(1, len(merge) - 1):  # a token may contain a space: find the split that works
        if merge[i] == " " and merge[:i] in vocab and merge[i + 1 :] in vocab:
            return merge[:i], merge[i + 1 :]
    raise GGUFTokenizerError(f"{name}: merge {merge!r} names tokens missing from the vocabulary; the GGUF is corrupt")


def _special_ids(meta: GGUFFile, n_vocab: int) -> dict[str, int | None]:
    """Special token ids; an id outside the vocabulary (some exporters write -1 for none) counts as none."""
    ids = {}
    for what, key in _ID_KEYS.items():
        v = meta.get_int(key, None, lo=-(2**63), hi=2**64 - 1)
        ids[what] = v if v is not None and 0 <= v < n_vocab else None
    return ids


def _pre_tokenizer(meta: GGUFFile, pre: str):
    """(pre-tokenizer, normalizer, ignore_merges) reproducing the original tokenizer.json's splitting."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    if pre in _PRE_STARCODER:
        digits = pre_tokenizers.Digits(individual_digits=True)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        return pre_tokenizers.Sequence([digits, byte_level]), None, False
    if pre in _PRE_GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True), None, False
    if pre in _PRE_LLAMA3 or pre in _PRE_QWEN2:
        pattern = _LLAMA3_SPLIT if pre in _PRE_LLAMA3 else _QWEN2_SPLIT
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
        normalizer = normalizers.NFC() if pre in _PRE_QWEN2 else None
        return pre_tokenizers.Sequence([split, byte_level]), normalizer, pre in _PRE_LLAMA3
    raise GGUFTokenizerError(
        f"{meta.name}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not known, so token ids "
        f"could differ from the original's; known: {', '.join(SUPPORTED_PRE_TOKENIZERS)}. "
        "Convert the original Hugging Face checkpoint with its tokenizer.json instead"
    )


def _post_processor(tokens: list[str], bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool):
    from tokenizers import processors

    byte_level = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    bos_id = bos_id if add_bos else None
    eos_id = eos_id if add_eos else None
    if bos_id is None and eos_id is None:
        return byte_level
    single, pair, sp = "$A:0", "$A:0 $B:1", []
    if bos_id is not None:
        single, pair = f"{tokens[bos_id]}:0 {single}", f"{tokens[bos_id]}:0 $A:0 {tokens[bos_id]}:1 $B:1"
        sp.append((tokens[bos_id], bos_id))
    if eos_id is not None:
        single, pair = f"{single} {tokens[eos_id]}:0", f"{pair} {tokens[eos_id]}:1"
        if eos_id != bos_id:
            sp.append((tokens[eos_id], eos_id))
    return processors.Sequence([byte_level, processors.TemplateProcessing(single=single, pair=pair, special_tokens=sp)])


def build_tokenizer(meta: GGUFFile) -> GGUFTokenizer:
    """The tokenizer of a GGUF (``gpt2`` byte-level BPE models only), every metadata value checked."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

    model = meta.get_str(Keys.Tokenizer.MODEL, None)
    if model is None:
        raise GGUFTokenizerError(
            f"{meta.name} has no tokenizer (tokenizer.ggml.model is missing); "
            "use a GGUF exported with its tokenizer, or a Hugging Face directory with tokenizer.json"
        )
    if model != "gpt2":
        raise GGUFTokenizerError(
            f"{meta.name}: tokenizer model {model!r} is not supported (only 'gpt2' byte-level BPE is); "
            "convert the original Hugging Face checkpoint with its tokenizer.json instead"
        )
    tokens: list[str] = meta.get_list(Keys.Tokenizer.LIST, str)
    types: list[int] = meta.get_list(Keys.Tokenizer.TOKEN_TYPE, int, None) or [TokenType.NORMAL] * len(tokens)
    if not tokens or len(types) != len(tokens):
        raise GGUFTokenizerError(
            f"{meta.name}: the vocabulary has {len(tokens)} tokens and {len(types)} token types; the GGUF is corrupt"
        )
    merges_raw: list[str] = meta.get_list(Keys.Tokenizer.MERGES, str, [])
    pre_tok, normalizer, ignore_merges = _pre_tokenizer(meta, meta.get_str(Keys.Tokenizer.PRE, "gpt-2"))

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    merges = [_split_merge(m, vocab, meta.name) for m in merges_raw]
    ids = _special_ids(meta, len(tokens))
    add_bos = meta.get_bool(Keys.Tokenizer.ADD_BOS, False)
    add_eos = meta.get_bool(Keys.Tokenizer.ADD_EOS, False)
    eos_ids = list(dict.fromkeys(i for i in (ids["eos"], ids["eot"], ids["eom"]) if i is not None))
    added = [(i, t, ty != TokenType.USER_DEFINED) for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
             if ty in _ADDED_TYPES and vocab.get(t) == i]  # fmt: skip
    try:
        tk = HFTokenizer(
            models.BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                unk_token=None,
                fuse_unk=False,
                byte_fallback=False,
                ignore_merges=ignore_merges,
            )  # fmt: skip
        )
        if normalizer is not None:
            tk.normalizer = normalizer
        tk.pre_tokenizer = pre_tok
        tk.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        tk.add_tokens([AddedToken(t, special=sp, normalized=False, lstrip=False, rstrip=False) for _, t, sp in added])
        tk.post_processor = _post_processor(tokens, ids["bos"], eos_ids[0] if eos_ids else None, add_bos, add_eos)
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise GGUFTokenizerError(f"{meta.name}: the tokenizer cannot be rebuilt ({e}); the GGUF is corrupt") from e
    # AddedToken ids come from the vocabulary when the content is in it: check nothing was appended
    if tk.get_vocab_size(with_added_tokens=True) != len(vocab):
        raise GGUFTokenizerError(f"{meta.name}: added tokens do not match the vocabulary; the GGUF is inconsistent")

    def tok(i: int | None) -> str | None:
        return tokens[i] if i is not None else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": False,
        "bos_token": tok(ids["bos"]),
        "eos_token": tok(eos_ids[0]) if eos_ids else None,
        "unk_token": tok(ids["unk"]),
        "pad_token": tok(ids["pad"]),
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get_int(f"{meta.get('general.architecture')}.context_length", 2048),
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": sp,
            }  # fmt: skip
            for i, t, sp in added
        },
    }
    chat_template = _chat_template(meta)
    if chat_template:
        config["chat_template"] = chat_template
    generation = {"bos_token_id": ids["bos"], "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None)}
    if ids["pad"] is not None:
        generation["pad_token_id"] = ids["pad"]
    return GGUFTokenizer(tk, config, generation)


def _chat_template(meta: GGUFFile) -> str | list[dict[str, str]] | None:
    """``tokenizer.chat_template``, with any named templates as Hugging Face's list of {name, template}."""
    default = meta.get_str(Keys.Tokenizer.CHAT_TEMPLATE, None)
    prefix = Keys.Tokenizer.CHAT_TEMPLATE + "."
    named = {k.removeprefix(prefix): meta.get_str(k) for k in meta.metadata if k.startswith(prefix)}
    if not named:
        return default
    return ([{"name": "default", "template": default}] if default else []) + [
        {"name": k, "template": v} for k, v in named.items()
    ]
