"""A conversation with a model: its messages, and the KV cache of its earlier turns.

    chat = model.new_chat(system="You are terse.")
    print(chat.send("Why is the sky blue?").text)
    for event in chat.stream("And at sunset?"):
        print(event.text, end="", flush=True)

Each turn renders the whole history with the chat template; the KV blocks of the previous turn
(its prompt and the reply) stay in the engine's prefix cache, so only the new turn's tokens are
computed, from the last whole block on (`Completion.cached_tokens` says how many were reused).
A reply cut short (the stream closed, Ctrl-C) stays in the history as far as it went.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from shaderbay.errors import ModelError

from .generation import Completion, TextEvent, collect
from .settings import GenerationSettings


class ChatModel(Protocol):
    """What a conversation needs of its model. Model is one; it makes chats (`Model.new_chat`), so
    this module names what it uses instead of importing model.py back."""

    name: str

    @property
    def has_chat_template(self) -> bool: ...

    def settings(self, **options: Any) -> GenerationSettings: ...

    def events(self, prompt: list[dict[str, str]], **options: Any) -> Iterator[TextEvent]: ...


class Chat:
    def __init__(self, model: ChatModel, system: str | None = None, **options: Any):
        if not model.has_chat_template:
            raise ModelError(f"{model.name or 'this model'} has no chat template: use model.complete() for plain text")
        model.settings(**options)  # checked now, not at the first turn
        self.model = model
        self.options = options
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset(system)

    def reset(self, system: str | None = None) -> None:
        """Forget the conversation; keep (or, given, replace) the system message."""
        if system is not None:
            self.system = system or None
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def stream(self, text: str, **options: Any) -> Iterator[TextEvent]:
        """The reply to a new user message, as events (see Model.events)."""
        messages = [*self.messages, {"role": "user", "content": text}]
        events = self.model.events(messages, **{**self.options, **options})
        return self._recorded(messages, events)

    def send(self, text: str, **options: Any) -> Completion:
        """The whole reply to a new user message."""
        return collect(self.stream(text, **options))

    def _recorded(self, messages: list[dict[str, str]], events: Iterator[TextEvent]) -> Iterator[TextEvent]:
        parts: list[str] = []
        try:
            for event in events:
                parts.append(event.text)
                yield event
        finally:
            events.close()
            self.messages = [*messages, {"role": "assistant", "content": "".join(parts)}]
