"""`python -m shaderbay.benches.preflight BACKEND [DTYPE]`: a backend runs a tiny model end to end, or exits non-zero.

The model bench runs this in a child process per backend before anything else, so that a
backend which crashes the process (a panic in native code) is reported in its row instead of
ending the bench for every backend: `preflight()` is that parent side.
"""

from __future__ import annotations

import subprocess
import sys
import time

from shaderbay.models.model import load
from shaderbay.models.synthetic import synthetic_checkpoint
from shaderbay.plugins import create_backend


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m shaderbay.benches.preflight BACKEND [DTYPE]", file=sys.stderr)
        return 2
    try:
        return _run(args[0], args[1] if len(args) > 1 else "float16")
    except Exception as exc:  # noqa: BLE001 - the parent reads the last line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _run(name: str, dtype: str) -> int:
    backend = create_backend(name)
    try:
        with load(synthetic_checkpoint("tiny", dtype), backend=backend, max_context=32, progress=False) as model:
            tokens = list(model.tokens([1, 2, 3], 3, ignore_eos=True))
        cmd = backend.command_list("preflight")
        a, b = backend.buffer(1 << 16), backend.buffer(1 << 16)
        cmd.copy(a, b, 1 << 16)
        backend.run(cmd)
        backend.gpu_timings(cmd)
    finally:
        backend.close()
    print(f"{name}: ok, tokens {tokens}")
    return 0


def preflight(names: list[str], timeout: float, dtype: str = "float16") -> dict[str, str]:
    """Run each backend on a tiny model in a child process (in parallel): {name: error} for those that fail.

    A Python error inside the bench only marks its backend's row; a crash (a Rust panic in
    wgpu-native, a segfault in a driver) would end the whole process, so it is caught here first.
    """
    procs = {}
    for name in names:
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "shaderbay.benches.preflight", name, dtype],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    errors = {}
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            errors[name] = f"preflight: no result within {timeout:.0f} s on a tiny model (hung?)"
            continue
        if proc.returncode != 0:
            lines = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
            tail = lines[-1] if lines else "no output"
            how = f"crashed (signal {-proc.returncode})" if proc.returncode < 0 else f"failed (exit {proc.returncode})"
            errors[name] = f"preflight: {how} on a tiny model: {tail}"
    return errors


if __name__ == "__main__":
    sys.exit(main())
