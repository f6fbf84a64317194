"""The OpenAI-compatible ASGI app: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics.

The routes only translate: a request body becomes model requests (one per choice, checked here so
that a bad one is a 400 before it reaches the engine) for the worker, which decodes them with every
other request's together, and the worker's events become OpenAI responses or server-sent-event chunks.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Header, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from . import adapter, errors, responses
from .metrics import CountRequests, Metrics
from .schemas import ChatRequest, CompletionRequest
from .worker import DEFAULT_STREAM_INTERVAL, Worker

DONE = "[DONE]"


@dataclass
class _Result:
    """What a non-streamed request collects, per choice."""

    texts: list[list[str]]
    finish: list[str | None]
    logprobs: list[tuple[adapter.TokenLogprob, ...] | None]
    prompt_tokens: int = 0
    completion_tokens: int = 0


def create_app(
    model: Any,
    *,
    max_streams: int = 64,
    max_queue: int = 256,
    api_key: str | None = None,
    stream_interval: float = DEFAULT_STREAM_INTERVAL,
) -> FastAPI:
    """The app serving `model` (which the caller keeps and closes; loaded with streams=max_streams, its
    KV pool holds them) through one worker thread: at most `max_streams` sequences decoded together,
    `max_queue` more waiting; a stream sends a chunk at most every `stream_interval` seconds after its
    first, longer with many streams (handover.Pace; tokens made faster share one)."""
    metrics = Metrics()
    worker: Worker | None = None
    model_id = model.name or "shaderbay"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal worker
        worker = Worker(model, max_streams, max_queue, stream_interval, metrics)
        yield
        worker.close()

    app = FastAPI(title="shaderbay", lifespan=lifespan)
    errors.install(app)
    endpoints = frozenset(("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"))
    app.add_middleware(CountRequests, metrics=metrics, endpoints=endpoints)

    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request
    async def authorize(authorization: str | None = Header(None)) -> None:
        if api_key is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise errors.ApiError(
                401, "missing or wrong API key: send Authorization: Bearer KEY", code="invalid_api_key"
            )

    def check_model(name: str) -> None:
        if name != model_id:
            raise errors.ApiError(
                404, f"model {name!r} is not served here: use {model_id!r} (see /v1/models)", "model", "model_not_found"
            )

    async def batches(requests: list[adapter.Prepared], started: float) -> AsyncIterator[tuple[int, list[Any]]]:
        """(choice index, items) of the choices, decoded together, as they come, counting tokens and the
        time to the first one."""
        first = True
        async for batch in worker.run(requests):
            index, items = batch[0][0], []
            for i, item in batch:
                if isinstance(item, adapter.TextEvent):
                    if first:
                        metrics.time_to_first_token.observe(time.perf_counter() - started)
                        first = False
                    metrics.completion_tokens.inc(len(item.token_ids))
                elif isinstance(item, adapter.Prompt):
                    metrics.prompt_tokens.inc(item.tokens)
                if i != index:  # one choice's items at a time
                    yield index, items
                    index, items = i, []
                items.append(item)
            yield index, items

    async def answer(body: ChatRequest | CompletionRequest, kind: type[responses.Chat] | type[responses.Completion]):
        try:
            return await generate(body, kind)
        except Exception as exc:
            raise errors.as_api_error(exc) from exc

    async def generate(body: ChatRequest | CompletionRequest, kind: type[responses.Chat] | type[responses.Completion]):
        started = time.perf_counter()
        check_model(body.model)
        body.check_supported()
        requests = [adapter.prepare(model, r) for r in body.model_requests()]
        stream = batches(requests, started)
        if body.stream:
            head = await _until_first_text(stream)  # a refused request is still a plain 400 here
            scored = requests[0].top_logprobs is not None
            return EventSourceResponse(_chunks(head, stream, kind, model_id, body.include_usage, scored), ping=15)
        n = len(requests)
        result = _Result([[] for _ in range(n)], [None] * n, [None] * n)
        async for index, batch in stream:
            for item in batch:
                _collect(result, index, item)
        choices = [kind.choice(i, "".join(result.texts[i]), result.finish[i], result.logprobs[i]) for i in range(n)]
        usage = responses.usage(result.prompt_tokens, result.completion_tokens)
        return responses.envelope(kind, responses.new_id(kind), model_id, choices=choices, usage=usage)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatRequest):
        return await answer(body, responses.Chat)

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest):
        return await answer(body, responses.Completion)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        card = {"id": model_id, "object": "model", "created": 0, "owned_by": "shaderbay"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": model_id,
            "backend": model.backend.name,
            "waiting": worker.waiting,
            "batch_invariant": model.llama.batch_invariant,
        }

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _collect(result: _Result, index: int, item: Any) -> None:
    if isinstance(item, adapter.Prompt):
        if index == 0:  # every choice has the same prompt: counted once
            result.prompt_tokens = item.tokens
    elif isinstance(item, adapter.TextEvent):
        result.texts[index].append(item.text)
        result.completion_tokens += len(item.token_ids)
        result.finish[index] = item.finish_reason
    elif isinstance(item, adapter.Logprobs):
        result.logprobs[index] = item.tokens


async def _until_first_text(stream: AsyncIterator[tuple[int, list[Any]]]) -> list[tuple[int, list[Any]]]:
    """The stream's batches up to the one with its first text event (prompt problems surface before)."""
    head = []
    async for index, batch in stream:
        head.append((index, batch))
        if any(isinstance(item, adapter.TextEvent) for item in batch):
            break
    return head


