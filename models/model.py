"""`shaderbay.load()`: a checkpoint on a backend, with generation, streaming and chat.

    model = shaderbay.load()                       # the default model on the best backend
    print(model.generate("The capital of France is", max_tokens=16))
    for piece in model.stream("Once upon a time", temperature=0.8, seed=1):
        print(piece, end="", flush=True)
    print(model.chat([{"role": "user", "content": "Hello!"}]))

A model without a tokenizer (a synthetic one) generates from token ids: `model.tokens([1, 2, 3])`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shaderbay.backend import Backend
from shaderbay.errors import ModelError
from shaderbay.plugins import create_backend

from .checkpoint import Checkpoint, SafetensorsCheckpoint
from .config import ModelConfig
from .llama import Llama, Sampling, Stats, check_cache_dtype, default_cache_dtype, load_weights

DEFAULT_MAX_CONTEXT = 4096
DEFAULT_MAX_TOKENS = 256


class Model:
    """A loaded model. Not thread-safe: one generation at a time."""

    def __init__(self, llama: Llama, tokenizer: Any = None, name: str = "", owns_backend: bool = False):
        self.llama = llama
        self.tokenizer = tokenizer
        self.name = name
        self.owns_backend = owns_backend
        self.load_s = 0.0
        self.weight_bytes = llama.weights.nbytes
        eos = list(llama.config.eos_token_ids)
        for i in getattr(tokenizer, "eos_token_ids", ()) or ():
            if i not in eos:
                eos.append(int(i))
        self.eos_token_ids: tuple[int, ...] = tuple(eos)

    # --- properties ---------------------------------------------------------------------------
    @property
    def config(self) -> ModelConfig:
        return self.llama.config

    @property
    def backend(self) -> Backend:
        return self.llama.backend

    @property
    def max_context(self) -> int:
        return self.llama.max_context

    @property
    def stats(self) -> Stats:
        """Timings of the last generation (prefill, decode, tokens/s)."""
        return self.llama.stats

    def __repr__(self) -> str:
        return f"<Model {self.name or self.config.architecture} on {self.backend.name} ({self.backend.caps.device})>"

    # --- text ------------------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ModelError(
                f"{self.name or 'this model'} has no tokenizer (no tokenizer.json): pass token ids, "
                "e.g. model.tokens([1, 2, 3])"
            )
        return self.tokenizer

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a prompt (text through the tokenizer, adding BOS if its config asks; ids as given)."""
        if isinstance(prompt, str):
            return self._need_tokenizer().encode(prompt, add_special_tokens=True)
        if isinstance(prompt, np.ndarray):
            prompt = prompt.tolist()
        try:
            return [int(t) for t in prompt]
        except (TypeError, ValueError):
            raise ModelError(f"a prompt is a str or a sequence of token ids, not {type(prompt).__name__}") from None

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template (generation prompt added)."""
        return self._need_tokenizer().encode_chat(messages, add_generation_prompt=True)

    def decode(self, ids: Iterable[int]) -> str:
        return self._need_tokenizer().decode(ids)

    # --- computing -------------------------------------------------------------------------------
    def logits(self, prompt: str | Sequence[int], all_positions: bool = False) -> np.ndarray:
        """Next-token logits after the prompt ([vocab]), or after each prefix of it ([T, vocab])."""
        return self.llama.logits(self.encode(prompt), all_positions)

    def tokens(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = DEFAULT_MAX_TOKENS,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: Iterable[int] | None = None,
        ignore_eos: bool = False,
    ) -> Iterator[int]:
        """Generated token ids, one at a time. Ends after max_tokens, or after yielding an EOS/stop id."""
        sampling = Sampling(float(temperature), int(top_k), float(top_p), float(repetition_penalty))
        stops = set() if ignore_eos else set(self.eos_token_ids)
        stops |= {int(t) for t in stop or ()}
        return self.llama.generate(self.encode(prompt), max_tokens, sampling, seed, frozenset(stops))

    def stream(
        self, prompt: str | Sequence[int], max_tokens: int = DEFAULT_MAX_TOKENS, **options: Any
    ) -> Iterator[str]:
        """Generated text, piece by piece as tokens arrive (never half a character; no EOS text)."""
        decoder = self._need_tokenizer().stream_decoder()
        stops = set(self.eos_token_ids) | {int(t) for t in options.get("stop") or ()}
        for token in self.tokens(prompt, max_tokens, **options):
            if token in stops and not options.get("ignore_eos"):
                break
            piece = decoder.push(token)
            if piece:
                yield piece
        tail = decoder.flush()
        if tail:
            yield tail

    def generate(
        self, prompt: str | Sequence[int], max_tokens: int = DEFAULT_MAX_TOKENS, *, stream: bool = False, **options: Any
    ) -> str | Iterator[str]:
        """The continuation of `prompt` as text (an iterator of pieces with stream=True).

        Options: temperature (0 = greedy), top_k, top_p, repetition_penalty, seed, stop (ids), ignore_eos.
        """
        pieces = self.stream(prompt, max_tokens, **options)
        return pieces if stream else "".join(pieces)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: int = DEFAULT_MAX_TOKENS,
        *,
        stream: bool = False,
        **options: Any,
    ) -> str | Iterator[str]:
        """The assistant's reply to `messages` ([{"role": "user", "content": "..."}, ...])."""
        return self.generate(self.encode_chat(messages), max_tokens, stream=stream, **options)

    @property
    def dispatches_per_token(self) -> int:
        """Dispatches (and copies) in the recorded decode step."""
        return self.llama.dispatches_per_token

    def close(self) -> None:
        self.llama.close()
        if self.owns_backend:
            self.backend.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(model: str | Path | Checkpoint | None, dtype: str | None) -> tuple[Checkpoint, str]:
    if isinstance(model, Checkpoint):
        return model, getattr(model, "name", "") or model.describe()
    if model is None:
        from .default import DEFAULT_MODEL_NAME, default_gguf_path
        from .gguf.checkpoint import GGUFCheckpoint

        return GGUFCheckpoint(default_gguf_path(), dtype), DEFAULT_MODEL_NAME
    text = str(model)
    if text.startswith("synthetic:") and not Path(text).exists():
        from .synthetic import synthetic_checkpoint

        parts = text.split(":")
        return synthetic_checkpoint(parts[1], *(parts[2:3] or ["f16"])), parts[1]
    path = Path(model).expanduser()
    if path.is_file() or path.suffix.lower() == ".gguf" and not path.is_dir():  # a model in one file is a GGUF
        from .gguf.checkpoint import GGUFCheckpoint

        return GGUFCheckpoint(path, dtype), path.name
    return SafetensorsCheckpoint(path), path.name


