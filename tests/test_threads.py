"""The threading contract (README, "Threads"): a backend serialises calls from several threads, and
a model runs one generation at a time, a second one raising ModelBusy at once. Never a crash, a
hang or wrong tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import shaderbay
from shaderbay.errors import ModelBusy

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


def test_interleaved_generators_on_one_model_raise(numpy_backend):
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64) as model:
        expected = list(model.tokens([1, 2, 3], 6, ignore_eos=True))
        first = model.tokens([1, 2, 3], 6, ignore_eos=True)
        got = [next(first)]
        second = model.tokens([4, 5], 6, ignore_eos=True)
        with pytest.raises(ModelBusy, match="one generation at a time"):
            next(second)
        with pytest.raises(ModelBusy):
            model.logits([1, 2])
        got += list(first)
        assert got == expected
        assert list(model.tokens([1, 2, 3], 6, ignore_eos=True)) == expected  # free again once finished
        abandoned = model.tokens([1, 2, 3], 6, ignore_eos=True)
        next(abandoned)
        abandoned.close()
        assert list(model.tokens([1, 2, 3], 6, ignore_eos=True)) == expected


def test_two_threads_on_one_model_never_mix(numpy_backend):
    """Each thread's generation either runs alone and is right, or raises ModelBusy."""
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64) as model:
        prompts = ([3, 17, 42], [9, 8, 7, 6])
        expected = [list(model.tokens(p, 12, ignore_eos=True)) for p in prompts]
        outcomes: list[list] = [[], []]

        def run(i: int) -> None:
            for _ in range(20):
                try:
                    outcomes[i].append(list(model.tokens(prompts[i], 12, ignore_eos=True)))
                except ModelBusy:
                    outcomes[i].append("busy")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(2):
            assert len(outcomes[i]) == 20
            assert all(o == "busy" or o == expected[i] for o in outcomes[i])
        assert any(o != "busy" for o in outcomes[0] + outcomes[1])
