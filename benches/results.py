"""What `shaderbay bench` measures, as typed records; the JSON it writes (schema "shaderbay-bench/1") is their fields.

Units: seconds (`_s`), milliseconds (`_ms`), nanoseconds (`ns`), bytes (`bytes`), GB/s (`gbs`,
1e9 bytes per second; copies count bytes read plus bytes written); every `share` is a fraction
of 1. A figure that was not measured is null. `load_result` reads a written result back (a run
from the GPU machine, say), checking every field's type with pydantic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, TypeAdapter
from shaderbay.errors import ShaderbayError
from shaderbay.models.config import ModelShape

from .verdict import Verdict

SCHEMA = "shaderbay-bench/1"

# results written before these records existed hold {} where a part was never measured
_EMPTY_IS_NONE = BeforeValidator(lambda value: value or None)


@dataclass
class Machine:
    hostname: str
    platform: str
    python: str
    cpu: str
    cpu_count: int | None
    memory_bytes: int | None
    numpy: str
    shaderbay: str
    env: dict[str, str]


@dataclass
class Device:
    name: str
    type: str
    features: str
    timestamps: bool
    api: str | None = None
    cooperative_matrices: bool = False  # the tensor cores reach its shaders (Caps.cooperative_matrix)

    @classmethod
    def of(cls, backend: Any) -> Device:
        caps = backend.caps
        api = caps.extras.get("api") if isinstance(caps.extras, dict) else None
        coop = bool(caps.cooperative_matrix)
        return cls(caps.device, caps.device_type, caps.summary(), bool(caps.timestamps), api, coop)


@dataclass
class Copy:
    """Bytes moved (read plus written) over a time taken from GPU timestamps or wall time (`source`)."""

    gbs: float
    bytes: int
    buffer_bytes: int
    ns: float
    source: Literal["gpu", "wall"]


@dataclass
class StreamError:
    error: str


@dataclass
class Bandwidth(Copy):
    """The reference bandwidth: the better (`method`) of a buffer copy in a CommandList and the `add`
    kernel streaming through as many bytes; its own figures are those of the better one."""

    method: Literal["copy", "stream"]
    copy: Copy
    stream: Copy | StreamError


@dataclass
class Phases:
    backend: float  # creating the backend (device, queues)
    read: float  # load time outside the backend: opening, parsing, host conversions
    upload: float  # inside buffer/write calls (a memory-mapped file is paged in here)
    pipelines: float  # pipeline creation
    prepare: float  # first submit of each list: the backend's compile/bind/record work
    record: float  # recording dispatches into command lists
    first_token: float  # the rest: prefill of the prompt and reading the first token


@dataclass
class Start:
    total_s: float
    phases: Phases
    page_cache_evicted: bool
    host_rss_start_bytes: int
    host_rss_peak_bytes: int
    host_rss_end_bytes: int
    host_rss_peak_exact: bool


@dataclass
class Memory:
    host_rss_peak_bytes: int | None  # process peak RSS during the warm start
    host_rss_peak_delta_bytes: int  # ... minus the RSS before it
    host_rss_added_bytes: int  # RSS after the warm start minus before
    host_rss_now_bytes: int | None
    device_bytes: int  # backend.bytes_allocated with the model loaded
    device_peak_bytes: int
    device_weights_bytes: int
    device_kv_cache_bytes: int
    device_scratch_bytes: int  # the rest: activations, token/position buffers, ...
    kv_cache_dtype: str | None
    max_context: int


@dataclass
class Decode:
    tokens: int
    tok_s: float | None
    tok_s_runs: list[float]
    ms_per_token: float | None
    ms_per_token_median: float


@dataclass
class Prefill:
    tokens: int
    tok_s: float | None
    tok_s_runs: list[float]
    ms: float | None


@dataclass
class Cpu:
    api_cpu_ms_per_token: float  # host thread CPU time inside the API per decoded token
    api_wall_ms_per_token: float
    wait_ms_per_token: float
    other_ms_per_token: float
    api_share: float | None  # api_cpu / token wall time: the decision tree's CPU-bound test
    api_wall_share: float | None
    wait_share: float | None
    calls_per_token: dict[str, float]
    # host wall time per call of each API method, waits excluded (absent from the earliest results)
    us_per_call: dict[str, float] = field(default_factory=dict)


@dataclass
class Gpu:
    timestamps: bool
    complete: bool
    bandwidth_utilisation: float | None = None  # GPU-time-weighted achieved / copy bandwidth: the memory-bound test
    gpu_ms_per_token: float | None = None
    gpu_share: float | None = None  # gpu_share_raw capped at the share of a step the host is not busy: GPU-bound test
    gpu_share_raw: float | None = None  # GPU timestamps per step (profile run) / the timed runs' step wall time
    profile_ms_per_token: float | None = None  # step wall time in the profile run (timestamps on)
    gpu_share_profile: float | None = None  # GPU busy / the profile run's own step wall time
    dispatches_per_token: int | None = None
    prefill_gpu_ms: float | None = None


@dataclass
class ModelKernel:
    """One kernel at one shape in the model bench's profile run, per decode step or per prefill."""

    phase: Literal["decode", "prefill"]
    key: str  # kernel and shape, e.g. "matmul f16 1728x576 rmsnorm r1"
    kernel: str
    dispatches: float
    ns: float
    bytes: float | None
    gbs: float | None
    copy_bw_share: float | None
    flops: float | None  # matmul and attention only
    tflops: float | None
    gpu_time_share: float


@dataclass
class Ceiling:
    tok_s: float  # copy bandwidth / weight bytes read per token
    weight_bytes_per_token: int
    share: float | None


