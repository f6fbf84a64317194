"""Request bodies of the OpenAI endpoints, and how they map onto the model's options.

Beyond OpenAI's fields, the server reads vLLM's extensions `top_k`, `min_p`, `repetition_penalty`
and `ignore_eos` (the `openai` client sends them through `extra_body`). OpenAI's additive
`presence_penalty` and `frequency_penalty` have no counterpart in the model's sampler: they are
accepted when 0 and otherwise refused, pointing to `repetition_penalty` (llama.cpp's
multiplicative penalty of every token already in the sequence; 1 disables it). Unknown fields are
ignored, as OpenAI-compatible servers do; known fields of a wrong type are refused, strictly as
OpenAI does (no "0.5" for a number, no true for an integer, no "yes" for a boolean).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import adapter
from .errors import ApiError

MAX_CHOICES = 16  # n: each choice is a sequence of the engine, so this bounds one request's share of it


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_template_message(self) -> dict[str, str]:
        """OpenAI's "developer" is the system role of the chat templates; text parts are joined."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or ())
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None

    def check_supported(self) -> None:
        """Refuse what the model cannot do rather than ignore it."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ApiError(
                    400,
                    f"{name} is not supported: use repetition_penalty (> 0, 1 disables it; e.g. 1.1) instead",
                    name,
                )
        if self.logit_bias:
            raise ApiError(400, "logit_bias is not supported: leave it out", "logit_bias")

    def requests(self, prompt: Any, max_tokens: int | None, top_logprobs: int | None) -> list[adapter.Request]:
        """One model request per choice; with a seed, choice i samples with seed + i."""
        fields = self.model_dump(include=set(adapter.OPTIONS), exclude_none=True)
        if isinstance(self.stop, list) and not self.stop:
            fields.pop("stop")
        out = []
        for i in range(self.n):
            options = dict(fields, seed=self.seed + i) if self.seed is not None else fields
            out.append(adapter.Request(prompt, max_tokens, options, top_logprobs))
        return out

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools:
            raise ApiError(400, "tools (function calling) are not supported: leave them out", "tools")
        if self.response_format and self.response_format.get("type") != "text":
            raise ApiError(400, 'only response_format {"type": "text"} is supported', "response_format")
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true: set it, or drop top_logprobs", "top_logprobs")

    def model_requests(self) -> list[adapter.Request]:
        messages = [m.as_template_message() for m in self.messages]
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self.requests(messages, max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = 16  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) > 1:
            raise ApiError(400, "one prompt per request: send a string, or a list of token ids", "prompt")
        if self.echo:
            raise ApiError(400, "echo is not supported: leave it out", "echo")
        if self.suffix:
            raise ApiError(400, "suffix (fill in the middle) is not supported: leave it out", "suffix")

    def model_requests(self) -> list[adapter.Request]:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        return self.requests(prompt, self.max_tokens, self.logprobs)
