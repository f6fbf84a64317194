"""Text output: the terminal tables and benches/RESULTS.md entries, from one row builder per record.

Each `*_cells` function formats one record's figures once, as {column: text}; the terminal and the
markdown tables pick their columns from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shaderbay.errors import ShaderbayError

from .formatting import md_table, mib, model_kernel_cells, num, pct, pick, table, text_table
from .report_streams import streams_markdown, streams_text
from .results import KernelsResult, MicroKernel, ModelResult, ModelRow, Result, json_default, load_result

# --- one row per record -------------------------------------------------------------------------------

SUMMARY_FIGURES = [
    "decode tok/s", "prefill tok/s", "ms/token", "cold start s", "warm start s", "API %", "GPU %", "copy GB/s",
    "ceiling tok/s", "of ceiling", "host RSS peak MiB", "device MiB", "verdict",
]  # fmt: skip
TEXT_SUMMARY = ["backend", *SUMMARY_FIGURES[:10], "verdict"]
MD_SUMMARY = ["backend", *(c for c in SUMMARY_FIGURES if c != "ms/token")]
MICRO_FIGURES = ["n", "KiB", "us", "GB/s", "of copy", "TFLOP/s", "of TC peak", "timed by"]


def summary_cells(r: ModelRow) -> dict[str, str]:
    """A backend's headline figures in the model bench."""
    cells = {"backend": r.backend}
    if not r.decode:
        return cells | dict.fromkeys(SUMMARY_FIGURES, "-") | {"decode tok/s": "error"}
    load, cpu, gpu, ceil, mem = r.load, r.cpu, r.gpu, r.ceiling, r.memory
    return cells | {
        "decode tok/s": num(r.decode.tok_s),
        "prefill tok/s": num(r.prefill.tok_s if r.prefill else None),
        "ms/token": num(r.decode.ms_per_token, 2),
        "cold start s": num(load["cold"].total_s if "cold" in load else None, 2),
        "warm start s": num(load["warm"].total_s if "warm" in load else None, 2),
        "API %": pct(cpu.api_share if cpu else None),
        "GPU %": pct(gpu.gpu_share if gpu else None),
        "copy GB/s": num(r.copy_bandwidth.gbs if r.copy_bandwidth else None),
        "ceiling tok/s": num(ceil.tok_s if ceil else None),
        "of ceiling": pct(ceil.share if ceil else None),
        "host RSS peak MiB": mib(mem.host_rss_peak_bytes if mem else None),
        "device MiB": mib(mem.device_bytes if mem else None),
        "verdict": r.verdict.kind if r.verdict else "-",
    }


def micro_cells(k: MicroKernel) -> dict[str, str]:
    """One kernel micro-bench case (its error, cut short, where the figures would be)."""
    if k.error:
        return {"phase": k.phase, "kernel": k.name} | dict.fromkeys(MICRO_FIGURES, "-") | {"timed by": k.error[:60]}
    return {
        "phase": k.phase,
        "kernel": k.name,
        "n": str(k.dispatches),
        "KiB": num(k.bytes / 2**10, 1),
        "us": num(k.ns / 1e3, 2),
        "GB/s": num(k.gbs, 2),
        "of copy": pct(k.copy_bw_share),
        "TFLOP/s": num(k.tflops, 2),
        "of TC peak": pct(k.tensor_core_share),
        "timed by": k.source,
    }


# --- the terminal --------------------------------------------------------------------------------------


def text(result: Result) -> str:
    return kernels_text(result) if isinstance(result, KernelsResult) else model_text(result)


def _header(result: Result) -> list[str]:
    m, model, shape = result.machine, result.model, result.model.shape
    lines = [f"shaderbay bench ({result.kind})  {result.date}"]
    lines.append(f"  machine: {m.hostname}, {m.cpu} x{m.cpu_count}, {m.platform}")
    desc = model.name
    if shape:
        desc += (
            f" ({shape.n_layers} layers, dim {shape.dim}, {shape.n_heads}/{shape.n_kv_heads} heads, "
            f"ffn {shape.ffn_dim}, vocab {shape.vocab_size}, {shape.n_params / 1e6:.1f}M params)"
        )
    lines.append(f"  model: {desc}, {model.dtype or result.settings.get('dtype', '')}")
    if model.weights_bytes:
        per_token = mib(model.weight_bytes_per_token)
        lines.append(f"  weights {mib(model.weights_bytes)} MiB; read per decoded token {per_token} MiB")
    return lines


