"""`python -m shaderbay.benches.preflight BACKEND [DTYPE]`: a backend runs a tiny model end to end, or exits non-zero.

The model bench runs this in a child process per backend before anything else, so that a
backend which crashes the process (a panic in native code) is reported in its row instead of
ending the bench for every backend.
"""

from __future__ import annotations

import sys


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
    from shaderbay.models.model import load
    from shaderbay.models.synthetic import synthetic_checkpoint
    from shaderbay.plugins import create_backend

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


if __name__ == "__main__":
    sys.exit(main())
