"""`shaderbay generate "PROMPT"`: stream a continuation to stdout, tokens/s to stderr."""

from __future__ import annotations

import argparse
import sys

from .model import DEFAULT_MAX_TOKENS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt (with --chat: the user's message)")
    parser.add_argument("--backend", help="numpy, wgpu, vulkan, ... (default: SHADERBAY_BACKEND, config, best)")
    parser.add_argument("--model", help="a checkpoint directory or .gguf file (default: SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--synthetic",
        metavar="NAME",
        help="a random-weight model of a named shape (tiny, smollm2-135m, llama-3.2-1b, ...); the prompt's "
        "UTF-8 bytes are its token ids and the output is token ids",
    )
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="new tokens at most (%(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (%(default)s)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 keeps all")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (%(default)s)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1 disables it (%(default)s)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: random)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--system", help="with --chat: a system message")
    parser.add_argument("--max-context", type=int, help="KV-cache positions (default: the model's, at most 4096)")
    parser.add_argument("--cache-dtype", choices=("f32", "f16"), help="KV-cache precision")
    parser.add_argument(
        "--dtype",
        help="weights of --synthetic models (default float16); converts a GGUF's weights at load (default: "
        "each tensor's own format where the backend runs it)",
    )


def run(args: argparse.Namespace) -> int:
    import shaderbay

    if args.synthetic:
        from .synthetic import normalize_dtype, synthetic_checkpoint

        source = synthetic_checkpoint(args.synthetic, normalize_dtype(args.dtype or "float16"))
    else:
        source = args.model
    model = shaderbay.load(
        source, backend=args.backend, max_context=args.max_context, cache_dtype=args.cache_dtype, dtype=args.dtype
    )
    try:
        options = dict(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
        )
        out = sys.stdout
        if model.tokenizer is None:
            vocab = model.config.vocab_size
            ids = [b % vocab for b in args.prompt.encode("utf-8")] or [0]
            for token in model.tokens(ids, args.max_tokens, **options):
                out.write(f"{token} ")
                out.flush()
        else:
            if args.chat:
                messages = [{"role": "system", "content": args.system}] if args.system else []
                messages.append({"role": "user", "content": args.prompt})
                pieces = model.chat(messages, args.max_tokens, stream=True, **options)
            else:
                pieces = model.generate(args.prompt, args.max_tokens, stream=True, **options)
            for piece in pieces:
                out.write(piece)
                out.flush()
        out.write("\n")
        out.flush()
        s = model.stats
        print(
            f"[{model.name} on {model.backend.name} ({model.backend.caps.device}): loaded in {model.load_s:.2f} s, "
            f"{s.prompt_tokens} prompt tokens "
            f"in {s.prefill_s:.2f} s, {s.generated_tokens} new tokens, {s.decode_tokens_per_s:.1f} tokens/s]",
            file=sys.stderr,
        )
    finally:
        model.close()
    return 0
