"""Generation settings: what a caller may ask for, checked once, with the model's own defaults.

Every entry point (the Python API, the CLI, the server) builds a `GenerationSettings` through
`GenerationSettings.build`, so an option is named, defaulted and range-checked in one place.
Sampling defaults come from the checkpoint's `generation_config.json` (the keys transformers
reads: temperature, top_k, top_p, min_p, repetition_penalty, do_sample), else llama.cpp's:
temperature 0.8, top-k 40, top-p 0.95, min-p 0.05. Temperature 0 is exact greedy decoding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shaderbay.errors import InvalidOption

DEFAULT_MAX_TOKENS = 256
TRUNCATE_CHOICES = ("none", "left")
_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


@dataclass(frozen=True)
class GenerationSettings:
    """One generation's settings. The defaults are llama.cpp's (for checkpoints without their own)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.8  # 0: greedy
    top_k: int = 40  # 0: keep every token
    top_p: float = 0.95  # 1: no nucleus cut
    min_p: float = 0.05  # keep tokens with p >= min_p * the top p; 0: off
    repetition_penalty: float = 1.0  # 1: off
    seed: int | None = None  # None: a random draw
    stop: tuple[str, ...] = ()  # stop strings; the text ends before the first one
    ignore_eos: bool = False  # run to max_tokens through end tokens
    truncate: str = "none"  # "left": drop the prompt's oldest tokens to fit the context

    @classmethod
    def build(cls, base: GenerationSettings | None = None, **options: Any) -> GenerationSettings:
        """`base` (default: the fixed defaults) with `options` replaced, every value checked.
        An option given as None keeps the base's value."""
        base = base or cls()
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            raise InvalidOption(f"unknown generation option {unknown[0]!r}; the options are: {allowed}")
        given = {k: v for k, v in options.items() if v is not None}
        if "stop" in given:
            given["stop"] = _stop_strings(given["stop"])
        return dataclasses.replace(base, **given)

    def __post_init__(self) -> None:
        _integer("max_tokens", self.max_tokens, 1, None)
        _number("temperature", self.temperature, 0.0, None, "0 is greedy")
        _integer("top_k", self.top_k, 0, None, "0 keeps every token")
        _number("top_p", self.top_p, 0.0, 1.0, "1 disables it", low_open=True)
        _number("min_p", self.min_p, 0.0, 1.0, "0 disables it", high_open=True)
        _number("repetition_penalty", self.repetition_penalty, 0.0, None, "1 disables it", low_open=True)
        if self.seed is not None:
            _integer("seed", self.seed, 0, 2**64 - 1)
        if not isinstance(self.ignore_eos, bool):
            raise InvalidOption(f"ignore_eos must be true or false, got {self.ignore_eos!r}")
        if self.truncate not in TRUNCATE_CHOICES:
            raise InvalidOption(f"truncate must be one of {', '.join(TRUNCATE_CHOICES)}, got {self.truncate!r}")
        object.__setattr__(self, "stop", _stop_strings(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_generation_config(cls, config: Mapping[str, Any]) -> GenerationSettings:
        """The defaults a checkpoint's generation_config.json sets (transformers' keys); the rest fixed.
        A config that says do_sample: false is greedy, as transformers makes it."""
        found = {k: config[k] for k in _SAMPLING_KEYS if config.get(k) is not None}
        if config.get("do_sample") is False:
            found["temperature"] = 0.0
        try:
            return cls.build(**found)
        except InvalidOption as exc:
            raise InvalidOption(f"the checkpoint's generation_config.json: {exc}; fix or remove the key") from None


def _stop_strings(stop: Any) -> tuple[str, ...]:
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise InvalidOption(f"stop must be a string or a list of strings, got {stop!r}")
    if any(s == "" for s in stop):
        raise InvalidOption("a stop string must not be empty")
    return tuple(stop)


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"> {low}" if low_open else f">= {low}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _integer(name: str, value: Any, low: int, high: int | None, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise InvalidOption(f"{name} must be {allowed}{f' ({note})' if note else ''}, got {value!r}")


def _number(name: str, value: Any, low: float, high: float | None, note: str,
            low_open: bool = False, high_open: bool = False) -> None:  # fmt: skip
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high)
        )
    if not ok:
        raise InvalidOption(
            f"{name} must be a finite number {_range(low, high, low_open, high_open)} ({note}), got {value!r}"
        )
