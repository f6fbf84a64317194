"""`shaderbay bench`: compare backends on one model; `shaderbay bench kernels`: per-kernel micro-benches.

    shaderbay bench --synthetic smollm2-135m --backend all --json out.json --plot out.png --trace out.trace.json
    shaderbay bench kernels --synthetic llama-3.2-1b --backend vulkan,wgpu
    python -m shaderbay.benches ...          (the same)

Every backend runs in this one process (after a crash check of each in a child process);
a backend that fails gets its error in its row and the others go on.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from typing import Any

from shaderbay.errors import ShaderbayError
from shaderbay.models.default import DEFAULT_MODEL_NAME, default_gguf_path
from shaderbay.models.synthetic import MIXES, normalize_dtype
from shaderbay.plugins import discover
from shaderbay.progress import Progress

from . import plots, report
from .kernel_cases import model_cases
from .kernels import bench_kernel_backends
from .machine import machine_info
from .model_bench import bench_model
from .model_settings import SYNTHETIC_DTYPE, Settings
from .model_summary import model_info
from .probe import Tracks
from .results import SCHEMA, KernelsResult, ModelResult, Result, write_json
from .shapes import checkpoint_shape, named_shape, synthetic_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument(
        "what",
        nargs="?",
        choices=("model", "kernels"),
        default="model",
        help="model (default): the whole model per backend; kernels: each catalogue kernel at the model's shapes",
    )
    parser.add_argument("--backend", default="all", help="comma-separated backend names, or 'all' (default)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="PATH", help="a checkpoint directory or GGUF file (default: the default model)")
    src.add_argument(
        "--synthetic", metavar="NAME", help=f"random weights of a named shape: {', '.join(synthetic_names())}"
    )
    parser.add_argument(
        "--dtype",
        type=_dtype,
        help="weight dtype: float16 (synthetic weights' default), bfloat16, float32 (the default model converted to "
        "it; unset, its GGUF as it is), or a GGUF block format for synthetic weights "
        "(q8_0, q4_0, q4_1, q4_k, q6_k: quantized by the reference, held in memory), or q4_k_m: llama.cpp's mix "
        "of q4_k and q6_k (`bench` only, not `bench kernels`)",
    )
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt before decoding (default 16)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per decode run (default 128)")
    parser.add_argument("--prefill-tokens", type=int, default=512, help="prompt length of the prefill run (512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per backend, interleaved (3)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=90.0,
        metavar="S",
        help="seconds of timed repetitions per backend; a slower one skips the remaining repetitions (90)",
    )
    parser.add_argument(
        "--streams",
        type=_counts,
        default=[],
        metavar="N,N,...",
        help="also aggregate decode tok/s with N sequences at once, for each N (e.g. 1,4,16,64; the issue's "
        "figures use --prompt-tokens 128 --new-tokens 128)",
    )
    parser.add_argument(
        "--no-batch-invariance",
        action="store_true",
        help="with --streams: load(batch_invariant=False): one row on the matrix-vector kernels, batches on the "
        "tensor cores (a sequence's last bits may then depend on its batch)",
    )
    parser.add_argument("--max-context", type=int, help="KV-cache positions (default: what the runs need)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; else sampled")
    parser.add_argument("--target", type=float, metavar="TOK_S", help="decode tokens/s counted as acceptable")
    parser.add_argument(
        "--in-memory", action="store_true", help="load synthetic weights from memory, not from a safetensors file"
    )
    parser.add_argument("--no-preflight", action="store_true", help="skip the crash check of each backend")
    parser.add_argument(
        "--copy-mib", type=int, default=512, help="device memory the bandwidth runs (a copy, a stream) use (512)"
    )
    parser.add_argument("--min-time", type=float, default=0.1, help="kernels: seconds spent timing each kernel")
    parser.add_argument("--phases", default="decode,prefill", help="kernels: which shapes (decode,prefill)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="write a chart (matplotlib)")
    parser.add_argument("--trace", metavar="FILE", help="write a Chrome trace (open in Perfetto or chrome://tracing)")
    parser.add_argument("--markdown", metavar="FILE", help="append the run as an entry to FILE (benches/RESULTS.md)")
    parser.add_argument("--note", default="", help="a note for the --markdown entry's title (e.g. the change measured)")
    parser.add_argument("--quiet", action="store_true", help="no table on stdout")


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--streams takes stream counts like 1,4,16,64, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"--streams takes stream counts >= 1, got {text!r}")
    return counts


def _dtype(text: str) -> str:
    try:
        return normalize_dtype(text)
    except ShaderbayError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def backend_names(spec: str) -> list[str]:
    if spec.strip().lower() == "all":
        return [e.name for e in sorted(discover().values(), key=lambda e: e.priority)]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def _command(argv: list[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        args = args[1:]
    return " ".join(["shaderbay bench", *(shlex.quote(a) for a in args)])


def _envelope(settings: dict[str, Any], command: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": settings,
    }


class Steps:
    """The progress bar (core's Progress: drawn on a terminal, or with SHADERBAY_PROGRESS=1) as a step counter."""

    def __init__(self, label: str, total: int):
        self.bar = Progress(label, total)
        self.bar.__enter__()

    def __call__(self, label: str) -> None:
        self.bar.update(1, label)

    def close(self) -> None:
        self.bar.close()


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    names = backend_names(args.backend)
    if not names:
        print("shaderbay bench: no backends selected", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.new_tokens < 2 or args.prompt_tokens < 1 or args.prefill_tokens < 1:
        print("shaderbay bench: --repeats, --prompt-tokens and --prefill-tokens must be >= 1, --new-tokens >= 2",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.what == "kernels" and args.dtype in MIXES:
        print(f"shaderbay bench kernels: times one weight format at a time; {args.dtype} mixes "
              f"{' and '.join(MIXES[args.dtype])}", file=sys.stderr)  # fmt: skip
        return 2
    tracks = Tracks()
    settings: dict[str, Any] = {
        "backends": names,
        "model": args.model,
        "synthetic": args.synthetic,
        "dtype": args.dtype,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "prefill_tokens": args.prefill_tokens,
        "repeats": args.repeats,
        "temperature": args.temperature,
        "copy_bytes": args.copy_mib << 20,
        "streams": args.streams,
    }
    run_bench = _run_kernels if args.what == "kernels" else _run_model
    result = run_bench(args, names, settings, tracks, _envelope(settings, _command(argv)))
    if not args.quiet:
        print(report.text(result))
    if args.json:
        write_json(result, args.json)
    if args.plot:
        plots.plot(result, args.plot)
    if args.trace:
        report.write_trace(tracks.chrome_trace(), args.trace)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + report.markdown(result, args.note))
    return 0 if any(r.ok for r in result.results) else 1


def _run_model(
    args: argparse.Namespace, names: list[str], settings: dict[str, Any], tracks: Tracks, envelope: dict[str, Any]
) -> Result:
    s = Settings(
        backends=names,
        model=args.model,
        synthetic=args.synthetic,
        dtype=args.dtype,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        prefill_tokens=args.prefill_tokens,
        repeats=args.repeats,
        max_context=args.max_context,
        temperature=args.temperature,
        in_memory=args.in_memory,
        copy_bytes=args.copy_mib << 20,
        preflight=not args.no_preflight,
        target_tok_s=args.target,
        time_budget=args.time_budget,
        streams=args.streams,
        batch_invariant=not args.no_batch_invariance,
    )
    settings.update(
        max_context=s.context(), in_memory=s.in_memory, target_tok_s=s.target_tok_s, time_budget=s.time_budget
    )
    steps = Steps("bench", 2 + len(names) * (5 + args.repeats))
    try:
        model, rows = bench_model(s, tracks, steps)
    finally:
        steps.close()
    return ModelResult(**envelope, model=model, results=rows)


def _run_kernels(
    args: argparse.Namespace, names: list[str], settings: dict[str, Any], tracks: Tracks, envelope: dict[str, Any]
) -> Result:
    if args.model or not args.synthetic and args.dtype is None:  # a checkpoint's own, the default model's GGUF
        shape, wdtype = checkpoint_shape(args.model or default_gguf_path(), args.model or DEFAULT_MODEL_NAME)
    else:  # the default model converted to a float dtype has the smollm2-135m shape
        shape, wdtype = named_shape(args.synthetic or "smollm2-135m"), args.dtype or SYNTHETIC_DTYPE
    context = args.prompt_tokens + args.new_tokens // 2  # the mean live context of a decode run
    max_context = max(args.max_context or 0, args.prompt_tokens + args.new_tokens, args.prefill_tokens)
    phases = {p.strip() for p in args.phases.split(",")}
    cache_dtype = "f16" if wdtype in ("f16", "bf16") else "f32"  # the model's choice on a device with f16
    cases = model_cases(shape, wdtype, args.prefill_tokens, context, max_context, cache_dtype)
    cases = [c for c in cases if c.phase in phases]
    settings.update(min_time=args.min_time, phases=sorted(phases), decode_context=context, max_context=max_context)
    steps = Steps("bench kernels", len(names) * (len(cases) + 1))
    try:
        rows = bench_kernel_backends(
            names, cases, min_time=args.min_time, copy_bytes=args.copy_mib << 20, tracks=tracks, note=steps
        )
    finally:
        steps.close()
    return KernelsResult(**envelope, model=model_info(shape, shape.name, wdtype), results=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shaderbay bench")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args, argv)
    except ShaderbayError as exc:
        print(f"shaderbay bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
