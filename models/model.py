"""`shaderbay.load()`: a checkpoint on a backend, with generation, streaming and chat.

    model = shaderbay.load()                       # the default model on the best backend
    print(model.generate("The capital of France is", max_tokens=16))
    for piece in model.stream("Once upon a time", temperature=0.8, seed=1):
        print(piece, end="", flush=True)
    print(model.chat([{"role": "user", "content": "Hello!"}]))

    for done in model.generate_batch(["Once", "Twice"], max_tokens=8):  # together, batched
        print(done.text, done.finish_reason)

A model without a tokenizer (a synthetic one) generates from token ids: `model.tokens([1, 2, 3])`.
Every generation goes through the model's engine (engine.py): generations started together, or
interleaved by several consumers, are decoded in one batch, each with the tokens it gets alone.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shaderbay.backend import Backend
from shaderbay.errors import InvalidOption, ModelError
from shaderbay.plugins import create_backend

from .chat import Chat
from .checkpoint import Checkpoint, SafetensorsCheckpoint
from .config import ModelConfig
from .engine import Engine
from .generation import Completion, TextEvent, TextStream, collect, sampling_of
from .llama import Llama
from .requests import Request
from .sampling import Stats
from .settings import DEFAULT_MAX_TOKENS, GenerationSettings
from .weights import check_cache_dtype, default_cache_dtype, load_weights

DEFAULT_MAX_CONTEXT = 4096
# the earlier API (tokens, stream, generate, chat): greedy, and no filter unless told otherwise
PLAIN = GenerationSettings(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)
Prompt = str | Sequence[int] | Sequence[Mapping[str, Any]]


class Model:
    """A loaded model. Its generations may be interleaved, and run from several threads: the engine
    batches whatever is asked of it at the same time."""

    def __init__(
        self,
        llama: Llama,
        tokenizer: Any = None,
        name: str = "",
        owns_backend: bool = False,
        defaults: GenerationSettings | None = None,
    ):
        self.llama = llama
        self.engine = Engine(llama)
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
        # generation also ends at the token the chat template closes an assistant's turn with
        turn_ends = tokenizer.turn_end_ids() if tokenizer is not None else ()
        self.end_token_ids = frozenset(self.eos_token_ids) | frozenset(turn_ends)
        self.defaults = defaults or GenerationSettings()

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
    def has_chat_template(self) -> bool:
        return self.tokenizer is not None and bool(self.tokenizer.chat_template)

    @property
    def stats(self) -> Stats:
        """Timings of the last generation started (prefill, decode, tokens/s)."""
        return self.engine.stats

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
        return self.engine.logits(self.encode(prompt), all_positions)

    # --- generating ------------------------------------------------------------------------------
    def settings(self, **options: Any) -> GenerationSettings:
        """This model's defaults (its generation_config.json, else the fixed ones) with `options`, checked."""
        return GenerationSettings.build(self.defaults, **options)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: text (encoded as is), token ids, or chat messages (rendered with the
        model's chat template, the assistant's turn opened)."""
        if isinstance(prompt, Sequence) and not isinstance(prompt, str) and prompt and isinstance(prompt[0], Mapping):
            return self.encode_chat(prompt)
        return self.encode(prompt)

    def events(self, prompt: Prompt, max_tokens: int | None = None, **options: Any) -> Iterator[TextEvent]:
        """The generation as events: each new piece of text with its token ids, the last one with the
        finish reason ("stop" or "length"). The options are checked here, before the first event;
        closing the iterator early ends the generation (model.stats.finish_reason: "cancelled")."""
        return self._events(prompt, self.settings(max_tokens=max_tokens, **options))

    def _events(self, prompt: Prompt, settings: GenerationSettings) -> Iterator[TextEvent]:
        ids = self._checked_ids(prompt, settings)
        return (event for _, event in self._batch_events([ids], settings))

    def request(
        self, prompt: Prompt, max_tokens: int | None = None, **options: Any
    ) -> tuple[Request, GenerationSettings]:
        """What `events` hands the engine, for a caller that steps the engine itself (the server): the
        request (prompt and options checked) and its settings, which `text_stream` takes."""
        settings = self.settings(max_tokens=max_tokens, **options)
        return self._request(self._checked_ids(prompt, settings), settings, self._ends(settings)), settings

    def text_stream(self, settings: GenerationSettings, stats: Stats) -> TextStream:
        """The layer turning one sequence's engine events into text events (stop strings, end ids)."""
        return TextStream(self.tokenizer, settings.stop, self._ends(settings), stats)

    def _checked_ids(self, prompt: Prompt, settings: GenerationSettings) -> list[int]:
        if settings.stop and self.tokenizer is None:
            raise InvalidOption(f"stop strings need a tokenizer, and {self.name or 'this model'} has none")
        return self._fit(self.prompt_ids(prompt), settings)

    def complete(self, prompt: Prompt, max_tokens: int | None = None, **options: Any) -> Completion:
        """The whole generation: its text, token ids, finish reason and timings (see `events`)."""
        return collect(self.events(prompt, max_tokens, **options))

    def _request(self, ids: list[int], settings: GenerationSettings, ends: frozenset[int]) -> Request:
        seed = settings.seed if settings.seed is not None else secrets.randbits(32)
        return Request(tuple(ids), settings.max_tokens, sampling_of(settings), seed, ends)

    def _ends(self, settings: GenerationSettings) -> frozenset[int]:
        return frozenset() if settings.ignore_eos else self.end_token_ids

    def _batch_events(self, prompts: list[list[int]], settings: GenerationSettings) -> Iterator[tuple[int, TextEvent]]:
        """(prompt index, text event) of the generations of `prompts` (checked ids), run together."""
        ends = self._ends(settings)
        seqs = [self.engine.add(self._request(ids, settings, ends)) for ids in prompts]
        texts = {seq.id: (i, seq, self.text_stream(settings, seq.stats)) for i, seq in enumerate(seqs)}
        events = self.engine.run(seqs)
        try:
            for event in events:
                i, seq, text = texts[event.seq]
                if text.done:
                    continue
                for piece in text.push(event):
                    yield i, piece
                if text.done and not seq.finished:  # a stop string: the sequence ends here
                    self.engine.cancel(seq)
        finally:
            events.close()

    def generate_batch(
        self, prompts: Sequence[Prompt], max_tokens: int = DEFAULT_MAX_TOKENS, *, stream: bool = False, **options: Any
    ) -> list[Completion] | Iterator[tuple[int, TextEvent]]:
        """The continuations of several prompts, decoded together (continuous batching): a Completion
        each (text, token ids, finish reason, timings), in the prompts' order; with stream=True, an
        iterator of (prompt index, TextEvent) as they come, each prompt's last event with its finish
        reason. Each prompt gets the answer it gets alone (with the same options, seed included).
        Options as `generate`'s (greedy unless told otherwise), checked before anything runs."""
        settings = GenerationSettings.build(PLAIN, max_tokens=max_tokens, **options)
        ids = [self._checked_ids(p, settings) for p in prompts]
        events = self._batch_events(ids, settings)
        if stream:
            return events
        per_prompt: list[list[TextEvent]] = [[] for _ in ids]
        for i, event in events:
            per_prompt[i].append(event)
        return [collect(iter(e)) for e in per_prompt]

    def _fit(self, ids: list[int], settings: GenerationSettings) -> list[int]:
        """The prompt, checked, and cut from the left if it is too long and settings.truncate says so."""
        self.llama.check_ids(ids)
        room = self.max_context - settings.max_tokens + 1  # the last token sampled is never cached
        if len(ids) > room and settings.truncate == "left" and room >= 1:
            ids = ids[len(ids) - room :]
        self.llama.check_fits(len(ids), settings.max_tokens)
        return ids

    def new_chat(self, system: str | None = None, **options: Any) -> Chat:
        """A conversation that keeps its history (and the KV cache of its earlier turns)."""
        return Chat(self, system, **options)

    # --- the earlier API: greedy, no filters, unless told otherwise ---------------------------------------------
    def tokens(
        self, prompt: Prompt, max_tokens: int = DEFAULT_MAX_TOKENS, *, stop: Iterable[int] | None = None, **options: Any
    ) -> Iterator[int]:
        """Generated token ids, one at a time, greedy unless options say otherwise. Ends after
        max_tokens, or after yielding an end or `stop` id."""
        settings = GenerationSettings.build(PLAIN, max_tokens=max_tokens, **options)
        ends = self._ends(settings) | {int(t) for t in stop or ()}
        return self._token_ids(self._request(self.prompt_ids(prompt), settings, ends))

    def _token_ids(self, request: Request) -> Iterator[int]:
        events = self.engine.stream(request)
        try:
            for event in events:
                if event.token is not None:
                    yield event.token
        finally:
            events.close()  # closed early: the sequence is cancelled now, not when collected

    def stream(self, prompt: Prompt, max_tokens: int = DEFAULT_MAX_TOKENS, **options: Any) -> Iterator[str]:
        """Generated text, piece by piece (greedy unless options say otherwise; stop: strings)."""
        events = self._events(prompt, GenerationSettings.build(PLAIN, max_tokens=max_tokens, **options))
        return (e.text for e in events if e.text)

    def generate(
        self, prompt: Prompt, max_tokens: int = DEFAULT_MAX_TOKENS, *, stream: bool = False, **options: Any
    ) -> str | Iterator[str]:
        """The continuation of `prompt` as text (an iterator of pieces with stream=True), greedy unless
        options say otherwise. Options: see settings.GenerationSettings."""
        if stream:
            return self.stream(prompt, max_tokens, **options)
        events = self._events(prompt, GenerationSettings.build(PLAIN, max_tokens=max_tokens, **options))
        return collect(events).text

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: int = DEFAULT_MAX_TOKENS,
        *,
        stream: bool = False,
        **options: Any,
    ) -> str | Iterator[str]:
        """The assistant's reply to `messages` ([{"role": "user", "content": "..."}, ...]), greedy
        unless options say otherwise."""
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


