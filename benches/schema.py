"""The JSON that `shaderbay bench --json` writes, as a checkable spec (schema "shaderbay-bench/1").

A spec is a type (or tuple of types: any of them; None allows null), a dict of key -> spec
(a key ending in "?" may be absent), or a one-element list [spec] for a list of such items.
Units: seconds (`_s`), milliseconds (`_ms`), nanoseconds (`ns`), bytes (`bytes`), GB/s
(`gbs`, 1e9 bytes per second; copies count bytes read plus bytes written); every `share` is a
fraction of 1.
"""

from __future__ import annotations

from typing import Any

from .verdict import KINDS

Num = (int, float)
OptNum = (int, float, type(None))
OptStr = (str, type(None))

MACHINE = {
    "hostname": str,
    "platform": str,
    "python": str,
    "cpu": str,
    "cpu_count": (int, type(None)),
    "memory_bytes": (int, type(None)),
    "numpy": str,
    "shaderbay": str,
    "env": dict,
}

DEVICE = {"name": str, "type": str, "features": str, "timestamps": bool, "api?": OptStr}

COPY = {"gbs": Num, "bytes": int, "buffer_bytes": int, "ns": Num, "source": str}  # source: "gpu" | "wall"

# The reference bandwidth: the better ("method") of a buffer copy in a CommandList and the `add` kernel
# streaming through as many bytes; its own figures are those of the better one.
BANDWIDTH = {**COPY, "method": str, "copy": COPY, "stream": (COPY, {"error": str})}

SHAPE = {
    "name": str,
    "dim": int,
    "n_layers": int,
    "n_heads": int,
    "n_kv_heads": int,
    "head_dim": int,
    "ffn_dim": int,
    "vocab_size": int,
    "tie_word_embeddings": bool,
    "n_params": int,
}

START = {
    "total_s": Num,
    "phases": {
        "backend": Num,  # creating the backend (device, queues)
        "read": Num,  # load time outside the backend: opening, parsing, host conversions
        "upload": Num,  # inside buffer/write calls (a memory-mapped file is paged in here)
        "pipelines": Num,  # pipeline creation
        "prepare": Num,  # first submit of each list: the backend's compile/bind/record work
        "record": Num,  # recording dispatches into command lists
        "first_token": Num,  # the rest: prefill of the prompt and reading the first token
    },
    "page_cache_evicted": bool,
    "host_rss_start_bytes": int,
    "host_rss_peak_bytes": int,
    "host_rss_end_bytes": int,
    "host_rss_peak_exact": bool,
}

MEMORY = {
    "host_rss_peak_bytes": (int, type(None)),  # process peak RSS during the warm start
    "host_rss_peak_delta_bytes": int,  # ... minus the RSS before it
    "host_rss_added_bytes": int,  # RSS after the warm start minus before
    "host_rss_now_bytes": (int, type(None)),
    "device_bytes": int,  # backend.bytes_allocated with the model loaded
    "device_peak_bytes": int,
    "device_weights_bytes": int,
    "device_kv_cache_bytes": int,
    "device_scratch_bytes": int,  # the rest: activations, token/position buffers, ...
    "kv_cache_dtype": OptStr,
    "max_context": int,
}

MODEL_KERNEL = {
    "phase": str,  # "decode" (per token) or "prefill" (per prompt)
    "key": str,  # kernel and shape, e.g. "matmul f16 1728x576 rmsnorm r1"
    "kernel": str,
    "dispatches": Num,
    "ns": Num,
    "bytes": OptNum,
    "gbs": OptNum,
    "copy_bw_share": OptNum,
    "flops": OptNum,  # matmul and attention only
    "tflops": OptNum,
    "gpu_time_share": Num,
}

