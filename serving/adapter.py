"""The one place the front-ends call into a model: a request in, the model's text events out.

Both the HTTP server and the `llm` plugin go through `events()`, so they give the same tokens for
the same request as the CLI and the Python API do.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from shaderbay.errors import ModelError

# the sampling settings a front-end may pass through to the model
OPTIONS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "stop", "ignore_eos")


@dataclass(frozen=True)
class Request:
    """One generation: a text prompt, token ids, or chat messages, and the model's options."""

    prompt: str | Sequence[int] | Sequence[Mapping[str, Any]]
    max_tokens: int | None = None  # None: up to the end of the context
    options: Mapping[str, Any] = field(default_factory=dict)
    top_logprobs: int | None = None  # None: no log-probabilities; else the alternatives per token


@dataclass(frozen=True)
class TextEvent:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]  # the most likely tokens at this position, best first


@dataclass(frozen=True)
class Prompt:
    """The prompt's token count, the first item `events()` yields (just before the first text event)."""

    tokens: int


@dataclass(frozen=True)
class Logprobs:
    """The generated tokens' log-probabilities, the last item `events()` yields when asked for."""

    tokens: tuple[TokenLogprob, ...]


def prompt_ids(model: Any, prompt: str | Sequence[int] | Sequence[Mapping[str, Any]]) -> list[int]:
    """Token ids of a prompt: text through the tokenizer, messages through the chat template, ids as given."""
    if isinstance(prompt, str):
        return model.encode(prompt)
    if prompt and isinstance(prompt[0], Mapping):
        return model.encode_chat(prompt)
    return model.encode(prompt)


def events(model: Any, request: Request) -> Iterator[Prompt | TextEvent | Logprobs]:
    """Run `request` on `model`: the prompt's size (once the first token is there), then text events
    until one has a finish reason, then (if asked for) the log-probabilities. Closing the iterator
    early ends the generation."""
    ids = prompt_ids(model, request.prompt)
    max_tokens = model.max_context - len(ids) if request.max_tokens is None else request.max_tokens
    if max_tokens < 1:
        raise ModelError(f"the prompt has {len(ids)} tokens and fills the context of {model.max_context}: shorten it")
    options = {k: v for k, v in request.options.items() if v is not None}
    text_events = _model_events(model, ids, max_tokens, options)
    try:
        first = next(text_events)  # the model checks the prompt and options here
        yield Prompt(len(ids))
        generated: list[int] = []
        for event in itertools.chain((first,), text_events):
            generated.extend(event.token_ids)
            yield event
    finally:
        text_events.close()
    if request.top_logprobs is not None:
        yield Logprobs(token_logprobs(model, ids, generated, request.top_logprobs))


def token_logprobs(model: Any, prompt: list[int], generated: list[int], top: int) -> tuple[TokenLogprob, ...]:
    """Log-probabilities of the generated tokens under the model (no sampling settings applied),
    from one pass over prompt + generated tokens, with the `top` most likely tokens at each step."""
    if not generated:
        return ()
    logits = model.logits(prompt + generated[:-1], all_positions=True)[len(prompt) - 1 :].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    out = []
    for row, token in zip(logp, generated, strict=True):
        best = np.argsort(-row, kind="stable")[:top]
        alternatives = tuple((_piece(model, int(i)), float(row[i])) for i in best)
        out.append(TokenLogprob(_piece(model, token), float(row[token]), alternatives))
    return tuple(out)


def _piece(model: Any, token: int) -> str:
    return model.decode([token]) if model.tokenizer is not None else str(token)


def _model_events(model: Any, ids: list[int], max_tokens: int, options: dict[str, Any]) -> Iterator[TextEvent]:
    """Today's model API (token ids, no stop strings) wrapped into text events with a finish reason."""
    if options.pop("stop", None):
        raise ModelError("stop strings are not supported by this model API yet")
    options.pop("min_p", None)
    decoder = model.tokenizer.stream_decoder() if model.tokenizer is not None else None
    ends = set() if options.get("ignore_eos") else set(model.eos_token_ids)
    count = 0
    for token in model.tokens(ids, max_tokens, **options):
        count += 1
        if token in ends:
            yield TextEvent(decoder.flush() if decoder else "", (token,), "stop")
            return
        text = decoder.push(token) if decoder else ""
        if count == max_tokens:
            yield TextEvent(text + (decoder.flush() if decoder else ""), (token,), "length")
            return
        yield TextEvent(text, (token,))