def model_text(result: ModelResult, top_kernels: int = 8) -> str:
    s, rows = result.settings, result.results
    out = _header(result)
    out.append(
        f"  decode: {s.get('new_tokens')} tokens after a {s.get('prompt_tokens')}-token prompt; prefill: "
        f"{s.get('prefill_tokens')} tokens; {s.get('repeats')} interleaved repetitions (medians)"
    )
    out += ["", text_table([summary_cells(r) for r in rows], TEXT_SUMMARY, {"backend", "verdict"})]

    phases = ["backend", "read", "upload", "pipelines", "prepare", "record", "first_token"]
    starts = [
        [r.backend, label, num(st.total_s, 3), *(num(getattr(st.phases, p), 3) for p in phases)]
        for r in rows
        for label, st in r.load.items()
    ]
    if starts:
        out += ["", "start to first token, seconds (cold: first start, file evicted from the page cache; warm: second)"]
        out.append(table(["backend", "start", "total", *phases], starts, right=set(range(2, 3 + len(phases)))))

    memory = []
    for r in rows:
        if not (m := r.memory):
            continue
        need = m.device_weights_bytes + m.device_kv_cache_bytes
        over = m.device_bytes / need - 1 if need else None
        memory.append([r.backend, mib(m.host_rss_peak_bytes), mib(m.host_rss_peak_delta_bytes), mib(m.device_bytes),
                       mib(m.device_weights_bytes), mib(m.device_kv_cache_bytes), mib(m.device_scratch_bytes),
                       "-" if over is None else f"{100 * over:+.1f}%"])  # fmt: skip
    if memory:
        weights = mib(result.model.weights_bytes)
        out += ["", f"memory, MiB (the weights' own size: {weights}; host figures over the warm start)"]
        headers = ["backend", "host RSS peak", "host RSS added", "device", "weights", "KV cache", "scratch"]
        out.append(table([*headers, "vs weights+KV"], memory))

    cpu_rows = []
    for r in rows:
        if not (cpu := r.cpu):
            continue
        each = cpu.us_per_call
        calls = ", ".join(
            f"{k} {v:g}" + (f" ({each[k]:.1f} us)" if k in each else "") for k, v in sorted(cpu.calls_per_token.items())
        )
        cpu_rows.append([r.backend, num(cpu.api_cpu_ms_per_token, 3), num(cpu.api_wall_ms_per_token, 3),
                         num(cpu.wait_ms_per_token, 3), num(cpu.other_ms_per_token, 3),
                         num(r.gpu.gpu_ms_per_token if r.gpu else None, 3), calls])  # fmt: skip
    if cpu_rows:
        out += ["", "per decoded token, ms: host CPU inside the API, wall inside it, waiting, other host; GPU busy"]
        headers = ["backend", "API CPU", "API wall", "wait", "other", "GPU", "API calls per token (wall per call)"]
        out.append(table(headers, cpu_rows, set(range(1, 6))))

    for r in rows:
        kernels = [model_kernel_cells(k) for k in r.kernels or [] if k.phase == "decode"][:top_kernels]
        if kernels:
            copy = r.copy_bandwidth.gbs if r.copy_bandwidth else None
            out += ["", f"{r.backend}: decode kernels by GPU time per token (copy bandwidth {num(copy)} GB/s)"]
            out.append(text_table(kernels, list(kernels[0]), {"kernel"}))

    out += streams_text(rows, s, top_kernels)

    out.append("")
    for r in rows:
        if r.error:
            out.append(f"{r.backend}: ERROR {r.error}")
        elif v := r.verdict:
            out.append(f"{r.backend}: {v.kind}: {v.reason} -> {v.suggestion}")
    return "\n".join(out)


def kernels_text(result: KernelsResult) -> str:
    out = _header(result)
    for r in result.results:
        out.append("")
        if r.error:
            out.append(f"{r.backend}: ERROR {r.error}")
            continue
        copy = r.copy_bandwidth
        out.append(
            f"{r.backend} ({r.device.name if r.device else '?'}): copy bandwidth {num(copy.gbs if copy else None)} "
            f"GB/s ({mib(copy.buffer_bytes if copy else None)} MiB buffers, {copy.source if copy else '?'} time)"
        )
        out.append(text_table([micro_cells(k) for k in r.kernels or []], ["phase", "kernel", *MICRO_FIGURES],
                               {"phase", "kernel", "timed by"}))  # fmt: skip
    return "\n".join(out)


