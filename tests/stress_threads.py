"""Two threads on one backend, run as a script so that a crash or a hang fails the test that runs it
(tests/test_threads.py) instead of taking the test session down.

    python stress_threads.py BACKEND          # the workloads below
    python stress_threads.py BACKEND exit     # exit while a daemon thread is mid-generation
    python stress_threads.py numpy exit-kernels   # exit while a daemon thread is in NumPy's kernels

Three workloads at once on one backend: two threads each generating with a model of their own,
and a third recording small command lists and dropping them (their finalizers then run on that
thread while the others wait for the device). Prints one line of JSON: each thread's tokens, the
single-threaded reference and any errors.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time

import numpy as np
import shaderbay
from shaderbay.plugins import create_backend

PROMPTS = ([3, 17, 42, 5], [9, 8, 7, 6, 5])
TOKENS = 24
ROUNDS = 3


def main(name: str) -> None:
    backend = create_backend(name)
    models = [shaderbay.load("synthetic:tiny:f32", backend=backend, max_context=64) for _ in PROMPTS]
    expected = [list(m.tokens(p, TOKENS, ignore_eos=True)) for m, p in zip(models, PROMPTS, strict=True)]
    results: dict[str, object] = {"expected": expected, "got": [[], []], "errors": []}
    stop = threading.Event()

    def generate(i: int) -> None:
        try:
            for _ in range(ROUNDS):
                results["got"][i].append(list(models[i].tokens(PROMPTS[i], TOKENS, ignore_eos=True)))
        except BaseException as exc:  # noqa: BLE001 - reported in the JSON
            results["errors"].append(f"generator {i}: {type(exc).__name__}: {exc}")

    def churn() -> None:
        """Short-lived command lists on the same backend, collected on this thread."""
        try:
            src = backend.upload(np.arange(64, dtype=np.float32))
            dst = backend.empty(64)
            while not stop.is_set():
                cmd = backend.command_list("churn")
                cmd.copy(src.buffer, dst.buffer, 256)
                backend.run(cmd)
                del cmd
                gc.collect()
            assert (backend.read(dst) == np.arange(64)).all()
        except BaseException as exc:  # noqa: BLE001 - reported in the JSON
            results["errors"].append(f"churn: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=generate, args=(i,)) for i in range(2)]
    churner = threading.Thread(target=churn)
    for t in [*threads, churner]:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    churner.join()
    for m in models:
        m.close()
    backend.close()
    print(json.dumps(results))


def exit_mid_run(name: str) -> None:
    """The interpreter exits (releasing the backend nobody closed) while a daemon thread generates."""
    model = shaderbay.load("synthetic:tiny:f32", backend=name, max_context=64)

    def run() -> None:
        while True:
            list(model.tokens(PROMPTS[0], TOKENS, ignore_eos=True))

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.5)


def exit_in_kernels(name: str) -> None:
    """The interpreter exits while a daemon thread runs the NumPy reference's prompt attention and
    sampler over and over, on small inputs (a NumPy function that releases the GIL inside C++, as
    np.unique's hash does, aborts the process there: "terminate called without an active exception")."""
    from shaderbay.backends.numpy.kernels import REFERENCE, sample_token

    rng = np.random.default_rng(0)
    rows, heads, hd = 8, 2, 8
    p = {"rows": rows, "n_heads": heads, "n_kv_heads": 1, "head_dim": hd, "q_stride": heads * hd,
         "block_size": 4, "blocks_per_seq": 2, "n_blocks": 4, "n_seqs": 2, "scale": 0.3}  # fmt: skip
    b = {
        "q": rng.standard_normal(rows * heads * hd).astype(np.float32),
        "k_cache": rng.standard_normal(16 * hd).astype(np.float32),
        "v_cache": rng.standard_normal(16 * hd).astype(np.float32),
        "positions": (np.arange(rows) // 2).astype(np.uint32),
        "seqs": (np.arange(rows) % 2).astype(np.uint32),
        "block_tables": np.arange(4, dtype=np.uint32),
        "out": np.empty(rows * heads * hd, np.float32),
    }
    logits = rng.standard_normal(1000).astype(np.float32)
    history = rng.integers(0, 1000, 256).astype(np.uint32)

    def run() -> None:
        while True:
            REFERENCE["attention"](b, p, {"cache_dtype": "f32"})
            sample_token(logits, history, 1, 0, 0.8, 40, 0.95, 1.1)

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.2)


if __name__ == "__main__":
    modes = {"exit": exit_mid_run, "exit-kernels": exit_in_kernels}
    modes.get(sys.argv[2] if len(sys.argv) > 2 else "", main)(sys.argv[1])
