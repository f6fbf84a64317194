"""The threading contract (README, "Threads"): a backend serialises calls from several threads, and
a model's engine batches the generations of several threads (or interleaved generators), each
getting the tokens it gets alone. Never a crash, a hang or wrong tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import shaderbay

HERE = Path(__file__).resolve().parent


def test_two_threads_on_one_backend(model_backend):
    proc = subprocess.run(
        [sys.executable, str(HERE / "stress_threads.py"), model_backend.name],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "SHADERBAY_VULKAN_VALIDATE": "0"},
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == []
    for expected, got in zip(out["expected"], out["got"], strict=True):
        assert got and all(run == expected for run in got)


def test_exit_while_a_daemon_thread_generates(model_backend):
    """The backend left open is released at exit after the thread's call in progress, never under it
    (a crash or a hang at exit one run in a few before)."""
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, str(HERE / "stress_threads.py"), model_backend.name, "exit"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"


def test_exit_while_a_daemon_thread_is_in_the_numpy_kernels():
    """The NumPy reference's prompt attention and sampler can be left at exit: before they stopped using
    np.unique (its C++ hash), about one exit in two aborted the process here."""
    for _ in range(8):
        proc = subprocess.run(
            [sys.executable, str(HERE / "stress_threads.py"), "numpy", "exit-kernels"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"


def test_interleaved_generators_on_one_model_are_batched(numpy_backend):
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64) as model:
        expected = list(model.tokens([1, 2, 3], 6, ignore_eos=True))
        other = list(model.tokens([4, 5], 6, ignore_eos=True))
        want_logits = model.logits([1, 2])
        first = model.tokens([1, 2, 3], 6, ignore_eos=True)
        got = [next(first)]
        assert list(model.tokens([4, 5], 6, ignore_eos=True)) == other  # runs beside the first
        np.testing.assert_array_equal(model.logits([1, 2]), want_logits)
        got += list(first)
        assert got == expected
        abandoned = model.tokens([1, 2, 3], 6, ignore_eos=True)
        next(abandoned)
        abandoned.close()
        assert model.engine.idle  # closing it cancelled its sequence and freed its blocks
        assert model.engine.pool.num_used == 0
        assert list(model.tokens([1, 2, 3], 6, ignore_eos=True)) == expected


def test_two_threads_on_one_model_never_mix(numpy_backend):
    """Each thread's generations, batched with the other's, are what they are alone."""
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64) as model:
        prompts = ([3, 17, 42], [9, 8, 7, 6])
        expected = [list(model.tokens(p, 12, ignore_eos=True)) for p in prompts]
        outcomes: list[list] = [[], []]

        def run(i: int) -> None:
            for _ in range(20):
                outcomes[i].append(list(model.tokens(prompts[i], 12, ignore_eos=True)))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes == [[expected[0]] * 20, [expected[1]] * 20]
