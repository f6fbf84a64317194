"""Output: terminal tables, JSON, the matplotlib chart, the Chrome trace."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# --- formatting -------------------------------------------------------------------------------------


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


def _header(result: dict[str, Any]) -> list[str]:
    m = result.get("machine", {})
    s = result.get("settings", {})
    model = result.get("model", {})
    shape = model.get("shape") or {}
    lines = [f"shaderbay bench ({result['kind']})  {result.get('date', '')}"]
    cpu = f"{m.get('cpu', '?')} x{m.get('cpu_count', '?')}"
    lines.append(f"  machine: {m.get('hostname', '?')}, {cpu}, {m.get('platform', '')}")
    desc = model.get("name", "?")
    if shape:
        desc += (
            f" ({shape['n_layers']} layers, dim {shape['dim']}, {shape['n_heads']}/{shape['n_kv_heads']} heads, "
            f"ffn {shape['ffn_dim']}, vocab {shape['vocab_size']}, {shape['n_params'] / 1e6:.1f}M params)"
        )
    lines.append(f"  model: {desc}, {model.get('dtype') or s.get('dtype', '')}")
    if model.get("weights_bytes"):
        per_token = mib(model["weight_bytes_per_token"])
        lines.append(f"  weights {mib(model['weights_bytes'])} MiB; read per decoded token {per_token} MiB")
    return lines


# --- the model bench ---------------------------------------------------------------------------------


def model_report(result: dict[str, Any], top_kernels: int = 8) -> str:
    s = result.get("settings", {})
    out = _header(result)
    out.append(
        f"  decode: {s.get('new_tokens')} tokens after a {s.get('prompt_tokens')}-token prompt; prefill: "
        f"{s.get('prefill_tokens')} tokens; {s.get('repeats')} interleaved repetitions (medians)"
    )
    out.append("")
    rows = []
    for r in result["results"]:
        if not r.get("decode"):
            rows.append([r["backend"], "error", *["-"] * 10])
            continue
        cpu, gpu, ceil, load = r.get("cpu", {}), r.get("gpu", {}), r.get("ceiling") or {}, r.get("load", {})
        rows.append(
            [
                r["backend"],
                num(r["decode"]["tok_s"]),
                num(r["prefill"]["tok_s"]),
                num(r["decode"]["ms_per_token"], 2),
                num(load.get("cold", {}).get("total_s"), 2),
                num(load.get("warm", {}).get("total_s"), 2),
                pct(cpu.get("api_share")),
                pct(gpu.get("gpu_share")),
                num((r.get("copy_bandwidth") or {}).get("gbs")),
                num(ceil.get("tok_s")),
                pct(ceil.get("share")),
                (r.get("verdict") or {}).get("kind", "-"),
            ]
        )
    out.append(
        table(
            ["backend", "decode tok/s", "prefill tok/s", "ms/token", "cold start s", "warm start s", "API %",
             "GPU %", "copy GB/s", "ceiling tok/s", "of ceiling", "verdict"],
            rows,
            right=set(range(1, 11)),
        )
    )  # fmt: skip

    phases = ["backend", "read", "upload", "pipelines", "prepare", "record", "first_token"]
    rows = []
    for r in result["results"]:
        for label, start in (r.get("load") or {}).items():
            ph = start.get("phases", {})
            rows.append([r["backend"], label, num(start.get("total_s"), 3), *(num(ph.get(p), 3) for p in phases)])
    if rows:
        out += ["", "start to first token, seconds (cold: first start, file evicted from the page cache; warm: second)"]
        out.append(table(["backend", "start", "total", *phases], rows, right=set(range(2, 3 + len(phases)))))

    rows = []
    for r in result["results"]:
        m = r.get("memory") or {}
        if not m:
            continue
        need = (m.get("device_weights_bytes") or 0) + (m.get("device_kv_cache_bytes") or 0)
        over = m["device_bytes"] / need - 1 if need else None
        rows.append(
            [
                r["backend"],
                mib(m.get("host_rss_peak_bytes")),
                mib(m.get("host_rss_peak_delta_bytes")),
                mib(m.get("device_bytes")),
                mib(m.get("device_weights_bytes")),
                mib(m.get("device_kv_cache_bytes")),
                mib(m.get("device_scratch_bytes")),
                "-" if over is None else f"{100 * over:+.1f}%",
            ]
        )
    if rows:
        weights = result.get("model", {}).get("weights_bytes")
        out += ["", f"memory, MiB (the weights' own size: {mib(weights)}; host figures over the warm start)"]
        out.append(
            table(
                ["backend", "host RSS peak", "host RSS added", "device", "weights", "KV cache", "scratch",
                 "vs weights+KV"],
                rows,
            )
        )  # fmt: skip

    rows = []
    for r in result["results"]:
        cpu = r.get("cpu")
        if not cpu:
            continue
        calls = cpu.get("calls_per_token") or {}
        each = cpu.get("us_per_call") or {}
        rows.append(
            [
                r["backend"],
                num(cpu["api_cpu_ms_per_token"], 3),
                num(cpu["api_wall_ms_per_token"], 3),
                num(cpu["wait_ms_per_token"], 3),
                num(cpu["other_ms_per_token"], 3),
                num((r.get("gpu") or {}).get("gpu_ms_per_token"), 3),
                ", ".join(
                    f"{k} {v:g}" + (f" ({each[k]:.1f} us)" if k in each else "") for k, v in sorted(calls.items())
                ),
            ]
        )
    if rows:
        out += ["", "per decoded token, ms: host CPU inside the API, wall inside it, waiting, other host; GPU busy"]
        headers = ["backend", "API CPU", "API wall", "wait", "other", "GPU", "API calls per token (wall per call)"]
        out.append(table(headers, rows, set(range(1, 6))))

    for r in result["results"]:
        kernels = [k for k in r.get("kernels") or [] if k["phase"] == "decode"]
        if not kernels:
            continue
        copy = (r.get("copy_bandwidth") or {}).get("gbs")
        out += ["", f"{r['backend']}: decode kernels by GPU time per token (copy bandwidth {num(copy)} GB/s)"]
        rows = [
            [k["key"], num(k["dispatches"], 0), num(k["ns"] / 1e3, 1), num(k["gbs"]), pct(k["copy_bw_share"]),
             num(k.get("tflops"), 2), pct(k["gpu_time_share"])]
            for k in kernels[:top_kernels]
        ]  # fmt: skip
        out.append(table(["kernel", "n", "us", "GB/s", "of copy", "TFLOP/s", "of GPU"], rows))

    out.append("")
    for r in result["results"]:
        if r.get("error"):
            out.append(f"{r['backend']}: ERROR {r['error']}")
        elif r.get("verdict"):
            v = r["verdict"]
            out.append(f"{r['backend']}: {v['kind']}: {v['reason']} -> {v['suggestion']}")
    return "\n".join(out)


# --- the kernel micro-benches -----------------------------------------------------------------------------


def kernels_report(result: dict[str, Any]) -> str:
    out = _header(result)
    for r in result["results"]:
        out.append("")
        if r.get("error"):
            out.append(f"{r['backend']}: ERROR {r['error']}")
            continue
        copy = r.get("copy_bandwidth") or {}
        dev = r.get("device") or {}
        out.append(
            f"{r['backend']} ({dev.get('name', '?')}): copy bandwidth {num(copy.get('gbs'))} GB/s "
            f"({mib(copy.get('buffer_bytes'))} MiB buffers, {copy.get('source', '?')} time)"
        )
        rows = []
        for k in r["kernels"]:
            if k.get("error"):
                rows.append([k["phase"], k["name"], "-", "-", "-", "-", "-", "-", "-", k["error"][:60]])
                continue
            rows.append(
                [
                    k["phase"],
                    k["name"],
                    str(k.get("dispatches", 1)),
                    num(k["bytes"] / 2**10, 1),
                    num(k["ns"] / 1e3, 2),
                    num(k["gbs"], 2),
                    pct(k.get("copy_bw_share")),
                    num(k.get("tflops"), 2),
                    pct(k.get("tensor_core_share")),
                    k["source"],
                ]
            )
        headers = ["phase", "kernel", "n", "KiB", "us", "GB/s", "of copy", "TFLOP/s", "of TC peak", "timed by"]
        out.append(table(headers, rows, {2, 3, 4, 5, 6, 7, 8}))
    return "\n".join(out)


# --- files ---------------------------------------------------------------------------------------------------


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result, indent=2, default=_default) + "\n")
    return path


def _default(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def write_trace(trace: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(trace, default=_default))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_model(result: dict[str, Any], path: str | Path) -> Path:
    """Decode and prefill tokens/s per backend (with the bandwidth ceiling), and each decode token's time split."""
    plt = _pyplot()
    rows = result["results"]
    names = [r["backend"] if r.get("decode") else f"{r['backend']}\n(error)" for r in rows] or ["(none)"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    model = result.get("model", {})
    title = f"shaderbay bench: {model.get('name', '?')} ({model.get('dtype') or result['settings'].get('dtype', '')})"
    fig.suptitle(f"{title}, {result.get('machine', {}).get('hostname', '')} {result.get('date', '')[:10]}")

    def rate_panel(ax: Any, key: str, color: str, title: str) -> None:
        vals = [((r.get(key) or {}).get("tok_s") or 0.0) for r in rows]
        bars = ax.bar(names[: len(rows)], vals, color=color)
        labels = [num(v) if r.get(key) else "error" for v, r in zip(vals, rows, strict=True)]
        ax.bar_label(bars, labels=labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("tokens/s")

    rate_panel(axes[0], "decode", "tab:blue", "decode tokens/s (red: bandwidth ceiling)")
    ceilings = [((r.get("ceiling") or {}).get("tok_s"), i) for i, r in enumerate(rows)]
    ceilings = [(c, i) for c, i in ceilings if c]
    if ceilings:
        top = max((r.get("decode") or {}).get("tok_s") or 0 for r in rows)
        if max(c for c, _ in ceilings) > 20 * max(top, 1e-9):
            axes[0].set_yscale("log")
        for c, i in ceilings:
            axes[0].hlines(c, i - 0.4, i + 0.4, colors="tab:red", linestyles="dashed")
            axes[0].annotate(f"{c:,.0f}", (i, c), ha="center", va="bottom", fontsize=7, color="tab:red")
    prompt = result.get("settings", {}).get("prefill_tokens")
    rate_panel(axes[1], "prefill", "tab:green", f"prefill tokens/s ({prompt}-token prompt)")

    ax = axes[2]
    parts = [("api_wall_share", "in the API", "tab:orange"), ("wait_share", "waiting", "tab:gray")]
    bottom = [0.0] * len(rows)
    for key, label, color in parts:
        vals = [100 * ((r.get("cpu") or {}).get(key) or 0.0) for r in rows]
        ax.bar(names[: len(rows)], vals, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    other = [max(100 - b, 0.0) if r.get("cpu") else 0.0 for b, r in zip(bottom, rows, strict=True)]
    ax.bar(names[: len(rows)], other, bottom=bottom, label="other host", color="tab:purple")
    for key, label, marker in (("gpu_share", "GPU busy", "D"),):
        pts = [(i, 100 * (r.get("gpu") or {}).get(key)) for i, r in enumerate(rows) if (r.get("gpu") or {}).get(key)]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color="black", zorder=3, label=label)
    api = [(i, 100 * r["cpu"]["api_share"]) for i, r in enumerate(rows) if (r.get("cpu") or {}).get("api_share")]
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


def plot_kernels(result: dict[str, Any], path: str | Path) -> Path:
    """Achieved GB/s per kernel and backend (decode shapes), with each backend's copy bandwidth."""
    plt = _pyplot()
    rows = [r for r in result["results"] if r.get("kernels")]
    phases = ("decode", "prefill")
    fig, axes = plt.subplots(len(phases), 1, figsize=(13, 4.2 * len(phases)), squeeze=False)
    fig.suptitle(f"shaderbay bench kernels: {result.get('model', {}).get('name', '?')}")
    for ax, phase in zip(axes[:, 0], phases, strict=True):
        names: list[str] = []
        for r in rows:
            for k in r["kernels"]:
                if k["phase"] == phase and k["name"] not in names:
                    names.append(k["name"])
        width = 0.8 / max(len(rows), 1)
        for i, r in enumerate(rows):
            by = {k["name"]: k for k in r["kernels"] if k["phase"] == phase}
            vals = [(by.get(n) or {}).get("gbs") or 0 for n in names]
            xs = [j + i * width for j in range(len(names))]
            bars = ax.bar(xs, vals, width, label=r["backend"])
            copy = (r.get("copy_bandwidth") or {}).get("gbs")
            if copy:
                ax.axhline(copy, color=bars.patches[0].get_facecolor() if bars.patches else None, linestyle="dashed",
                           linewidth=0.8)  # fmt: skip
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("GB/s")
        ax.set_title(f"{phase} shapes (dashed: copy bandwidth)")
        if rows:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# --- benches/RESULTS.md entries ---------------------------------------------------------------------------


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any], note: str = "") -> str:
    """An entry for benches/RESULTS.md: title, command, machine, the tables; marks non-GPU devices as such."""
    m, s, model = result.get("machine", {}), result.get("settings", {}), result.get("model", {})
    rows = result["results"]
    types = {(r.get("device") or {}).get("type") for r in rows if r.get("device")}
    if types and types <= {"cpu", "software"}:
        note = note or "CPU and software (lavapipe) devices only: not GPU figures"
    dtype = model.get("dtype") or s.get("dtype", "")
    title = f"### {result.get('date', '')[:16].replace('T', ' ')} UTC: {model.get('name', '?')}, {dtype}"
    out = [title + (f" ({note})" if note else ""), "", f"`{result.get('command', '')}`", ""]
    out.append(f"- machine: {m.get('hostname', '?')}, {m.get('cpu', '?')} x{m.get('cpu_count', '?')}, "
               f"{m.get('platform', '')}, Python {m.get('python', '')}, env {m.get('env') or {}}")  # fmt: skip
    for r in rows:
        d = r.get("device") or {}
        out.append(f"- {r['backend']}: {d.get('name', '-')} ({d.get('type', '-')}; {d.get('features', '-')})")
    if result["kind"] == "model":
        shape = model.get("shape") or {}
        out.append(
            f"- model: {shape.get('n_params', 0) / 1e6:.1f}M parameters, "
            f"weights {mib(model.get('weights_bytes'))} MiB, "
            f"{mib(model.get('weight_bytes_per_token'))} MiB read per token; decode {s.get('new_tokens')} tokens after "
            f"{s.get('prompt_tokens')}, prefill {s.get('prefill_tokens')}, {s.get('repeats')} interleaved repetitions"
        )
        out += ["", _md_model_table(rows)]
        kernels = []
        for r in rows:
            for k in [k for k in r.get("kernels") or [] if k["phase"] == "decode"][:6]:
                kernels.append([r["backend"], f"`{k['key']}`", num(k["ns"] / 1e3, 1), num(k["gbs"]),
                                pct(k["copy_bw_share"]), num(k.get("tflops"), 2),
                                pct(k["gpu_time_share"])])  # fmt: skip
        if kernels:
            out += ["", "Top decode kernels by GPU time per token:", ""]
            headers = ["backend", "kernel", "us/token", "GB/s", "of copy", "TFLOP/s", "of GPU"]
            out.append(_md_table(headers, kernels))
        verdicts = [
            f"- {r['backend']}: **{r['verdict']['kind']}**: {r['verdict']['reason']}" for r in rows if r.get("verdict")
        ]
        out += ["", *verdicts] if verdicts else []
    else:
        table_rows = []
        for r in rows:
            for k in r.get("kernels") or []:
                if "error" not in k:
                    table_rows.append([r["backend"], k["phase"], k["name"], num(k["ns"] / 1e3, 2), num(k["gbs"], 2),
                                       pct(k.get("copy_bw_share")), num(k.get("tflops"), 2),
                                       pct(k.get("tensor_core_share")), k["source"]])  # fmt: skip
        copies = ", ".join(f"{r['backend']} {num((r.get('copy_bandwidth') or {}).get('gbs'))} GB/s" for r in rows)
        out += ["", f"Copy bandwidth: {copies}", ""]
        headers = ["backend", "phase", "kernel", "us", "GB/s", "of copy", "TFLOP/s", "of TC peak", "timed by"]
        out.append(_md_table(headers, table_rows))
    errors = [f"- {r['backend']}: error: {r['error']}" for r in rows if r.get("error")]
    out += ["", *errors] if errors else []
    return "\n".join(out) + "\n"


