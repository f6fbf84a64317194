"""The `shaderbay` command. Each subcommand lives in the module that owns its work:
the module provides `add_arguments(parser)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import ShaderbayError

SUBCOMMANDS = {
    "generate": ("shaderbay.models.cli_generate", "generate text (the default model unless --model)"),
    "chat": ("shaderbay.models.cli_chat", "chat with a model interactively"),
    "convert": ("shaderbay.models.cli_convert", "convert a Llama-family GGUF to a checkpoint directory"),
    "backends": ("shaderbay.cli_backends", "list discovered backends, their devices and availability"),
    "check": ("shaderbay.conformance.check", "run the conformance suite against a backend"),
    "bench": ("shaderbay.benches.cli", "compare backends: tokens/s, load time, memory, CPU overhead"),
    "serve": ("shaderbay.serving.cli", "serve a model over an OpenAI-compatible HTTP API"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported, so one broken module breaks only itself."""
    parser = argparse.ArgumentParser(
        prog="shaderbay", description="Llama-family language models on pluggable GPU backends."
    )
    parser.add_argument("--version", action="version", version=f"shaderbay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            p.set_defaults(module=module)
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return importlib.import_module(args.module).run(args) or 0
    except ShaderbayError as exc:
        print(f"shaderbay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