# --- benches/RESULTS.md entries ---------------------------------------------------------------------------


def markdown(result: Result, note: str = "") -> str:
    """An entry for benches/RESULTS.md: title, command, machine, the tables; marks non-GPU devices as such."""
    m, s, model, rows = result.machine, result.settings, result.model, result.results
    types = {r.device.type for r in rows if r.device}
    if types and types <= {"cpu", "software"}:
        note = note or "CPU and software (lavapipe) devices only: not GPU figures"
    dtype = model.dtype or s.get("dtype", "")
    title = f"### {result.date[:16].replace('T', ' ')} UTC: {model.name}, {dtype}"
    out = [title + (f" ({note})" if note else ""), "", f"`{result.command}`", ""]
    out.append(f"- machine: {m.hostname}, {m.cpu} x{m.cpu_count}, {m.platform}, Python {m.python}, env {m.env}")
    for r in rows:
        d = r.device
        out.append(f"- {r.backend}: {d.name} ({d.type}; {d.features})" if d else f"- {r.backend}: - (-; -)")
    if isinstance(result, ModelResult):
        n_params = model.shape.n_params if model.shape else 0
        out.append(
            f"- model: {n_params / 1e6:.1f}M parameters, weights {mib(model.weights_bytes)} MiB, "
            f"{mib(model.weight_bytes_per_token)} MiB read per token; decode {s.get('new_tokens')} tokens after "
            f"{s.get('prompt_tokens')}, prefill {s.get('prefill_tokens')}, {s.get('repeats')} interleaved repetitions"
        )
        out += ["", md_table(MD_SUMMARY, pick([summary_cells(r) for r in rows], MD_SUMMARY))]
        kernels = [  # kernel keys in code spans
            {"backend": r.backend, **model_kernel_cells(k), "kernel": f"`{k.key}`"}
            for r in rows
            for k in [k for k in r.kernels or [] if k.phase == "decode"][:6]
        ]
        if kernels:
            out += ["", "Top decode kernels by GPU time per token:", ""]
            columns = ["backend", "kernel", "us", "GB/s", "of copy", "TFLOP/s", "of GPU"]
            out.append(md_table(columns, pick(kernels, columns)))
        verdicts = [f"- {r.backend}: **{r.verdict.kind}**: {r.verdict.reason}" for r in rows if r.verdict]
        out += ["", *verdicts] if verdicts else []
        out += streams_markdown(rows, s)
    else:
        kernels = [{"backend": r.backend, **micro_cells(k)} for r in rows for k in r.kernels or [] if not k.error]
        copies = ", ".join(f"{r.backend} {num(r.copy_bandwidth.gbs if r.copy_bandwidth else None)} GB/s" for r in rows)
        out += ["", f"Copy bandwidth: {copies}", ""]
        columns = ["backend", "phase", "kernel", "us", "GB/s", "of copy", "TFLOP/s", "of TC peak", "timed by"]
        out.append(md_table(columns, pick(kernels, columns)))
    errors = [f"- {r.backend}: error: {r.error}" for r in rows if r.error]
    out += ["", *errors] if errors else []
    return "\n".join(out) + "\n"


# --- files -------------------------------------------------------------------------------------------------


def write_trace(trace: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(trace, default=json_default))
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m shaderbay.benches.report RESULT.json [--note TEXT] [--text]`: a RESULTS.md entry (or the
    terminal tables) from a saved --json result, e.g. one brought back from the GPU machine."""
    parser = argparse.ArgumentParser(prog="python -m shaderbay.benches.report", description=main.__doc__)
    parser.add_argument("json")
    parser.add_argument("--note", default="")
    parser.add_argument("--text", action="store_true", help="the terminal tables instead of markdown")
    args = parser.parse_args(argv)
    try:
        result = load_result(Path(args.json).read_text())
    except (OSError, ShaderbayError) as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    if args.text:
        print(text(result))
    else:
        print(markdown(result, args.note), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
