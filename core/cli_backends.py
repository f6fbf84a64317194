"""`shaderbay backends`: every discovered backend, whether it runs here, and if not why; then the
backend that `load()` would choose, and why (the same rule as plugins.create_backend)."""

from __future__ import annotations

import argparse

from .errors import BackendUnavailable
from .plugins import discover, requested_backend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    wanted, source = requested_backend(None)
    rows = [("backend", "available", "device", "features", "note")]
    started: list[tuple[str, str]] = []  # (name, device type) of those that start, best first
    unavailable: dict[str, str] = {}
    for entry in sorted(discover().values(), key=lambda e: -e.priority):
        try:
            backend = entry.create()
        except BackendUnavailable as exc:
            rows.append((entry.name, "no", "-", "-", exc.reason))
            unavailable[entry.name] = exc.reason
            continue
        with backend:
            caps = backend.caps
            rows.append((entry.name, "yes", f"{caps.device} ({caps.device_type})", caps.summary(), entry.description))
            started.append((entry.name, caps.device_type))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=False)) + "  " + row[4])
    print("\n" + choice(wanted, source, started, unavailable))
    return 0


def choice(wanted: str | None, source: str, started: list[tuple[str, str]], unavailable: dict[str, str]) -> str:
    if wanted:
        if wanted in unavailable:
            return f"chosen: {wanted} (asked for by {source}), which would fail here: {unavailable[wanted]}"
        if wanted not in dict(started):
            return f"chosen: {wanted} (asked for by {source}), which is not installed"
        return f"chosen: {wanted} (asked for by {source})"
    hardware = [name for name, kind in started if kind != "software"]
    if hardware:
        return f"chosen: {hardware[0]} (automatic: the first in the order above that starts and is not a software GPU)"
    if started:
        return (
            f"chosen: {started[0][0]} (automatic: nothing else starts, so the first software GPU, "
            "slower than NumPy on real models)"
        )
    return "chosen: none: no backend starts here (see the notes above)"
