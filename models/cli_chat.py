"""`shaderbay chat`: an interactive conversation. Replies stream as they are generated; Ctrl-C
stops the current reply and keeps the conversation; /reset, /system TEXT, /exit (or Ctrl-D).
Each turn computes only its own tokens: the model's cache keeps the earlier turns (chat.py)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from shaderbay.errors import ShaderbayError

from .cli_options import add_model_arguments, add_sampling_arguments, load_model, sampling_options

HELP = "/reset forgets the conversation, /system TEXT sets the system message, /exit ends (or Ctrl-D)"
PROMPT = ">>> "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--system", help="a system message")
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    with contextlib.suppress(ImportError):  # line editing and history where the platform has it
        import readline  # noqa: F401

    model = load_model(args)
    try:
        chat = model.new_chat(args.system, **sampling_options(args))
        print(f"{model.name} on {model.backend.name} ({model.backend.caps.device}). {HELP}", file=sys.stderr)
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:  # an abandoned line: a fresh prompt
                print()
                continue
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                chat.reset()
                print("[the conversation is forgotten]", file=sys.stderr)
            elif text == "/system" or text.startswith("/system "):
                chat.reset(text.removeprefix("/system").strip())
                print("[new system message; the conversation is forgotten]", file=sys.stderr)
            elif text.startswith("/"):
                print(f"[unknown command {text.split()[0]}: {HELP}]", file=sys.stderr)
            else:
                answer(chat, text)
    finally:
        model.close()


class StopRequest:
    """While active, a first Ctrl-C asks the reply to stop at its next token (a flag, which no code on
    the way can swallow, as a finaliser running when a KeyboardInterrupt lands would), a second one
    interrupts at once (a long prompt still being read)."""

    def __init__(self) -> None:
        self.asked = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def __enter__(self) -> StopRequest:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


def answer(chat, text: str) -> None:
    """Stream the reply; Ctrl-C ends it early (the part shown stays in the conversation)."""
    out = sys.stdout
    stop = StopRequest()
    try:
        with stop:
            events = chat.stream(text)
            with contextlib.closing(events):
                for event in events:
                    out.write(event.text)
                    out.flush()
                    if stop.asked:
                        break
    except KeyboardInterrupt:
        pass
    except ShaderbayError as exc:  # e.g. a conversation grown past the context: the session goes on
        print(f"shaderbay: {exc}", file=sys.stderr)
    if stop.asked:
        out.write("\n[stopped]")
    out.write("\n")
    out.flush()
