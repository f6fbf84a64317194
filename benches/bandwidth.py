"""The device bandwidth that kernels are compared with: a buffer copy and the `add` kernel streaming.

Both count bytes read plus bytes written; `device_bandwidth` keeps the better of the two.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from shaderbay.errors import LimitExceeded, ShaderbayError

from .results import Bandwidth, Copy, StreamError
from .timing import time_pieces, timed_run


def copy_bandwidth(backend: Any, size: int = 512 << 20, copies: int = 4, runs: int = 5) -> Copy:
    """Device copy bandwidth in GB/s (bytes read + written per second) from a CommandList of copies between
    two buffers of `size` / 2 bytes each."""
    size = int(min(size // 2, backend.caps.max_buffer_size) // 256 * 256)
    a = backend.buffer(size)
    b = backend.buffer(size)
    try:
        cmd = backend.command_list("copy_bandwidth")
        for i in range(copies):
            src, dst = (a, b) if i % 2 == 0 else (b, a)
            cmd.copy(src, dst, size)
        backend.run(cmd)  # warm-up: touches the pages, prepares the list
        walls = [timed_run(backend, cmd) for _ in range(runs)]
        timings = backend.gpu_timings(cmd)
        moved = 2 * size * copies
        if timings and len(timings) == copies:
            ns, source = sum(t for _, t in timings), "gpu"
        else:
            ns, source = min(walls), "wall"
        return Copy(gbs=moved / ns, bytes=moved, buffer_bytes=size, ns=ns, source=source)
    finally:
        a.free()
        b.free()


def stream_bandwidth(backend: Any, size: int = 512 << 20, pairs: int = 2, min_time: float = 0.05) -> Copy:
    """GB/s of the catalogue's `add` kernel (x += y: two reads and a write per element) streaming through
    `pairs` pairs of buffers holding `size` bytes in all (alternating pairs, so that a cache cannot hold them)."""
    per = int(min(size // (2 * pairs), backend.caps.max_binding_size) // 1024 * 1024)
    rng = np.random.default_rng(0)
    while True:
        n = max(per // 4, 256)
        tensors = []
        try:
            block = rng.standard_normal(min(n, 1 << 20), dtype=np.float32)
            for _ in range(2 * pairs):
                tensors.append(backend.upload(np.resize(block, n)))
            pipe = backend.pipeline("add")
            pieces = [(pipe, {"x": tensors[2 * i], "y": tensors[2 * i + 1]}, {"n": n}) for i in range(pairs)]
            ns, source = time_pieces(backend, pieces, "stream_bandwidth", min_time)
            moved = 12 * n * pairs
            return Copy(gbs=moved / ns, bytes=moved, buffer_bytes=4 * n, ns=ns, source=source)
        except LimitExceeded:  # too many workgroups for one dispatch: smaller buffers
            if per <= 1 << 20:
                raise
            per //= 2
        finally:
            for t in tensors:
                t.buffer.free()


def device_bandwidth(backend: Any, size: int = 512 << 20) -> Bandwidth:
    """The reference bandwidth kernels are compared with: the better of a buffer copy in a CommandList and a
    streaming kernel. (A copy may run on a copy engine slower than the shader cores: on an H100 through
    Vulkan, vkCmdCopyBuffer reaches ~0.8 TB/s where kernels stream at over 2 TB/s.)"""
    copy = copy_bandwidth(backend, size)
    try:
        stream: Copy | StreamError = stream_bandwidth(backend, size)
    except ShaderbayError as exc:
        stream = StreamError(f"{type(exc).__name__}: {exc}")
    best = stream if isinstance(stream, Copy) and stream.gbs > copy.gbs else copy
    return Bandwidth(**asdict(best), method="copy" if best is copy else "stream", copy=copy, stream=stream)
