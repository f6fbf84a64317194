"""How a sequence's tokens are chosen (`Sampling`: greedy steps use argmax, the others `sample`
with the settings row of the sequence's slot) and what a generation reports (`Stats`: its timings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from shaderbay.kernels import SAMPLE_SETTINGS


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen, on the device. temperature <= 0 is greedy. The ranges are
    checked where a caller's options come in (settings.GenerationSettings); here only the key."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0

    @property
    def greedy(self) -> bool:
        """Plain argmax: no temperature and no penalty (the history is then not needed)."""
        return self.temperature <= 0 and self.repetition_penalty == 1.0

    def settings_row(self) -> np.ndarray:
        """The `sample` kernel's settings row of this sampling (the catalogue's layout)."""
        row = np.zeros(SAMPLE_SETTINGS, np.float32)
        greedy = self.temperature <= 0
        row[:5] = (
            0.0 if greedy else self.temperature,
            0 if greedy else self.top_k,
            1.0 if greedy else self.top_p,
            self.repetition_penalty,
            0.0 if greedy else self.min_p,
        )
        return row


GREEDY = Sampling()


@dataclass
class Stats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: float = 0.0
    cached_tokens: int = 0  # prompt tokens whose KV entries were reused from the previous call
    seed: int = 0
    finish_reason: str | None = None  # "stop", "length" or "cancelled" (set by generation.run)

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens computed by this call's prefill."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def decode_tokens_per_s(self) -> float:
        n = self.generated_tokens - 1  # the first token comes from the prefill
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0
