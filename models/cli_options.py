"""The options `shaderbay generate` and `shaderbay chat` share: which model on which backend, and
how to sample. Sampling options left out take the model's defaults (settings.py)."""

from __future__ import annotations

import argparse
from typing import Any

from .settings import TRUNCATE_CHOICES


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", help="numpy, wgpu, vulkan, ... (default: SHADERBAY_BACKEND, config, best)")
    parser.add_argument("--model", help="a checkpoint directory (default: SmolLM2-135M-Instruct, converted once)")
    parser.add_argument("--max-context", type=int, help="KV-cache positions (default: the model's, at most 4096)")
    parser.add_argument("--cache-dtype", choices=("f32", "f16"), help="KV-cache precision")
    parser.add_argument(
        "--dtype", default="float16", help="weights of the default model and of --synthetic ones (%(default)s)"
    )


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling (default: the model's generation_config.json, else llama.cpp's)")
    g.add_argument("--max-tokens", type=int, help="new tokens at most (default 256)")
    g.add_argument("--temperature", type=float, help="0 is greedy (default 0.8)")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens; 0 keeps all (default 40)")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1] (default 0.95)")
    g.add_argument("--min-p", type=float, help="keep tokens at least this times the likeliest's p (default 0.05)")
    g.add_argument("--repetition-penalty", type=float, help="1 disables it (default 1)")
    g.add_argument("--seed", type=int, help="sampling seed (default: random)")
    g.add_argument("--stop", action="append", metavar="TEXT", help="end the text before TEXT (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", default=None, help="generate through end tokens")
    g.add_argument(
        "--truncate", choices=TRUNCATE_CHOICES, help="a prompt too long for the context: error (none) or cut the left"
    )


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given on the command line (those left out are None: the model's default)."""
    names = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "stop")
    return {name: getattr(args, name) for name in (*names, "ignore_eos", "truncate")}


def load_model(args: argparse.Namespace, source: Any = None):
    import shaderbay

    return shaderbay.load(
        source if source is not None else args.model,
        backend=args.backend,
        max_context=args.max_context,
        cache_dtype=args.cache_dtype,
        dtype=args.dtype,
    )


def stats_line(model: Any) -> str:
    """One line about the last generation: the model, the backend, the prompt, the speed, why it ended."""
    s = model.stats
    cached = f", {s.cached_tokens} of them reused" if s.cached_tokens else ""
    return (
        f"[{model.name} on {model.backend.name} ({model.backend.caps.device}): loaded in {model.load_s:.2f} s; "
        f"{s.prompt_tokens} prompt tokens{cached}, prefilled in {s.prefill_s:.2f} s; "
        f"{s.generated_tokens} new tokens, {s.decode_tokens_per_s:.1f} tokens/s; finish: {s.finish_reason}]"
    )
