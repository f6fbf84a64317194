"""Per-kernel GPU time of profiled steps (the "Top decode kernels" tables), and where a step's wall time went.

Both the one-stream decode and each `--streams` count are profiled the same way: each step's list's
per-dispatch GPU timestamps (the backend's tracer) mapped onto the list's recorded ops.
"""

from __future__ import annotations

from typing import Any

from shaderbay.commands import Copy, Dispatch

from .model_measure import GpuTimings
from .results import ModelKernel, StepSplit
from .shapes import dispatch_bytes, dispatch_key, kernel_flops

# StepSplit's kernel classes; every other kernel (embed, advance, rmsnorm, ...) and the copies are "other"
SPLIT_KERNELS = {"matmul": "matmul", "decode_attention": "attention", "argmax": "pick", "sample": "pick"}


def kernel_rows(steps: list[list[GpuTimings]], phase: str, copy_gbs: float | None) -> list[ModelKernel]:
    """Per-kernel GPU time, bytes and GB/s per step, from timings mapped onto each list's recorded ops.

    A backend's timings cover either every op (copies included) or the dispatches only, in order;
    when neither count matches, rows are keyed by label alone, without bytes.
    """
    agg: dict[str, dict[str, Any]] = {}
    n_steps = max(len(steps), 1)
    for step in steps:
        for cmd, timings, context in step:
            ops = list(cmd.ops)
            if len(ops) != len(timings):
                ops = [op for op in ops if isinstance(op, Dispatch)]
            mapped = len(ops) == len(timings)
            for i, (label, ns) in enumerate(timings):
                op = ops[i] if mapped else None
                flops = None
                if isinstance(op, Copy):
                    key, kernel, nbytes = "copy", "copy", 2 * op.size
                elif op is not None:
                    key, kernel, nbytes = dispatch_key(op), op.pipeline.spec.name, dispatch_bytes(op, context)
                    flops = kernel_flops(kernel, op.params, context)
                else:
                    key, kernel, nbytes = str(label), str(label), None
                row = agg.setdefault(key, {"key": key, "kernel": kernel, "count": 0, "ns": 0.0, "bytes": 0, "flops": 0})
                row["count"] += 1
                row["ns"] += float(ns)
                row["bytes"] = None if nbytes is None or row["bytes"] is None else row["bytes"] + nbytes
                row["flops"] = None if flops is None or row["flops"] is None else row["flops"] + flops
    total = sum(r["ns"] for r in agg.values()) or 1.0
    rows = []
    for r in sorted(agg.values(), key=lambda r: -r["ns"]):
        gbs = r["bytes"] / r["ns"] if r["bytes"] and r["ns"] > 0 else None
        rows.append(
            ModelKernel(
                phase=phase,
                key=r["key"],
                kernel=r["kernel"],
                dispatches=r["count"] / n_steps,
                ns=r["ns"] / n_steps,
                bytes=r["bytes"] / n_steps if r["bytes"] is not None else None,
                gbs=gbs,
                copy_bw_share=gbs / copy_gbs if gbs and copy_gbs else None,
                flops=r["flops"] / n_steps if r["flops"] is not None else None,
                tflops=r["flops"] / r["ns"] / 1e3 if r["flops"] and r["ns"] > 0 else None,
                gpu_time_share=r["ns"] / total,
            )
        )
    return rows


def step_split(kernels: list[ModelKernel], wall_ns: float, profile_wall_ns: float) -> StepSplit | None:
    """Each class of kernel's GPU time per step (`kernels`, from the profiled run) over the step's wall
    time (`wall_ns`, the timed runs'), and the rest: the GPU idle (waiting for the host, gaps)."""
    if wall_ns <= 0 or not kernels:
        return None
    ns = dict.fromkeys(("matmul", "attention", "pick", "other"), 0.0)
    for k in kernels:
        ns[SPLIT_KERNELS.get(k.kernel, "other")] += k.ns
    busy = sum(ns.values())
    return StepSplit(
        wall_ms=wall_ns / 1e6,
        profile_wall_ms=profile_wall_ns / 1e6,
        gpu_ms=busy / 1e6,
        **{name: v / wall_ns for name, v in ns.items()},
        idle=max(1.0 - busy / wall_ns, 0.0),
    )
