"""The decision tree of ../shared/DESIGN.md, as a function of the measured CPU/GPU split.

```
Is performance acceptable?
├── Yes → no action
└── No → profile
         ├── GPU-bound (>80% GPU time)   → optimise shaders
         ├── memory-bound                → data layout, fewer copies
         └── CPU-bound (>20% in the API) → a lower-level backend
                                           ├── web needed → stay on wgpu
                                           └── native only → go lower
```

GPU-bound and memory-bound are told apart by how close the kernels that fill the GPU time
come to the copy bandwidth measured in the same run: a busy GPU whose kernels stream near
that bandwidth cannot go faster with better arithmetic, only with fewer bytes (data layout,
fusion, fewer copies). GPU time is checked before API time: when the GPU is busy more than
80% of a token, host work overlaps it and cutting the API cost would not help.

Where vulkan, in the same run, multiplies prefill on the tensor cores (cooperative matrices:
a native-only feature, wgpu has none), each GPU backend's verdict names it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

GPU_BOUND_SHARE = 0.80  # GPU busy for more than this share of a token's wall time
CPU_BOUND_SHARE = 0.20  # host time inside the API for more than this share
MEMORY_BOUND_UTILISATION = 0.70  # time-weighted achieved GB/s / copy bandwidth at or above this

# what each backend's verdict adds where vulkan, in the same run, uses cooperative matrices
TENSOR_CORES = {
    "vulkan": "prefill multiplies on the tensor cores (cooperative matrices, which wgpu cannot reach)",
    "wgpu": "vulkan multiplies prefill on this device's tensor cores (cooperative matrices), which wgpu cannot reach",
}

KINDS = ("acceptable", "gpu-bound", "memory-bound", "cpu-bound", "host-bound", "reference", "unknown")


@dataclass(frozen=True)
class Verdict:
    kind: str  # one of KINDS
    reason: str  # the figures that decided it
    suggestion: str  # what the decision tree says to do

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"verdict kind {self.kind!r} is not one of {KINDS}")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def verdict(
    *,
    backend: str,
    device_type: str = "other",
    gpu_share: float | None,
    api_share: float | None,
    bandwidth_utilisation: float | None = None,
    tok_s: float | None = None,
    target_tok_s: float | None = None,
    tensor_cores: bool = False,
) -> Verdict:
    """Which branch of the decision tree a backend is on.

    gpu_share: GPU busy time (sum of per-dispatch timestamps) / token wall time, None without timestamps.
    api_share: host time inside the backend API (recording, encoding, submitting; not waiting) / token wall time.
    bandwidth_utilisation: GPU-time-weighted mean of each kernel's achieved GB/s / copy bandwidth.
    tok_s, target_tok_s: when both are given and tok_s reaches the target, performance is acceptable.
    tensor_cores: vulkan, in the same run, uses cooperative matrices (the reason then says so).
    """
    found = _branch(backend, device_type, gpu_share, api_share, bandwidth_utilisation, tok_s, target_tok_s)
    note = TENSOR_CORES.get(backend) if tensor_cores and found.kind != "reference" else None
    return replace(found, reason=f"{found.reason}; {note}") if note else found


def _branch(
    backend: str,
    device_type: str,
    gpu_share: float | None,
    api_share: float | None,
    bandwidth_utilisation: float | None,
    tok_s: float | None,
    target_tok_s: float | None,
) -> Verdict:
    if tok_s is not None and target_tok_s is not None and tok_s >= target_tok_s:
        return Verdict("acceptable", f"{tok_s:.1f} tok/s reaches the target of {target_tok_s:.1f} tok/s", "no action")
    if device_type == "cpu":
        share = f"; {_pct(api_share)} of a token inside the backend" if api_share is not None else ""
        return Verdict(
            "reference",
            f"the kernels run on the host inside submit{share}",
            "a CPU reference backend is not on the decision tree: it defines correctness, not speed",
        )
    if gpu_share is not None and gpu_share > GPU_BOUND_SHARE:
        if bandwidth_utilisation is not None and bandwidth_utilisation >= MEMORY_BOUND_UTILISATION:
            return Verdict(
                "memory-bound",
                f"GPU busy {_pct(gpu_share)} of a token and its kernels reach {_pct(bandwidth_utilisation)} "
                "of the copy bandwidth",
                "data layout, fewer copies: move fewer bytes (fuse kernels that re-read activations, "
                "smaller weight formats, no intermediate copies)",
            )
        util = f", kernels at {_pct(bandwidth_utilisation)} of the copy bandwidth" if bandwidth_utilisation else ""
        return Verdict(
            "gpu-bound",
            f"GPU busy {_pct(gpu_share)} of a token{util}",
            "optimise shaders: wide coalesced loads, subgroup reductions, tuned workgroup sizes, fusion",
        )
    if api_share is not None and api_share > CPU_BOUND_SHARE:
        if backend == "vulkan":
            advice = (
                "already the lowest-level backend here: fewer dispatches (fusion), replay recorded command "
                "buffers, one submit per token"
            )
        else:
            advice = "a lower-level backend: vulkan when native only (stay on wgpu if the web is needed)"
        return Verdict("cpu-bound", f"{_pct(api_share)} of a token's wall time is spent inside the API", advice)
    if gpu_share is None:
        api = f"{_pct(api_share)} in the API" if api_share is not None else "API share unknown"
        return Verdict(
            "unknown",
            f"no GPU timestamps from this backend; {api}",
            "enable timestamp queries to tell GPU-bound from memory-bound",
        )
    api = _pct(api_share) if api_share is not None else "?"
    return Verdict(
        "host-bound",
        f"GPU busy only {_pct(gpu_share)} and {api} in the API: the rest is host work outside the backend or waiting",
        "keep the GPU fed: fewer host/device round trips per token, less Python per token, let the host run ahead",
    )


def bandwidth_utilisation(kernels: list[Any]) -> float | None:
    """GPU-time-weighted mean of achieved/copy bandwidth over per-kernel rows (`ns`, `copy_bw_share`)."""
    rows = [k for k in kernels if k.copy_bw_share is not None and k.ns]
    total = sum(k.ns for k in rows)
    if not total:
        return None
    return sum(k.ns * k.copy_bw_share for k in rows) / total
