"""Two threads on one backend, run as a script so that a crash or a hang fails the test that runs it
(tests/test_threads.py) instead of taking the test session down.

    python stress_threads.py BACKEND          # the workloads below
    python stress_threads.py BACKEND exit     # exit while a daemon thread is mid-generation

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


if __name__ == "__main__":
    (exit_mid_run if sys.argv[2:] == ["exit"] else main)(sys.argv[1])
