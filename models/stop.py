"""Stop strings, matched across token boundaries: text that could still begin a stop string is
held back until it cannot, so no part of a stop string is ever emitted."""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces with `push`; it returns what is safe to emit and whether a stop string ended
    the text (the text before the stop string's first occurrence is then the last emitted)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.held = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[: min(hits)], True
        keep = max(_overlap(buf, s) for s in self.stops)
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The text held back at the end of generation (it turned out not to be a stop string)."""
        held, self.held = self.held, ""
        return held


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is a proper beginning of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