def load(
    model: str | Path | Checkpoint | None = None,
    backend: str | Backend | None = None,
    *,
    max_context: int | None = None,
    cache_dtype: str | None = None,
    dtype: str | None = None,
    prefill_chunk: int = 512,
    progress: bool | None = None,
) -> Model:
    """Load a checkpoint onto a backend.

    model: a checkpoint directory (config.json + safetensors), a .gguf file (run as it is, memory-mapped),
    a Checkpoint (e.g. `synthetic.synthetic_checkpoint("tiny")`), "synthetic:NAME[:dtype]", or None for the
    default model (its GGUF). backend: a name, a Backend, or None for the configured/best one.
    max_context: positions the KV cache holds (default: the model's, at most 4096).
    cache_dtype: "f32" or "f16" (default: f16 for 16-bit and block weights where the device has f16).
    dtype: "float16", "float32" or "bfloat16" converts a GGUF's weights to it at load (default: each
    tensor's own format where the backend runs it).
    """
    t0 = time.perf_counter()
    ckpt, name = _open(model, dtype)
    owns = not isinstance(backend, Backend)
    dev = create_backend(backend) if owns else backend
    try:
        config = ckpt.config
        limit = config.max_position_embeddings
        if config.sliding_window:
            limit = min(limit, config.sliding_window)
        max_context = int(max_context) if max_context else min(limit, DEFAULT_MAX_CONTEXT)
        if max_context < 1:
            raise ModelError(f"max_context must be positive, got {max_context}")
        if config.sliding_window and max_context > config.sliding_window:
            raise ModelError(
                f"max_context {max_context} exceeds the model's sliding window ({config.sliding_window}), "
                "which shaderbay does not implement; use a max_context up to the window"
            )
        from shaderbay.progress import Progress

        with Progress(f"loading {name}", enabled=progress) as bar:
            weights = load_weights(ckpt, dev, progress=bar)
        try:
            cache = check_cache_dtype(dev, cache_dtype) if cache_dtype else default_cache_dtype(dev, weights)
        except BaseException:
            Llama.free_weights(dev, weights)
            raise
        llama = Llama(dev, config, weights, max_context, cache, prefill_chunk)  # frees everything if it fails
        tokenizer = ckpt.tokenizer()
    except BaseException:
        if owns:
            dev.close()
        raise
    finally:
        ckpt.close()
    m = Model(llama, tokenizer, name, owns_backend=owns)
    m.load_s = time.perf_counter() - t0
    return m
