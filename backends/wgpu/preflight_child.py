"""The preflight child (preflight.py): builds variants on the backend's adapter, so that a panic kills only it.

    python -m shaderbay.backends.wgpu.preflight_child [VARIANT ...]   # all usable variants if none

Prints `built NAME` after each variant; a variant whose build raises a plain error is reported
on stderr and counted as built, because the backend raises that error itself, in process.
"""

from __future__ import annotations

import sys

from ..shaders import variants
from .backend import create


def main(argv: list[str]) -> int:
    backend = create()
    todo = [variants.by_name(n) for n in argv] or [v for v in variants.table() if variants.usable(v, backend.caps)]
    for v in todo:
        try:
            backend.pipelines.build(v)
        except Exception as exc:
            print(f"error {v.name}: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr, flush=True)
        print(f"built {v.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
