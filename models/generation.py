"""Generations as text: the layer over the engine's token events (models/engine.py) that
`Model.complete`/`events`/`generate_batch`, the CLI, the chat REPL and the server share.

Each sequence's tokens become `TextEvent`s holding the text they completed (the streaming
detokenizer never splits a character; the stop matcher holds back what could still begin a stop
string, and a stop string found ends the sequence in the engine). The last event carries the
finish reason, "stop" (an end token or a stop string), "length" (max_tokens reached) or
"cancelled", and the sequence's timings (`stats`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .requests import Event
from .sampling import Sampling, Stats
from .settings import GenerationSettings
from .stop import StopMatcher


@dataclass
class TextEvent:
    """New text (may be "") and the token ids generated since the previous event; the last event
    of a generation has its finish_reason and the generation's stats."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stats: Stats | None = None


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


class TextStream:
    """One sequence's token events turned into text events. `push` returns the text events an
    engine event makes (none, one, or a piece and then the last); `done` once the last is out, which
    may come before the engine's (a stop string: the caller then cancels the sequence)."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], ends: frozenset[int], stats: Stats):
        self.decoder = tokenizer.stream_decoder() if tokenizer is not None else None
        self.stops = StopMatcher(stops)
        self.ends = ends
        self.stats = stats
        self.done = False

    def push(self, event: Event) -> list[TextEvent]:
        out = []
        token = event.token
        if token is not None and token not in self.ends:
            text, hit = self.stops.push(self.decoder.push(token) if self.decoder is not None else "")
            if hit:
                return [self._last(text, [token], "stop")]
            out.append(TextEvent(text, [token]))
        if event.finish_reason is not None:
            reason = "stop" if token is not None and token in self.ends else event.finish_reason
            text, hit = self.stops.push(self.decoder.flush()) if self.decoder is not None else ("", False)
            out.append(self._last(text if hit else text + self.stops.flush(), [], "stop" if hit else reason))
        return out

    def _last(self, text: str, ids: list[int], reason: str) -> TextEvent:
        self.done = True
        self.stats.finish_reason = reason
        return TextEvent(text, ids, reason, self.stats)


def collect(events: Iterator[TextEvent]) -> Completion:
    """The Completion of a whole generation's events."""
    texts: list[str] = []
    ids: list[int] = []
    reason, s = "cancelled", Stats()
    for event in events:
        texts.append(event.text)
        ids += event.token_ids
        reason = event.finish_reason or reason
        s = event.stats or s
    return Completion(
        "".join(texts), ids, reason, s.prompt_tokens, s.generated_tokens, s.cached_tokens,
        s.prefill_s, s.decode_s, s.first_token_s, s.seed,
    )  # fmt: skip
