"""The bench's text formatting shared by its reports: numbers, plain and markdown tables, a kernel's row."""

from __future__ import annotations

import math

from .results import ModelKernel


def num(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%" if x >= 0.1 else f"{100 * x:.1f}%"


def mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A plain-text table; columns in `right` (default: all but the first) are right-aligned."""
    right = set(range(1, len(headers))) if right is None else right
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(str(cell).rjust(widths[i]) if i in right else str(cell).ljust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def model_kernel_cells(k: ModelKernel) -> dict[str, str]:
    """One kernel's GPU time per decode token in the model bench's profile run."""
    return {
        "kernel": k.key,
        "n": num(k.dispatches, 0),
        "us": num(k.ns / 1e3, 1),
        "GB/s": num(k.gbs),
        "of copy": pct(k.copy_bw_share),
        "TFLOP/s": num(k.tflops, 2),
        "of GPU": pct(k.gpu_time_share),
    }


def pick(cells: list[dict[str, str]], columns: list[str]) -> list[list[str]]:
    return [[c[col] for col in columns] for c in cells]


def text_table(cells: list[dict[str, str]], columns: list[str], left: set[str]) -> str:
    return table(columns, pick(cells, columns), {i for i, c in enumerate(columns) if c not in left})
