"""OpenAI's response and stream-chunk bodies for chat completions and (legacy) completions."""

from __future__ import annotations

import time
import uuid
from typing import Any

from .adapter import TokenLogprob


class Chat:
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    @staticmethod
    def choice(index: int, text: str, finish: str | None, logprobs: tuple[TokenLogprob, ...] | None) -> dict:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": Chat.logprobs(logprobs),
            "finish_reason": finish,
        }

    @staticmethod
    def opening(index: int) -> dict | None:
        """The chunk that starts a choice: the assistant's role, as OpenAI sends it."""
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    @staticmethod
    def delta(index: int, text: str, finish: str | None, logprobs: tuple[TokenLogprob, ...] | None = None) -> dict:
        delta = {"content": text} if text else {}
        return {"index": index, "delta": delta, "logprobs": Chat.logprobs(logprobs), "finish_reason": finish}

    @staticmethod
    def logprobs(tokens: tuple[TokenLogprob, ...] | None) -> dict | None:
        return None if tokens is None else {"content": [_chat_logprob(t) for t in tokens]}


class Completion:
    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    @staticmethod
    def choice(index: int, text: str, finish: str | None, logprobs: tuple[TokenLogprob, ...] | None) -> dict:
        return {
            "index": index,
            "text": text,
            "logprobs": Completion.logprobs(logprobs),
            "finish_reason": finish,
        }

    @staticmethod
    def opening(index: int) -> dict | None:
        return None

    @staticmethod
    def delta(index: int, text: str, finish: str | None, logprobs: tuple[TokenLogprob, ...] | None = None) -> dict:
        return {"index": index, "text": text, "logprobs": Completion.logprobs(logprobs), "finish_reason": finish}

    @staticmethod
    def logprobs(tokens: tuple[TokenLogprob, ...] | None) -> dict | None:
        return None if tokens is None else _completion_logprobs(tokens)


def envelope(kind: type[Chat] | type[Completion], ident: str, model: str, **fields: Any) -> dict:
    return {
        "id": ident,
        "object": fields.pop("object", kind.object),
        "created": int(time.time()),
        "model": model,
        **fields,
    }


def new_id(kind: type[Chat] | type[Completion]) -> str:
    return kind.id_prefix + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _chat_logprob(t: TokenLogprob) -> dict:
    return {
        "token": t.token,
        "logprob": t.logprob,
        "bytes": _bytes(t.token),
        "top_logprobs": [{"token": s, "logprob": p, "bytes": _bytes(s)} for s, p in t.top],
    }


def _completion_logprobs(tokens: tuple[TokenLogprob, ...]) -> dict:
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": offsets,
    }