async def _chunks(
    head: list[tuple[int, list[Any]]],
    stream: AsyncIterator[tuple[int, list[Any]]],
    kind: type[responses.Chat] | type[responses.Completion],
    model_id: str,
    include_usage: bool,
    scored: bool,
) -> AsyncIterator[str]:
    """Server-sent events: the choices' chunks (one a batch of text events), the usage chunk if asked
    for, then [DONE].

    With log-probabilities asked for (`scored`), each choice's text streams as it is made and its
    tokens' log-probabilities follow in one more chunk of that choice (an empty delta), which carries
    its finish_reason (the choice's end for a client). OpenAI puts each chunk's own tokens in it, but
    that needs every step's logits, which the engine never reads back (it samples on the device, steps
    ahead of the host), and scoring a running sequence needs a slot of its own, which may not be
    free: so they come from the one pass the non-streamed answer makes, once the choice has finished
    (adapter.token_logprobs), and equal its values. The chunk schema allows it, and clients that
    accumulate a stream (the `openai` client's) extend `logprobs.content` chunk by chunk."""
    # every chunk of a stream has the same id, object, time and model: written out once
    envelope = responses.envelope(kind, responses.new_id(kind), model_id, object=kind.chunk_object)
    opening = json.dumps(envelope, ensure_ascii=False)[:-1] + ', "choices": '

    def chunk(choices: list[dict], **fields: Any) -> str:
        rest = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items())
        return f"{opening}{json.dumps(choices, ensure_ascii=False)}{rest}}}"

    prompt_tokens = completion_tokens = 0
    opened: set[int] = set()
    finishes: dict[int, str | None] = {}  # of the scored choices: sent with their log-probabilities

    async def all_batches():
        for batch in head:
            yield batch
        async for batch in stream:
            yield batch

    try:
        async for index, batch in all_batches():
            texts, finish, logprobs = [], None, None
            for item in batch:
                if isinstance(item, adapter.Prompt):
                    prompt_tokens = item.tokens
                elif isinstance(item, adapter.TextEvent):
                    completion_tokens += len(item.token_ids)
                    texts.append(item.text)
                    finish = item.finish_reason
                elif isinstance(item, adapter.Logprobs):
                    logprobs = item.tokens
            if scored and finish is not None:
                finishes[index], finish = finish, None
            events = []
            if index not in opened and texts:
                opened.add(index)
                if (first := kind.opening(index)) is not None:
                    events.append(chunk([first]))
            if texts:  # tokens that made no text yet (a model without a tokenizer) still show the stream moving
                events.append(chunk([kind.delta(index, "".join(texts), finish)]))
            if logprobs is not None:
                events.append(chunk([kind.delta(index, "", finishes.pop(index, None), logprobs)]))
            if events:  # one write for the batch: the role chunk goes out with the first text
                yield b"".join(ServerSentEvent(event).encode() for event in events)
    except Exception as exc:  # noqa: BLE001 - the response has started: the error goes in the stream
        failure = errors.as_api_error(exc)
        yield json.dumps(errors.error_body(failure.status, failure.message, failure.param, failure.code))
        return
    if include_usage:
        yield chunk([], usage=responses.usage(prompt_tokens, completion_tokens))
    yield DONE