def generation_defaults(path: Path) -> GenerationSettings | None:
    """The sampling defaults of a checkpoint's generation_config.json, if it has one."""
    file = path / "generation_config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file} is not valid JSON ({exc}); fix or remove it") from None
    return GenerationSettings.from_generation_config(config if isinstance(config, dict) else {})


def open_checkpoint(model: str | Path | Checkpoint | None, dtype: str | None = None) -> tuple[Checkpoint, str]:
    """The checkpoint `load` reads for `model` (see load), and its name."""
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
    streams: int = 1,
    batch_invariant: bool = True,
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
    streams: how many sequences of max_context positions the paged KV cache holds at once (shorter
    ones share it: its blocks go to the live tokens; requests that do not fit wait).
    batch_invariant: with streams > 1, whether a sequence's tokens are the same alone and in any batch
    (the default). On a device with tensor cores (Vulkan's cooperative matrices) every product of a
    multi-stream model then runs on them, one row too, which is slower for a row alone than the
    matrix-vector kernels (benches/RESULTS.md); False runs one row on those and only batches on the
    tensor cores: a sequence's answer may then change in its last bits when others join.
    """
    t0 = time.perf_counter()
    ckpt, name = open_checkpoint(model, dtype)
    owns = not isinstance(backend, Backend)
    dev = create_backend(backend) if owns else backend
    try:
        config = ckpt.config
        limit = config.max_position_embeddings
        if config.sliding_window:
            limit = min(limit, config.sliding_window)
        max_context = min(limit, DEFAULT_MAX_CONTEXT) if max_context is None else max_context
        if isinstance(max_context, bool) or not isinstance(max_context, int) or not 1 <= max_context <= limit:
            why = "sliding window, which shaderbay does not implement" if limit == config.sliding_window else "context"
            raise InvalidOption(
                f"max_context must be an integer in [1, {limit}] (the model's {why}), got {max_context!r}"
            )
        from shaderbay.progress import Progress

        with Progress(f"loading {name}", enabled=progress) as bar:
            weights = load_weights(ckpt, dev, progress=bar)
        try:
            cache = check_cache_dtype(dev, cache_dtype) if cache_dtype else default_cache_dtype(dev, weights)
        except BaseException:
            Llama.free_weights(dev, weights)
            raise
        # frees everything if it fails
        llama = Llama(dev, config, weights, max_context, cache, prefill_chunk, streams, batch_invariant)
        tokenizer = ckpt.tokenizer()
        defaults = generation_defaults(ckpt.path) if ckpt.path is not None else None
    except BaseException:
        if owns:
            dev.close()
        raise
    finally:
        ckpt.close()
    m = Model(llama, tokenizer, name, owns_backend=owns, defaults=defaults)
    m.load_s = time.perf_counter() - t0
    return m
