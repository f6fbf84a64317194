"""The progress bar of long operations (conversion, loading, benches): tqdm, behind the callable
``progress(done, total, label)`` that those operations report to (``convert_gguf(..., progress=p)``).

It draws on stderr only when the operation has run for more than ``delay`` seconds and stderr is
a terminal, or when ``SHADERBAY_PROGRESS=1`` forces it on (``SHADERBAY_PROGRESS=0`` forces it
off). Otherwise it is silent, so piped output and test logs stay clean.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from .config import env_flag

__all__ = ["Progress", "progress_enabled"]

BAR_FORMAT = "{desc} {percentage:5.1f}% |{bar:28}| {elapsed}{postfix}"


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
        enabled: bool | None = None,
    ):
        self.label = label
        self.total = total
        self._stream = stream
        self._delay = delay
        self._enabled = enabled
        self._bar: tqdm | None = None

    def __enter__(self) -> Progress:
        out = sys.stderr if self._stream is None else self._stream
        enabled = progress_enabled(out) if self._enabled is None else self._enabled
        self._bar = tqdm(
            desc=self.label, total=self.total, file=out, delay=self._delay, disable=not enabled,
            bar_format=BAR_FORMAT, mininterval=0.1, dynamic_ncols=False,
        )  # fmt: skip
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    @property
    def done(self) -> float:
        return self._bar.n if self._bar is not None else 0.0

    def __call__(self, done: float, total: float | None = None, label: str | None = None) -> None:
        """Report absolute progress: ``done`` out of ``total`` units, working on ``label``."""
        if self._bar is None:  # used without `with`: start at the first report
            self.__enter__()
        if total is not None and total != self._bar.total:
            self.total = self._bar.total = total
        if label is not None:
            self._bar.set_postfix_str(label, refresh=False)
        self._bar.update(done - self._bar.n)

    def update(self, n: float = 1, label: str | None = None) -> None:
        """Report ``n`` more units done."""
        self(self.done + n, None, label)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
