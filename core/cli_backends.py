"""`shaderbay backends`: every discovered backend, whether it runs here, and if not why."""

from __future__ import annotations

import argparse

from .errors import BackendUnavailable
from .plugins import discover, requested_backend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    wanted, source = requested_backend(None)
    rows = [("backend", "available", "device", "features", "note")]
    for entry in sorted(discover().values(), key=lambda e: -e.priority):
        try:
            backend = entry.create()
        except BackendUnavailable as exc:
            rows.append((entry.name, "no", "-", "-", exc.reason))
            continue
        with backend:
            caps = backend.caps
            rows.append((entry.name, "yes", f"{caps.device} ({caps.device_type})", caps.summary(), entry.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=False)) + "  " + row[4])
    print(f"\nselected: {wanted or 'the first available in the order above, software GPUs last'} ({source})")
    return 0
