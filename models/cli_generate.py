"""`shaderbay generate "PROMPT"`: stream a reply (or, with --raw, a continuation) to stdout and a
stats line to stderr; `--json` prints one JSON record instead. A model with a chat template is
chatted with unless --raw. The prompt is read from stdin when it is `-`, or left out under a pipe."""

from __future__ import annotations

import argparse
import json
import sys

from shaderbay.errors import InvalidOption

from .cli_options import add_model_arguments, add_sampling_arguments, load_model, sampling_options, stats_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help="the prompt (a chat model: the user's message); - reads stdin")
    add_model_arguments(parser)
    parser.add_argument(
        "--synthetic",
        metavar="NAME",
        help="a random-weight model of a named shape (tiny, smollm2-135m, llama-3.2-1b, ...); the prompt's "
        "UTF-8 bytes are its token ids and the output is token ids",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--raw", action="store_true", help="plain completion, no chat template")
    mode.add_argument("--chat", action="store_true", help="use the chat template (the default where there is one)")
    parser.add_argument("--system", help="a system message (chat only)")
    parser.add_argument("--json", action="store_true", help="print text, token ids, finish reason and timings as JSON")
    add_sampling_arguments(parser)


def read_prompt(prompt: str | None) -> str:
    """The prompt argument, or stdin for `-` or when it is left out and stdin is not a terminal."""
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    if prompt is None:
        raise InvalidOption('give a prompt: shaderbay generate "PROMPT" (or - to read it from stdin)')
    return prompt


def run(args: argparse.Namespace) -> int:
    prompt = read_prompt(args.prompt)
    options = sampling_options(args)
    source = None
    if args.synthetic:
        from .synthetic import normalize_dtype, synthetic_checkpoint

        source = synthetic_checkpoint(args.synthetic, normalize_dtype(args.dtype or "float16"))
    model = load_model(args, source)
    try:
        if model.tokenizer is None:  # token ids in, token ids out
            if args.system or args.chat:
                raise InvalidOption(f"{model.name} has no tokenizer, so no chat: drop --chat and --system")
            vocab = model.config.vocab_size
            request = [b % vocab for b in prompt.encode("utf-8")] or [0]
        elif args.raw or (not args.chat and not model.has_chat_template):
            if args.system:
                raise InvalidOption("--system needs a chat: drop --raw (the model must have a chat template)")
            request = prompt
        else:
            if not model.has_chat_template:
                raise InvalidOption(f"{model.name} has no chat template: drop --chat, or use --raw")
            request = [{"role": "system", "content": args.system}] if args.system else []
            request.append({"role": "user", "content": prompt})
        events = model.events(request, **options)
        if args.json:
            from .generation import collect

            print(json.dumps(collect(events).to_dict()))
            return 0
        out = sys.stdout
        for event in events:
            out.write(event.text if model.tokenizer is not None else "".join(f"{t} " for t in event.token_ids))
            out.flush()
        out.write("\n")
        out.flush()
        print(stats_line(model), file=sys.stderr)
    finally:
        model.close()
    return 0
