"""The one place the front-ends call into a model: a request in, the model's text events out.

The `llm` plugin goes through `events()`, which runs `Model.events`; the HTTP server through
`prepare()`, the same request as the engine takes it, stepped by its worker thread with others (see
worker.py): both give the same tokens for the same request as the CLI and the Python API do.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from shaderbay.errors import ContextLengthExceeded
from shaderbay.models.generation import TextEvent
from shaderbay.models.requests import Request as EngineRequest
from shaderbay.models.settings import GenerationSettings

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


@dataclass(frozen=True)
class Prepared:
    """A request checked and ready for the engine (`prepare`), for a caller that steps it itself."""

    request: EngineRequest
    settings: GenerationSettings
    top_logprobs: int | None


def _arguments(model: Any, request: Request) -> tuple[list[int], int, dict[str, Any]]:
    """The prompt's ids, max_tokens (None: up to the end of the context) and the options given."""
    ids = model.prompt_ids(request.prompt)
    max_tokens = model.max_context - len(ids) if request.max_tokens is None else request.max_tokens
    if max_tokens < 1:
        raise ContextLengthExceeded(len(ids) + 1, model.max_context)
    return ids, max_tokens, {k: v for k, v in request.options.items() if v is not None}


def prepare(model: Any, request: Request) -> Prepared:
    """`request` as the engine takes it (the same as `events` runs), or a typed error saying what to change."""
    ids, max_tokens, options = _arguments(model, request)
    engine_request, settings = model.request(ids, max_tokens, **options)
    return Prepared(engine_request, settings, request.top_logprobs)


def events(model: Any, request: Request) -> Iterator[Prompt | TextEvent | Logprobs]:
    """Run `request` on `model`: the prompt's size (once the first token is there), then text events
    until one has a finish reason, then (if asked for) the log-probabilities. Closing the iterator
    early ends the generation."""
    ids, max_tokens, options = _arguments(model, request)
    text_events = model.events(ids, max_tokens=max_tokens, **options)  # checks the options, or raises
    try:
        first = next(text_events)
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