def _md_model_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        if not r.get("decode"):
            body.append([r["backend"], *["-"] * 11, "error"])
            continue
        load, cpu, gpu, mem = r.get("load", {}), r.get("cpu", {}), r.get("gpu", {}), r.get("memory", {})
        ceil = r.get("ceiling") or {}
        body.append(
            [
                r["backend"],
                num(r["decode"]["tok_s"]),
                num(r["prefill"]["tok_s"]),
                num(load.get("cold", {}).get("total_s"), 2),
                num(load.get("warm", {}).get("total_s"), 2),
                pct(cpu.get("api_share")),
                pct(gpu.get("gpu_share")),
                num((r.get("copy_bandwidth") or {}).get("gbs")),
                num(ceil.get("tok_s")),
                pct(ceil.get("share")),
                mib(mem.get("host_rss_peak_bytes")),
                mib(mem.get("device_bytes")),
                (r.get("verdict") or {}).get("kind", "-"),
            ]
        )
    headers = ["backend", "decode tok/s", "prefill tok/s", "cold start s", "warm start s", "API (CPU) %", "GPU %",
               "copy GB/s", "ceiling tok/s", "of ceiling", "host RSS peak MiB", "device MiB", "verdict"]  # fmt: skip
    return _md_table(headers, body)


def main(argv: list[str] | None = None) -> int:
    """`python -m shaderbay.benches.report RESULT.json [--note TEXT] [--text]`: a RESULTS.md entry (or the
    terminal tables) from a saved --json result, e.g. one brought back from the GPU machine."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m shaderbay.benches.report", description=main.__doc__)
    parser.add_argument("json")
    parser.add_argument("--note", default="")
    parser.add_argument("--text", action="store_true", help="the terminal tables instead of markdown")
    args = parser.parse_args(argv)
    result = json.loads(Path(args.json).read_text())
    if args.text:
        print(kernels_report(result) if result["kind"] == "kernels" else model_report(result))
    else:
        print(markdown(result, args.note), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
