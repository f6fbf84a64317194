"""The chart `shaderbay bench --plot` writes (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .formatting import num
from .results import KernelsResult, ModelResult, Result


def _pyplot() -> Any:
    import matplotlib  # lazily: matplotlib is the optional `bench` extra, needed only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(result: Result, path: str | Path) -> Path:
    return plot_kernels(result, path) if isinstance(result, KernelsResult) else plot_model(result, path)


def plot_model(result: ModelResult, path: str | Path) -> Path:
    """Decode and prefill tokens/s per backend (with the bandwidth ceiling), and each decode token's time split."""
    plt = _pyplot()
    rows = result.results
    names = [r.backend if r.decode else f"{r.backend}\n(error)" for r in rows] or ["(none)"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    model = result.model
    title = f"shaderbay bench: {model.name} ({model.dtype or result.settings.get('dtype', '')})"
    fig.suptitle(f"{title}, {result.machine.hostname} {result.date[:10]}")

    def rate_panel(ax: Any, rates: list[float | None], color: str, title: str) -> None:
        vals = [rate or 0.0 for rate in rates]
        bars = ax.bar(names[: len(rows)], vals, color=color)
        labels = [num(v) if r.decode else "error" for v, r in zip(vals, rows, strict=True)]
        ax.bar_label(bars, labels=labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("tokens/s")

    decode = [r.decode.tok_s if r.decode else None for r in rows]
    rate_panel(axes[0], decode, "tab:blue", "decode tokens/s (red: bandwidth ceiling)")
    ceilings = [(r.ceiling.tok_s, i) for i, r in enumerate(rows) if r.ceiling and r.ceiling.tok_s]
    if ceilings:
        top = max(rate or 0 for rate in decode)
        if max(c for c, _ in ceilings) > 20 * max(top, 1e-9):
            axes[0].set_yscale("log")
        for c, i in ceilings:
            axes[0].hlines(c, i - 0.4, i + 0.4, colors="tab:red", linestyles="dashed")
            axes[0].annotate(f"{c:,.0f}", (i, c), ha="center", va="bottom", fontsize=7, color="tab:red")
    prompt = result.settings.get("prefill_tokens")
    prefill = [r.prefill.tok_s if r.prefill else None for r in rows]
    rate_panel(axes[1], prefill, "tab:green", f"prefill tokens/s ({prompt}-token prompt)")

    ax = axes[2]
    parts = [("api_wall_share", "in the API", "tab:orange"), ("wait_share", "waiting", "tab:gray")]
    bottom = [0.0] * len(rows)
    for key, label, color in parts:
        vals = [100 * ((getattr(r.cpu, key) if r.cpu else None) or 0.0) for r in rows]
        ax.bar(names[: len(rows)], vals, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    other = [max(100 - b, 0.0) if r.cpu else 0.0 for b, r in zip(bottom, rows, strict=True)]
    ax.bar(names[: len(rows)], other, bottom=bottom, label="other host", color="tab:purple")
    gpu = [(i, 100 * r.gpu.gpu_share) for i, r in enumerate(rows) if r.gpu and r.gpu.gpu_share]
    if gpu:
        ax.scatter([p[0] for p in gpu], [p[1] for p in gpu], marker="D", color="black", zorder=3, label="GPU busy")
    api = [(i, 100 * r.cpu.api_share) for i, r in enumerate(rows) if r.cpu and r.cpu.api_share]
    if api:
        ax.scatter([p[0] for p in api], [p[1] for p in api], marker="_", s=400, color="red", zorder=3,
                   label="host CPU in the API")  # fmt: skip
    ax.axhline(80, color="black", linewidth=0.5, linestyle="dotted")
    ax.axhline(20, color="red", linewidth=0.5, linestyle="dotted")
    ax.set_ylim(0, 105)
    ax.set_title("one decode token: where its wall time goes (%)", fontsize=10)
    ax.set_ylabel("% of token wall time")
    ax.legend(fontsize=7, loc="upper right")
    for a in axes:
        a.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_kernels(result: KernelsResult, path: str | Path) -> Path:
    """Achieved GB/s per kernel and backend (decode shapes), with each backend's copy bandwidth."""
    plt = _pyplot()
    rows = [r for r in result.results if r.kernels]
    phases = ("decode", "prefill")
    fig, axes = plt.subplots(len(phases), 1, figsize=(13, 4.2 * len(phases)), squeeze=False)
    fig.suptitle(f"shaderbay bench kernels: {result.model.name}")
    for ax, phase in zip(axes[:, 0], phases, strict=True):
        names: list[str] = []
        for r in rows:
            for k in r.kernels:
                if k.phase == phase and k.name not in names:
                    names.append(k.name)
        width = 0.8 / max(len(rows), 1)
        for i, r in enumerate(rows):
            by = {k.name: k for k in r.kernels if k.phase == phase}
            vals = [(by[n].gbs if n in by else None) or 0 for n in names]
            xs = [j + i * width for j in range(len(names))]
            bars = ax.bar(xs, vals, width, label=r.backend)
            if r.copy_bandwidth and r.copy_bandwidth.gbs:
                ax.axhline(r.copy_bandwidth.gbs, color=bars.patches[0].get_facecolor() if bars.patches else None,
                           linestyle="dashed", linewidth=0.8)  # fmt: skip
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("GB/s")
        ax.set_title(f"{phase} shapes (dashed: copy bandwidth)")
        if rows:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
