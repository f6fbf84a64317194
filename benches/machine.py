"""The machine a run happened on, and host memory measures (current and peak RSS)."""

from __future__ import annotations

import os
import platform
import resource
import socket
import sys

import numpy as np
import shaderbay
from shaderbay.plugins import ENV_BACKEND

from .results import Machine


def machine_info() -> Machine:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {k: os.environ[k] for k in ("LP_NUM_THREADS", ENV_BACKEND, "VK_DRIVER_FILES") if k in os.environ}
    return Machine(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=sys.version.split()[0],
        cpu=cpu,
        cpu_count=os.cpu_count(),
        memory_bytes=total_memory(),
        numpy=np.__version__,
        shaderbay=shaderbay.__version__,
        env=env,
    )


def total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """The process's resident set size now."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil  # lazily: an optional package, needed only where /proc is missing

        return psutil.Process().memory_info().rss
    except ImportError:
        return None


def peak_rss_bytes() -> int:
    """The process's peak RSS since start, or since the last `reset_peak_rss()` where that works."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux: /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRss:
    """Peak host RSS over a block: `with PeakRss() as m: ...; m.peak, m.delta` (bytes).

    `peak` is the process's peak RSS during the block (other backends' models still resident
    count too); `delta` is peak minus the RSS at entry: what the block itself added at its worst.
    When the peak mark cannot be reset, `peak` is the process's peak since start and `exact` is False.
    """

    def __enter__(self) -> PeakRss:
        self.exact = reset_peak_rss()
        self.start = rss_bytes() or 0
        self.peak = 0
        self.delta = 0
        self.end = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = rss_bytes() or 0
        self.peak = max(peak_rss_bytes(), self.end)
        self.delta = max(self.peak - self.start, 0)
