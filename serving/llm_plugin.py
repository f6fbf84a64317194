"""shaderbay's models for the `llm` tool: `llm -m shaderbay "Why is the sky blue?"`, `llm chat -m shaderbay`.

Registered through the `llm` entry point, so only `llm` imports this module (shaderbay itself never
needs `llm`). The default model answers unless `-o checkpoint DIR` names another checkpoint; the
backend is chosen as everywhere (`-o backend NAME`, else SHADERBAY_BACKEND, the config file, the best).
llm's options map one to one onto the model's sampling settings.
"""

from __future__ import annotations

import atexit
from typing import Any

import llm
from pydantic import Field
from shaderbay.errors import ShaderbayError

from . import adapter

_LOADED: dict[tuple[str | None, str | None], Any] = {}  # (checkpoint, backend) -> model, loaded once a process


@llm.hookimpl
def register_models(register):
    register(Shaderbay())


class Shaderbay(llm.Model):
    model_id = "shaderbay"
    can_stream = True

    class Options(llm.Options):
        max_tokens: int | None = Field(None, description="new tokens at most (default: up to the end of the context)")
        temperature: float | None = Field(None, description="0 is greedy")
        top_k: int | None = Field(None, description="keep the k most likely tokens; 0 keeps all")
        top_p: float | None = Field(None, description="nucleus sampling mass, in (0, 1]")
        min_p: float | None = Field(None, description="drop tokens less likely than min_p times the best one")
        repetition_penalty: float | None = Field(None, description="> 0; 1 disables it")
        seed: int | None = Field(None, description="sampling seed")
        stop: str | None = Field(None, description="end the answer before this text")
        checkpoint: str | None = Field(None, description="a checkpoint directory (default: the default model)")
        backend: str | None = Field(None, description="numpy, wgpu, vulkan, ... (default: the configured or best)")

    def execute(self, prompt, stream, response, conversation):
        options = prompt.options
        sampling = {name: getattr(options, name, None) for name in adapter.OPTIONS}
        request = adapter.Request(_messages(prompt), options.max_tokens, sampling)
        try:
            model = _model(options.checkpoint, options.backend)
            for item in adapter.events(model, request):
                if isinstance(item, adapter.Prompt):
                    prompt_tokens, output_tokens = item.tokens, 0
                elif isinstance(item, adapter.TextEvent):
                    output_tokens += len(item.token_ids)
                    if item.text:
                        yield item.text
        except ShaderbayError as exc:
            raise llm.ModelError(str(exc)) from None
        response.set_usage(input=prompt_tokens, output=output_tokens)


def _messages(prompt) -> list[dict[str, str]]:
    """The conversation so far (llm passes the whole chain), as chat-template messages."""
    messages = []
    for message in prompt.messages:
        if message.role not in ("system", "user", "assistant"):
            raise llm.ModelError(f"shaderbay models take text turns only, not {message.role!r} messages")
        text = "".join(getattr(part, "text", "") for part in message.parts)
        messages.append({"role": message.role, "content": text})
    return messages


def _model(checkpoint: str | None, backend: str | None):
    key = (checkpoint, backend)
    if key not in _LOADED:
        import shaderbay

        _LOADED[key] = model = shaderbay.load(checkpoint, backend=backend)
        atexit.register(model.close)
    return _LOADED[key]
