"""Host cost of the wgpu backend's per-step paths: encoding, submitting, reading the token back.

    python -m shaderbay.backends.wgpu.bench [--dispatches 400] [--model smollm2-135m] [--tokens 20]

Measures, for each encoder (SHADERBAY_WGPU_ENCODER ffi and python):

* encode+submit of a list of N small `add` dispatches (one pass), per dispatch: the
  host-side price of re-encoding instead of replaying (minimum over repetitions, and
  the median; the GPU work is waited for outside the timed region);
* a small read (the sampled token's path) and a 4-byte write (the position's);
* with --model: the recorded decode step of a synthetic model of that shape (float16):
  encode+submit per token, GPU time per token from the timestamps, tokens/s of greedy
  decoding through the model's own loop (submit, then read the token: the host and the
  GPU take turns), and tokens/s with the steps queued back to back (the ceiling of
  letting the host run ahead).

On lavapipe run it with LP_NUM_THREADS=0, so that the driver's worker threads do not
compete with the host thread being measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import shaderbay

from .backend import create
from .commands import ENV_ENCODER, encode


def _timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def encode_cost(backend, n: int, reps: int = 30) -> dict:
    xs = [backend.upload(np.zeros(64, np.float32)) for _ in range(8)]
    y = backend.upload(np.ones(64, np.float32))
    add = backend.pipeline("add")
    cmd = backend.command_list("bench")
    for i in range(n):
        cmd.dispatch(add, {"x": xs[i % 8], "y": y}, n=64)
    backend.run(cmd)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        backend.submit(cmd)
        samples.append(time.perf_counter() - t0)
        backend.wait()
    token = backend.upload(np.zeros(1, np.uint32))
    reads = _timed(lambda: backend.read(token), 100)
    writes = _timed(lambda: backend.write(token, np.ones(1, np.uint32)), 100)
    backend.wait()
    return {
        "dispatches": n,
        "encode_submit_us_per_dispatch_min": min(samples) / n * 1e6,
        "encode_submit_us_per_dispatch_median": statistics.median(samples) / n * 1e6,
        "read_4B_us_median": statistics.median(reads) * 1e6,
        "write_4B_us_median": statistics.median(writes) * 1e6,
    }


def split_cost(backend, cmd, reps: int = 20) -> dict | None:
    """Where encode+submit time goes (ffi encoder): the recording calls, finish, and submit."""
    native = backend.encoder
    if native.name != "ffi":
        return None
    rec, fin, sub = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        enc = encode(native, cmd.prepared.steps)
        t1 = time.perf_counter()
        cb = native.finish(enc)
        t2 = time.perf_counter()
        native.submit_finished(cb)
        t3 = time.perf_counter()
        backend.wait()
        rec.append(t1 - t0)
        fin.append(t2 - t1)
        sub.append(t3 - t2)
    n = len(cmd.ops)
    return {
        "split_record_us_per_dispatch": statistics.median(rec) / n * 1e6,
        "split_finish_us_per_dispatch": statistics.median(fin) / n * 1e6,
        "split_submit_us_per_dispatch": statistics.median(sub) / n * 1e6,
    }


def decode_cost(backend, shape: str, tokens: int) -> dict:
    model = shaderbay.load(f"synthetic:{shape}:float16", backend=backend, max_context=512, progress=False)
    llama = model.llama
    cmd = llama.decode_list()
    n = len(cmd.ops)
    backend.run(cmd)
    samples, waits = [], []
    for _ in range(max(3, min(tokens, 20))):
        t0 = time.perf_counter()
        backend.submit(cmd)
        t1 = time.perf_counter()
        backend.wait()
        samples.append(t1 - t0)
        waits.append(time.perf_counter() - t1)
    gpu_ns = None
    if backend.caps.timestamps:
        backend.gpu_timestamps = True
        backend.run(cmd)
        backend.gpu_timestamps = False
        gpu_ns = sum(ns for _, ns in backend.gpu_timings(cmd))
    list(model.tokens(list(range(1, 17)), max_tokens=tokens, ignore_eos=True))
    stats = model.stats
    # The run-ahead ceiling: the greedy token stays on the device (the next step's embed reads it), so
    # steps can be queued back to back, each position written between submits (writes are queue-ordered);
    # the host encodes step t+1 while the GPU runs step t. No token comes back here (see the report).
    position = np.zeros(1, np.uint32)
    t0 = time.perf_counter()
    for i in range(tokens):
        position[0] = 16 + i
        backend.write(llama.s.row_positions.view(shape=1), position)
        backend.submit(cmd)
    backend.wait()
    pipelined = tokens / (time.perf_counter() - t0)
    out = {
        "model": shape,
        "dispatches_per_token": n,
        "encode_submit_ms_per_token_min": min(samples) * 1e3,
        "encode_submit_ms_per_token_median": statistics.median(samples) * 1e3,
        "decode_encode_submit_us_per_dispatch_min": min(samples) / n * 1e6,
        "wait_ms_per_token_median": statistics.median(waits) * 1e3,
        "gpu_ms_per_token_timestamps": gpu_ns / 1e6 if gpu_ns is not None else None,
        "decode_tokens_per_s": stats.decode_tokens_per_s,
        "decode_queued_tokens_per_s": pipelined,
    }
    out.update(split_cost(backend, cmd) or {})
    model.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dispatches", type=int, default=400)
    ap.add_argument("--model", default=None, help="a synthetic shape, e.g. smollm2-135m")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--encoders", default="ffi,python")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    results = []
    for encoder in args.encoders.split(","):
        os.environ[ENV_ENCODER] = encoder
        with create() as backend:
            row = {"encoder": encoder, "device": backend.caps.device, **encode_cost(backend, args.dispatches)}
            if args.model:
                row.update(decode_cost(backend, args.model, args.tokens))
        results.append(row)
        print(json.dumps(row, indent=1, default=str), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
