"""What the kernel tests measured, for `shaderbay check`'s table (a module-level registry).

test_kernels records, per (backend, kernel), the worst relative error seen, the largest
share of its tolerance used, and the largest shape the size ladder reached.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KernelStats:
    worst_error: float = 0.0  # the largest relative error seen
    worst_ratio: float = 0.0  # the largest error / tolerance seen (1 or more: a failure)
    runs: int = 0
    largest: str = ""  # the largest shape the size ladder reached


STATS: dict[tuple[str, str], KernelStats] = {}


def record_error(backend: str, kernel: str, error: float, tol: float) -> None:
    stats = STATS.setdefault((backend, kernel), KernelStats())
    stats.runs += 1
    stats.worst_error = max(stats.worst_error, error)
    if error > tol:
        ratio = float("inf") if tol == 0 else error / tol
    else:
        ratio = 0.0 if tol == 0 else error / tol
    stats.worst_ratio = max(stats.worst_ratio, ratio)


def record_largest(backend: str, kernel: str, description: str) -> None:
    STATS.setdefault((backend, kernel), KernelStats()).largest = description


def clear() -> None:
    STATS.clear()
