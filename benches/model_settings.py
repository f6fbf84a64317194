"""The model bench's settings (`shaderbay bench` options)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Settings:
    backends: list[str]
    model: str | None = None  # a checkpoint directory, or None for the default model
    synthetic: str | None = None  # a named random-weight shape
    dtype: str = "float16"
    prompt_tokens: int = 16
    new_tokens: int = 128
    prefill_tokens: int = 512
    repeats: int = 3
    max_context: int | None = None
    temperature: float = 0.0
    in_memory: bool = False  # synthetic weights loaded from memory instead of a safetensors file
    copy_bytes: int = 512 << 20
    time_budget: float = 90.0  # seconds of timed repetitions per backend before it skips the rest
    preflight: bool = True
    preflight_timeout: float = 180.0
    target_tok_s: float | None = None
    seed: int = 0
    streams: list[int] = field(default_factory=list)  # --streams: aggregate decode at each stream count

    def context(self) -> int:
        need = max(self.prompt_tokens + self.new_tokens, self.prefill_tokens)
        return max(self.max_context or 0, need)

    def pool_streams(self) -> int:
        """Sequences of context() positions the KV pool holds: the most streams asked for."""
        return max(self.streams, default=1)
