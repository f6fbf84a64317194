"""Tokenizer: a Hugging Face ``tokenizer.json`` (via the ``tokenizers`` library) plus its special
tokens and chat template, rendered with Jinja2 exactly as ``transformers`` renders it.

    tok = Tokenizer.from_dir(model_dir)
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hi"}]))
    stream = tok.stream_decoder()
    for token_id in generated:
        print(stream.push(token_id), end="")
    print(stream.flush())
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from shaderbay.errors import TokenizerError

__all__ = ["Tokenizer", "StreamDecoder", "ChatTemplateError"]


class ChatTemplateError(TokenizerError):
    """The chat template failed to render or refused the messages (``raise_exception`` in the template)."""


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{str(path)!r} is not valid JSON ({e}); re-create the model directory") from e
    return data if isinstance(data, dict) else {}


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list | tuple):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class Tokenizer:
    """Text <-> token ids, special tokens and chat template of one model."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        eos_token_ids: Iterable[int] = (),
        bos_token_id: int | None = None,
        pad_token_id: int | None = None,
        chat_template: str | list[dict[str, str]] | None = None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        clean_up_tokenization_spaces: bool = False,
        additional_special_tokens: Sequence[str] = (),
    ):
        self._tk = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.unk_token = unk_token
        self.pad_token = pad_token
        self.additional_special_tokens = list(additional_special_tokens)

        def tid(tok: str | None) -> int | None:
            return tokenizer.token_to_id(tok) if tok is not None else None

        self.bos_token_id: int | None = bos_token_id if bos_token_id is not None else tid(bos_token)
        if self.bos_token is None and self.bos_token_id is not None:
            self.bos_token = tokenizer.id_to_token(self.bos_token_id)
        eos: list[int] = []
        for i in [tid(eos_token), *eos_token_ids]:
            if i is not None and i not in eos:
                eos.append(i)
        self.eos_token_ids: tuple[int, ...] = tuple(eos)
        if self.eos_token is None and eos:
            self.eos_token = tokenizer.id_to_token(eos[0])
        self.pad_token_id: int | None = pad_token_id if pad_token_id is not None else tid(pad_token)
        self.chat_template = chat_template
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._compiled: dict[str, Any] = {}
        # Does the post-processor already add BOS/EOS when add_special_tokens=True?
        probe = tokenizer.encode("", add_special_tokens=True).ids
        self._prepend_bos = add_bos_token and self.bos_token_id is not None and self.bos_token_id not in probe
        self._append_eos = add_eos_token and bool(eos) and eos[0] not in probe

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load ``tokenizer.json`` and the special tokens / chat template of a model directory."""
        from tokenizers import Tokenizer as HFTokenizer

        d = Path(path)
        tj = d / "tokenizer.json"
        if not d.is_dir():
            raise TokenizerError(
                f"model directory {str(d)!r} not found; pass a directory made by `shaderbay convert` "
                "or a Hugging Face model directory"
            )
        if not tj.is_file():
            raise TokenizerError(
                f"{str(d)!r} has no tokenizer.json; convert the model with `shaderbay convert MODEL.gguf OUT_DIR` "
                "or download the model's tokenizer.json into the directory"
            )
        try:
            tk = HFTokenizer.from_file(str(tj))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise TokenizerError(f"{str(tj)!r} could not be loaded ({e}); re-create it") from e

        tc = _read_json(d / "tokenizer_config.json")
        gc = _read_json(d / "generation_config.json")
        cfg = _read_json(d / "config.json")

        chat_template = tc.get("chat_template")
        if chat_template is None and (d / "chat_template.jinja").is_file():
            chat_template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        if chat_template is None:
            chat_template = _read_json(d / "chat_template.json").get("chat_template")

        eos_ids = _as_id_list(gc.get("eos_token_id")) or _as_id_list(cfg.get("eos_token_id"))
        bos_ids = _as_id_list(gc.get("bos_token_id")) or _as_id_list(cfg.get("bos_token_id"))
        pad_ids = _as_id_list(gc.get("pad_token_id")) or _as_id_list(cfg.get("pad_token_id"))
        bos_token = _token_content(tc.get("bos_token"))
        extra = [t for t in (_token_content(x) for x in tc.get("additional_special_tokens") or []) if t]
        return cls(
            tk,
            bos_token=bos_token,
            eos_token=_token_content(tc.get("eos_token")),
            unk_token=_token_content(tc.get("unk_token")),
            pad_token=_token_content(tc.get("pad_token")),
            eos_token_ids=eos_ids,
            bos_token_id=None if bos_token is not None or not bos_ids else bos_ids[0],
            pad_token_id=pad_ids[0] if pad_ids and tc.get("pad_token") is None else None,
            chat_template=chat_template,
            add_bos_token=bool(tc.get("add_bos_token", False)),
            add_eos_token=bool(tc.get("add_eos_token", False)),
            clean_up_tokenization_spaces=bool(tc.get("clean_up_tokenization_spaces", False)),
            additional_special_tokens=extra,
        )

    # -- vocabulary ------------------------------------------------------------------------------

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tk

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(int(token_id))

    @property
    def eos_token_id(self) -> int | None:
        """The main end-of-sequence id (``eos_token_ids`` lists every id that ends generation)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    def is_eos(self, token_id: int) -> bool:
        return int(token_id) in self.eos_token_ids

    # -- encoding / decoding ---------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (``<|im_start|>``) are recognised;
        ``add_special_tokens=True`` also adds BOS/EOS as the model's tokenizer config asks."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a str, not {type(text).__name__}; decode bytes first")
        ids = self._tk.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens:
            if self._prepend_bos:
                ids = [self.bos_token_id, *ids]
            if self._append_eos:
                ids = [*ids, self.eos_token_ids[0]]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (special tokens included unless ``skip_special_tokens``)."""
        id_list = [int(i) for i in ids]
        n = self.vocab_size
        bad = [i for i in id_list if not 0 <= i < n]
        if bad:
            raise TokenizerError(
                f"token id {bad[0]} is outside the vocabulary (0..{n - 1}); the ids are not this model's"
            )
        return self.clean_up(self._tk.decode(id_list, skip_special_tokens=skip_special_tokens))

    def clean_up(self, text: str) -> str:
        """transformers' clean_up_tokenization (" ." -> "."...), where the tokenizer config asks for it."""
        if self.clean_up_tokenization_spaces:
            for a, b in _CLEANUPS:
                text = text.replace(a, b)
        return text

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """An incremental decoder: ``push(token_id)`` returns the new text (never half a character)."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # -- chat ----------------------------------------------------------------------------------------

    def _template_source(self, name: str | None) -> str:
        t = self.chat_template
        if isinstance(t, list):
            by_name = {e.get("name"): e.get("template") for e in t if isinstance(e, Mapping)}
            key = name or "default"
            if key not in by_name:
                raise ChatTemplateError(
                    f"no chat template named {key!r}; this model has {', '.join(map(str, by_name)) or 'none'}"
                )
            t = by_name[key]
        elif name not in (None, "default"):
            raise ChatTemplateError(f"no chat template named {name!r}; this model has only its default template")
        if not t:
            raise ChatTemplateError(
                "this model has no chat template (tokenizer_config.json lacks chat_template); "
                "use plain completion with encode(), or add a chat_template to tokenizer_config.json"
            )
        return t

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: Sequence[Any] | None = None,
        documents: Sequence[Any] | None = None,
        template_name: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with the model's chat
        template, as Hugging Face ``apply_chat_template(..., tokenize=False)`` does."""
        if isinstance(messages, Mapping) or isinstance(messages, str):
            raise ChatTemplateError('messages must be a list of {"role": ..., "content": ...} dicts')
        msgs = [dict(m) if isinstance(m, Mapping) else m for m in messages]
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m:
                raise ChatTemplateError(f'message {i} is not a {{"role": ..., "content": ...}} dict: {m!r}')
        source = self._template_source(template_name)
        template = self._compiled.get(source)
        if template is None:
            template = self._compiled[source] = _compile_template(source)
        context: dict[str, Any] = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
            "additional_special_tokens": self.additional_special_tokens,
        }
        context = {k: v for k, v in context.items() if v is not None}
        context.update(kwargs)
        import jinja2

        try:
            return template.render(
                messages=msgs,
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **context,
            )
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template failed: {e}; check the messages' roles and order") from e

    def turn_end_ids(self) -> tuple[int, ...]:
        """The special token the chat template closes an assistant's message with (<|im_end|>,
        <|eot_id|>, <end_of_turn>...), found by rendering one: generation ends there too."""
        if not self.chat_template:
            return ()
        mark = "Shaderbay"
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": mark}]
        try:
            text = self.apply_chat_template(messages, add_generation_prompt=False)
        except ChatTemplateError:
            return ()
        after = text.split(mark, 1)[1] if mark in text else ""
        ids = self._tk.encode(after, add_special_tokens=False).ids
        added = self._tk.get_added_tokens_decoder()
        return (ids[0],) if ids and ids[0] in added and added[ids[0]].special else ()

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """``encode(apply_chat_template(messages))``, with no special tokens added (the template has them)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), add_special_tokens=False)


def _compile_template(source: str):
    import jinja2
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        # transformers' `{% generation %}...{% endgeneration %}` marks assistant text; render it as is
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise ChatTemplateError(f"the chat template refused the messages: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the model's chat template is not valid Jinja ({e}); fix chat_template") from e


class StreamDecoder:
    """Turns token ids arriving one by one into text pieces, never splitting a UTF-8 character:
    `tokenizers.decoders.DecodeStream` (a piece is held back while it ends in an unfinished
    character), plus ``flush()`` for what is still held at the end (an unfinished character
    becomes U+FFFD, as ``decode`` makes it) and ``text``, everything emitted so far. The
    concatenated pieces equal ``tokenizer.decode(all_ids)`` (checked on the golden continuations
    and random ids); where the tokenizer cleans up spaces, each piece is cleaned on its own.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        from tokenizers.decoders import DecodeStream

        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self.ids: list[int] = []
        self._emitted = 0  # the ids whose text has been emitted
        self.text = ""  # everything emitted so far

    def push(self, token_id: int) -> str:
        """Add one token id; return the newly completed text (possibly empty)."""
        self.ids.append(int(token_id))
        piece = self._stream.step(self._tok.backend, int(token_id))
        if not piece:
            return ""
        self._emitted = len(self.ids)
        piece = self._tok.clean_up(piece)
        self.text += piece
        return piece

    def feed(self, ids: Iterable[int]) -> Iterator[str]:
        """Push each id, yielding the non-empty pieces; call ``flush()`` at the end."""
        for i in ids:
            piece = self.push(i)
            if piece:
                yield piece

    def flush(self) -> str:
        """Return the text still held back (an unfinished character becomes U+FFFD)."""
        if self._emitted == len(self.ids):
            return ""
        full = self._tok.decode(self.ids, skip_special_tokens=self._skip)
        piece = full[len(self.text) :] if full.startswith(self.text) else "\ufffd"
        self._emitted = len(self.ids)
        self.text += piece
        return piece
