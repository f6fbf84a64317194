"""`--streams` in the text output and RESULTS.md: the aggregate rate at each stream count, what bounds
each step (benches/model_kernels.py's split) and its GPU time by kernel, as the one-stream tables have it."""

from __future__ import annotations

from typing import Any

from .formatting import md_table, model_kernel_cells, num, pct, pick, table, text_table
from .results import ModelRow, Streams

STREAMS_COLUMNS = ["backend", "streams", "tok/s", "ms/step", "API CPU", "GPU", "verdict"]
KERNEL_COLUMNS = ["kernel", "n", "us", "GB/s", "of copy", "TFLOP/s", "of GPU"]
SPLIT_NOTE = (
    "what bounds each step: GPU time by kernel (profiled run, summed timestamps) over the timed step's wall "
    "time; GPU idle: the rest (the host, gaps between submits)"
)


def streams_rows(rows: list[ModelRow]) -> list[list[str]]:
    """One row per backend and stream count."""
    return [
        [r.backend, str(x.streams), num(x.tok_s), num(x.ms_per_step, 3), pct(x.api_share), pct(x.gpu_share),
         x.verdict.kind if x.verdict else "-"]
        for r in rows
        for x in r.streams or []
    ]  # fmt: skip


def bound_line(x: Streams) -> str | None:
    """One line: the step's wall time and each kernel class's share of it, and how close the GPU sum comes."""
    if not (b := x.split):
        return None
    return (
        f"{num(b.wall_ms, 3)} ms a step: matmul {pct(b.matmul)}, decode_attention {pct(b.attention)}, "
        f"argmax/sample {pct(b.pick)}, other kernels {pct(b.other)}, GPU idle {pct(b.idle)} "
        f"(GPU busy {num(b.gpu_ms, 3)} ms = {pct(b.gpu_ms / b.wall_ms)} of the timed step; "
        f"profiled step {num(b.profile_wall_ms, 3)} ms)"
    )


def _profiled(rows: list[ModelRow]) -> list[tuple[ModelRow, Streams]]:
    return [(r, x) for r in rows for x in r.streams or [] if x.split or x.kernels]


def streams_text(rows: list[ModelRow], settings: dict[str, Any], top_kernels: int = 8) -> list[str]:
    """The terminal's lines for `--streams` (none without it)."""
    if not (streams := streams_rows(rows)):
        return []
    out = [
        "",
        f"aggregate decode with many streams at once (prompts of {settings.get('prompt_tokens')} tokens, "
        f"{settings.get('new_tokens')} new tokens each; steady state)",
        table(STREAMS_COLUMNS, streams, {1, 2, 3, 4, 5}),
    ]
    profiled = _profiled(rows)
    if profiled:
        out += ["", SPLIT_NOTE]
        out += [f"  {r.backend} at {x.streams}: {bound_line(x)}" for r, x in profiled if x.split]
    for r, x in profiled:
        kernels = [model_kernel_cells(k) for k in (x.kernels or [])[:top_kernels]]
        if kernels:
            out += ["", f"{r.backend} at {x.streams} streams: decode kernels by GPU time per step"]
            out.append(text_table(kernels, KERNEL_COLUMNS, {"kernel"}))
    return out


def streams_markdown(rows: list[ModelRow], settings: dict[str, Any], top_kernels: int = 6) -> list[str]:
    """The RESULTS.md entry's lines for `--streams` (none without it)."""
    if not (streams := streams_rows(rows)):
        return []
    out = [
        "",
        f"Aggregate decode, {settings.get('prompt_tokens')}-token prompts and {settings.get('new_tokens')} new "
        "tokens per stream (steady state):",
        "",
        md_table(STREAMS_COLUMNS, streams),
    ]
    out += [
        f"- {r.backend} at {x.streams}: **{x.verdict.kind}**: {x.verdict.reason}"
        for r in rows
        for x in r.streams or []
        if x.verdict
    ]
    profiled = _profiled(rows)
    if lines := [f"- {r.backend} at {x.streams}: {bound_line(x)}" for r, x in profiled if x.split]:
        out += ["", SPLIT_NOTE[0].upper() + SPLIT_NOTE[1:] + ":", "", *lines]
    kernels = [
        {"backend": r.backend, "streams": str(x.streams), **model_kernel_cells(k), "kernel": f"`{k.key}`"}
        for r, x in profiled
        for k in (x.kernels or [])[:top_kernels]
    ]
    if kernels:
        out += ["", "Top decode kernels by GPU time per step, each stream count:", ""]
        out.append(
            md_table(["backend", "streams", *KERNEL_COLUMNS], pick(kernels, ["backend", "streams", *KERNEL_COLUMNS]))
        )
    return out