@dataclass
class StepSplit:
    """Where a decode step's wall time went: each class of kernel's GPU time in the profiled run (summed
    per-dispatch timestamps) as a share of the timed runs' step wall time, and the rest, the GPU idle
    (benches/model_kernels.py). Timestamps inflate short dispatches: the shares can add up past 1."""

    wall_ms: float  # the timed runs' mean step wall time (the profiled run's where none was timed)
    profile_wall_ms: float  # the profiled run's (timestamps on, each step's timings read inside the window)
    gpu_ms: float  # every kernel and copy of the step, summed
    matmul: float
    attention: float  # decode_attention
    pick: float  # argmax or sample
    other: float  # embed, advance, copies, ...
    idle: float  # 1 - gpu_ms / wall_ms, at least 0: the host, gaps between submits


@dataclass
class Streams:
    """Aggregate decode with `streams` sequences at once (`shaderbay bench --streams`): the steady state
    where every step advances all of them (benches/model_streams.py)."""

    streams: int
    tok_s: float | None  # tokens of all streams together per second, median over repetitions
    tok_s_runs: list[float]
    ms_per_step: float | None
    api_share: float | None  # host CPU inside the API / wall time
    gpu_share: float | None  # GPU busy per step (profile run) / the timed runs' step wall time
    verdict: Verdict | None = None
    # the profiled repetition (absent from results written before they were recorded)
    split: StepSplit | None = None
    kernels: list[ModelKernel] | None = None  # GPU time per step by kernel and shape, as ModelRow.kernels


@dataclass
class ModelRow:
    """One backend's figures in the model bench; a backend that failed has its error and what it got to."""

    backend: str
    ok: bool
    error: str | None
    device: Annotated[Device | None, _EMPTY_IS_NONE] = None
    load: dict[str, Start] = field(default_factory=dict)  # "cold", "warm": as far as it got
    memory: Annotated[Memory | None, _EMPTY_IS_NONE] = None
    copy_bandwidth: Bandwidth | None = None
    decode: Decode | None = None
    prefill: Prefill | None = None
    cpu: Cpu | None = None
    gpu: Gpu | None = None
    kernels: list[ModelKernel] | None = None
    ceiling: Ceiling | None = None
    verdict: Verdict | None = None
    streams: list[Streams] | None = None  # with --streams: one per stream count


@dataclass
class MicroKernel:
    """One kernel micro-bench case; `error` instead of figures when it could not run."""

    name: str
    phase: Literal["decode", "prefill"]
    kernel: str
    params: dict[str, Any]
    constants: dict[str, Any]
    error: str | None = None
    dispatches: int | None = None
    bytes: int | None = None
    ns: float | None = None
    source: Literal["gpu", "wall"] | None = None  # timestamps or replays
    gbs: float | None = None
    copy_bw_share: float | None = None
    flops: float | None = None  # matmul and attention only
    tflops: float | None = None
    tensor_core_share: float | None = None  # of the device's dense f16 tensor-core peak (benches/kernels.py)


@dataclass
class KernelsRow:
    backend: str
    ok: bool
    error: str | None
    device: Device | None = None
    copy_bandwidth: Bandwidth | None = None
    kernels: list[MicroKernel] | None = None


@dataclass
class ModelInfo:
    name: str
    dtype: str
    shape: ModelShape | None = None  # written without its derived sizes (n_params, ...)
    weights_bytes: int | None = None
    weight_bytes_per_token: int | None = None
    synthetic: str | None = None  # the model bench's source, from here on
    source: Literal["memory", "file"] | None = None
    checkpoint_bytes: int | None = None
    build_s: float | None = None


@dataclass
class _Envelope:
    schema: str
    command: str
    date: str  # ISO 8601, UTC
    machine: Machine
    settings: dict[str, Any]
    model: ModelInfo


@dataclass
class ModelResult(_Envelope):
    results: list[ModelRow]
    kind: Literal["model"] = "model"


@dataclass
class KernelsResult(_Envelope):
    results: list[KernelsRow]
    kind: Literal["kernels"] = "kernels"


Result = ModelResult | KernelsResult
_RESULT = TypeAdapter(Annotated[Result, Field(discriminator="kind")])


# what a model bench row has when its backend ran to the end
_WORKING_ROW_PARTS = ("device", "memory", "copy_bandwidth", "decode", "prefill", "cpu", "gpu", "kernels", "verdict")


class ResultError(ShaderbayError):
    """A file that is not a well-formed bench result."""


def load_result(text: str) -> Result:
    """A written result, read back; ResultError (saying which field) unless every field has its type."""
    try:
        result = _RESULT.validate_json(text, strict=True)
    except ValueError as exc:
        raise ResultError(f"not a result `shaderbay bench --json` writes: {exc}") from None
    if result.schema != SCHEMA:
        raise ResultError(f"schema {result.schema!r} is not {SCHEMA!r}")
    for i, row in enumerate(result.results):
        if row.ok and isinstance(row, ModelRow):
            missing = [part for part in _WORKING_ROW_PARTS if getattr(row, part) is None]
            if missing:
                raise ResultError(f"results[{i}] ({row.backend}): a working backend's row lacks {', '.join(missing)}")
        if not row.ok and not row.error:
            raise ResultError(f"results[{i}] ({row.backend}): a failed row needs its error")
    return result


def as_json(result: Result) -> str:
    return json.dumps(asdict(result), indent=2, default=json_default) + "\n"


def json_default(value: Any) -> Any:
    """What json.dumps writes for the values it does not know."""
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def write_json(result: Result, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(as_json(result))
    return path
