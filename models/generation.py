"""One generation, as events: the single path that `Model.complete`/`events`, the CLI, the chat
REPL and the server share.

Token ids come from `Llama.generate`; each becomes a `TextEvent` holding the text it completed
(the streaming detokenizer never splits a character; the stop matcher holds back what could
still begin a stop string). The last event carries the finish reason: "stop" (an end token or
a stop string), "length" (max_tokens reached) or, seen in `model.stats` when the consumer
closes the stream early, "cancelled".
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .llama import Llama
from .sampling import Sampling
from .settings import GenerationSettings
from .stop import StopMatcher


@dataclass
class TextEvent:
    """New text (may be "") and the token ids generated since the previous event; the last event
    of a generation has its finish_reason."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class Completion:
    """A finished generation: its text (no end token, no stop string), the ids generated (the end
    token excluded), why it ended, and its timings."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int = 0  # tokens generated, an end token included
    cached_tokens: int = 0  # prompt tokens reused from the KV cache of the previous call
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: float = 0.0
    seed: int = 0  # the sampler's seed (drawn at random when none was given)

    @property
    def decode_tokens_per_s(self) -> float:
        n = self.completion_tokens - 1  # the first token comes from the prefill
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (`shaderbay generate --json`)."""
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "seed": self.seed,
            "timings": {
                "prefill_s": self.prefill_s,
                "decode_s": self.decode_s,
                "first_token_s": self.first_token_s,
                "decode_tokens_per_s": self.decode_tokens_per_s,
            },
        }


def sampling_of(settings: GenerationSettings) -> Sampling:
    return Sampling(settings.temperature, settings.top_k, settings.top_p, settings.repetition_penalty, settings.min_p)


def run(
    llama: Llama,
    tokenizer: Any,
    ids: list[int],
    settings: GenerationSettings,
    end_ids: frozenset[int],
) -> Iterator[TextEvent]:
    """The events of one generation of `ids` (already checked to fit the context). llama.stats gets
    the finish reason: "cancelled" if the consumer closes the stream before the last event."""
    ends = frozenset() if settings.ignore_eos else end_ids
    seed = settings.seed if settings.seed is not None else secrets.randbits(32)
    tokens = llama.generate(ids, settings.max_tokens, sampling_of(settings), seed, ends)
    decoder = tokenizer.stream_decoder() if tokenizer is not None else None
    stops = StopMatcher(settings.stop)
    pending: list[int] = []
    reason = "length"
    text, hit = "", False
    try:
        for token in tokens:
            if token in ends:
                reason = "stop"
                break
            pending.append(token)
            text, hit = stops.push(decoder.push(token) if decoder is not None else "")
            if hit:
                reason = "stop"
                break
            yield TextEvent(text, pending)
            pending, text = [], ""
        tokens.close()  # a stop ends the device's run-ahead before the last event goes out
        if not hit and decoder is not None:
            tail, hit = stops.push(decoder.flush())
            text = tail if hit else tail + stops.flush()
            reason = "stop" if hit else reason
        llama.stats.finish_reason = reason
        yield TextEvent(text, pending, reason)
    finally:
        tokens.close()
        if llama.stats.finish_reason is None:
            llama.stats.finish_reason = "cancelled"


def collect(events: Iterator[TextEvent], llama: Llama) -> Completion:
    """The Completion of a whole generation's events."""
    texts: list[str] = []
    ids: list[int] = []
    reason = "cancelled"
    for event in events:
        texts.append(event.text)
        ids += event.token_ids
        reason = event.finish_reason or reason
    s = llama.stats
    return Completion(
        "".join(texts), ids, reason, s.prompt_tokens, s.generated_tokens, s.cached_tokens,
        s.prefill_s, s.decode_s, s.first_token_s, s.seed,
    )  # fmt: skip
