"""The model bench's settings (`shaderbay bench` options)."""

from __future__ import annotations

from dataclasses import dataclass, field

STREAM_WARM_STEPS = 4  # steps after the last join before the window: past RUN_AHEAD, new recordings prepared
STREAM_JOIN_STEPS = 2  # steps a joining stream may take (one prefill and its first decode step)
SYNTHETIC_DTYPE = "f16"  # synthetic weights' (and a converted default model's) without --dtype


@dataclass
class Settings:
    backends: list[str]
    model: str | None = None  # a checkpoint directory, or None for the default model
    synthetic: str | None = None  # a named random-weight shape
    dtype: str | None = None  # normalize_dtype's name; None: a checkpoint's own (the default model's GGUF as it is)
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
    batch_invariant: bool = True  # load(batch_invariant=...) of the model (with --streams)

    @property
    def weights(self) -> str:
        """The weight dtype of synthetic weights (or of a converted default model)."""
        return self.dtype or SYNTHETIC_DTYPE

    def stream_tokens(self, streams: int) -> int:
        """What each of `streams` requests may generate: its joining, the warm-up and the timed window
        (benches/model_streams.py)."""
        return self.new_tokens + STREAM_WARM_STEPS + STREAM_JOIN_STEPS * streams

    def context(self) -> int:
        need = max(self.prompt_tokens + self.new_tokens, self.prefill_tokens)
        need = max([need] + [self.prompt_tokens + self.stream_tokens(n) for n in self.streams])
        return max(self.max_context or 0, need)

    def pool_streams(self) -> int:
        """Sequences of context() positions the KV pool holds: the most streams asked for."""
        return max(self.streams, default=1)
