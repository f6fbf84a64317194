"""A tiny progress bar for long operations (conversion, downloads, loading).

``Progress`` is a context manager and a callable ``progress(done, total, label)``, so it can be
handed to any function that reports progress that way (``convert_gguf(..., progress=p)``).
It draws on stderr only when the operation has run for more than ``delay`` seconds and stderr is
a terminal, or when ``SHADERBAY_PROGRESS=1`` forces it on (``SHADERBAY_PROGRESS=0`` forces it
off). Otherwise it is silent, so piped output and test logs stay clean.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .config import env_flag

__all__ = ["Progress", "progress_enabled"]


def progress_enabled(stream: TextIO | None = None) -> bool:
    """Whether a progress bar may be drawn on ``stream`` (default: stderr)."""
    forced = env_flag("SHADERBAY_PROGRESS", default=None)
    if forced is not None:
        return forced
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress bar on stderr, shown only for operations slower than ``delay`` seconds.

    Use it as ``with Progress("converting") as p: work(progress=p)`` where ``work`` calls
    ``p(done, total, label)``, or call ``p.update(n)`` yourself after setting ``total``.
    """

    def __init__(
        self,
        label: str = "",
        total: float | None = None,
        *,
        stream: TextIO | None = None,
        delay: float = 1.0,
        interval: float = 0.1,
        width: int = 28,
        enabled: bool | None = None,
    ):
        self.label = label
        self.item = ""
        self.total = total
        self.done = 0.0
        self._stream = stream
        self._delay = delay
        self._interval = interval
        self._width = width
        self._enabled = enabled
        self._start: float | None = None
        self._last_draw = 0.0
        self._drawn = False
        self._last_len = 0

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self._enabled is None:
            self._enabled = progress_enabled(self._out)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)

    @property
    def _out(self) -> TextIO:
        return sys.stderr if self._stream is None else self._stream

    # -- reporting ---------------------------------------------------------------------------

    def __call__(self, done: float, total: float | None = None, label: str | None = None) -> None:
        """Report absolute progress: ``done`` out of ``total`` units, working on ``label``."""
        self.done = float(done)
        if total is not None:
            self.total = total
        if label is not None:
            self.item = label
        self._maybe_draw()

    def update(self, n: float = 1, label: str | None = None) -> None:
        """Report ``n`` more units done."""
        self(self.done + n, None, label)

    def close(self, success: bool = True) -> None:
        if self._drawn:
            if success and self.total:
                self.done = float(self.total)
                self._draw(final=True)
            try:
                self._out.write("\n")
                self._out.flush()
            except (OSError, ValueError):
                pass
            self._drawn = False

    # -- drawing -----------------------------------------------------------------------------

    def _maybe_draw(self) -> None:
        if self._start is None:  # used without `with`: start the clock at the first report
            self.__enter__()
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._start < self._delay:
            return
        if self._drawn and now - self._last_draw < self._interval:
            return
        self._last_draw = now
        self._draw()

    def _draw(self, final: bool = False) -> None:
        elapsed = time.monotonic() - (self._start or time.monotonic())
        parts = [self.label] if self.label else []
        if self.total:
            frac = min(max(self.done / self.total, 0.0), 1.0)
            filled = int(round(frac * self._width))
            parts.append("[" + "#" * filled + "-" * (self._width - filled) + f"] {frac * 100:5.1f}%")
        else:
            parts.append(f"{self.done:g}")
        parts.append(f"{elapsed:5.1f}s")
        if self.item and not final:
            parts.append(self.item)
        line = " ".join(parts)
        if len(line) > 100:
            line = line[:97] + "..."
        pad = " " * max(0, self._last_len - len(line))
        self._last_len = len(line)
        try:
            self._out.write("\r" + line + pad)
            self._out.flush()
        except (OSError, ValueError):
            self._enabled = False
            return
        self._drawn = True