MODEL_ROW = {
    "backend": str,
    "ok": bool,
    "error": OptStr,
    "device": dict,  # DEVICE once the backend started
    "load": dict,  # {"cold": START, "warm": START} as far as it got
    "memory": dict,  # MEMORY once the warm start worked
    "copy_bandwidth": (dict, type(None)),  # BANDWIDTH
    "decode?": {"tokens": int, "tok_s": OptNum, "tok_s_runs": [Num], "ms_per_token": OptNum,
                "ms_per_token_median": Num},
    "prefill?": {"tokens": int, "tok_s": OptNum, "tok_s_runs": [Num], "ms": OptNum},
    "cpu?": {
        "api_cpu_ms_per_token": Num,  # host thread CPU time inside the API per decoded token
        "api_wall_ms_per_token": Num,
        "wait_ms_per_token": Num,
        "other_ms_per_token": Num,
        "api_share": OptNum,  # api_cpu / token wall time: the decision tree's CPU-bound test
        "api_wall_share": OptNum,
        "wait_share": OptNum,
        "calls_per_token": dict,
        "us_per_call?": dict,  # host wall time per call of each API method, waits excluded
    },
    "gpu?": {
        "timestamps": bool,
        "complete": bool,
        "gpu_ms_per_token?": Num,
        "gpu_share?": OptNum,  # gpu_share_raw capped at the share of a step the host is not busy: the GPU-bound test
        "gpu_share_raw?": OptNum,  # GPU timestamps per step (profile run) / the timed runs' step wall time
        "profile_ms_per_token?": Num,  # step wall time in the profile run (timestamps on)
        "gpu_share_profile?": OptNum,  # GPU busy / the profile run's own step wall time
        "dispatches_per_token?": int,
        "prefill_gpu_ms?": Num,
        "bandwidth_utilisation": OptNum,  # GPU-time-weighted achieved / copy bandwidth: the memory-bound test
    },
    "kernels?": [MODEL_KERNEL],
    "ceiling?": ({"tok_s": Num, "weight_bytes_per_token": int, "share": OptNum}, type(None)),
    "verdict?": {"kind": str, "reason": str, "suggestion": str},
}  # fmt: skip

MICRO_KERNEL = {
    "name": str,
    "phase": str,
    "kernel": str,
    "params": dict,
    "constants": dict,
    "error?": str,
    "dispatches?": int,
    "bytes?": int,
    "ns?": Num,
    "source?": str,  # "gpu" (timestamps) or "wall" (replays)
    "gbs?": OptNum,
    "copy_bw_share?": OptNum,
    "flops?": OptNum,  # matmul and attention only
    "tflops?": OptNum,
    "tensor_core_share?": OptNum,  # of the device's dense f16 tensor-core peak (benches/kernels.py)
}

KERNELS_ROW = {
    "backend": str,
    "ok": bool,
    "error": OptStr,
    "device?": DEVICE,
    "copy_bandwidth?": BANDWIDTH,
    "kernels?": [MICRO_KERNEL],
}

ENVELOPE = {
    "schema": str,
    "kind": str,  # "model" or "kernels"
    "command": str,
    "date": str,  # ISO 8601, UTC
    "machine": MACHINE,
    "settings": dict,
    "model": dict,
    "results": list,
}


class SchemaError(ValueError):
    pass


def check(value: Any, spec: Any, path: str = "$") -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected an object, got {type(value).__name__}")
        for key, sub in spec.items():
            name = key.rstrip("?")
            if name not in value:
                if key.endswith("?"):
                    continue
                raise SchemaError(f"{path}: missing key {name!r}")
            check(value[name], sub, f"{path}.{name}")
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            check(item, spec[0], f"{path}[{i}]")
        return
    if isinstance(spec, tuple) and any(isinstance(s, dict | list) for s in spec):
        errors = []
        for s in spec:
            try:
                check(value, s, path)
                return
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(" / ".join(errors))
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(value, bool) and bool not in types:
        raise SchemaError(f"{path}: expected {_names(types)}, got bool")
    if not isinstance(value, types):
        raise SchemaError(f"{path}: expected {_names(types)}, got {type(value).__name__}")


def _names(types: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def validate(result: dict[str, Any]) -> None:
    """Raise SchemaError unless `result` is a well-formed bench result."""
    check(result, ENVELOPE)
    if result["schema"] != "shaderbay-bench/1":
        raise SchemaError(f"$.schema: unknown schema {result['schema']!r}")
    if result["kind"] == "model":
        for i, row in enumerate(result["results"]):
            check(row, MODEL_ROW, f"$.results[{i}]")
            if row["ok"]:
                for key in ("decode", "prefill", "cpu", "gpu", "kernels", "verdict"):
                    if key not in row:
                        raise SchemaError(f"$.results[{i}]: a working backend's row needs {key!r}")
                check(row["device"], DEVICE, f"$.results[{i}].device")
                for label, start in row["load"].items():
                    check(start, START, f"$.results[{i}].load.{label}")
                check(row["memory"], MEMORY, f"$.results[{i}].memory")
                check(row["copy_bandwidth"], BANDWIDTH, f"$.results[{i}].copy_bandwidth")
                if row["verdict"]["kind"] not in KINDS:
                    raise SchemaError(f"$.results[{i}].verdict.kind: {row['verdict']['kind']!r} is not one of {KINDS}")
            elif not row["error"]:
                raise SchemaError(f"$.results[{i}]: a failed row needs its error")
    elif result["kind"] == "kernels":
        for i, row in enumerate(result["results"]):
            check(row, KERNELS_ROW, f"$.results[{i}]")
    else:
        raise SchemaError(f"$.kind: {result['kind']!r} is neither 'model' nor 'kernels'")
    if "shape" in result["model"]:
        check(result["model"]["shape"], SHAPE, "$.model.shape")
