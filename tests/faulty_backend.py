"""A test-only backend plugin for the server's error path (tests/test_serve.py): the NumPy backend
whose embed kernel raises when asked to embed one chosen token id, $SHADERBAY_TEST_FAULT_TOKEN. A
request whose prompt holds that token fails in its prefill, a generation that samples it fails in the
decode step after: an unexpected error inside an engine step, with nothing in the server mocked.

A `shaderbay serve` process finds it as it finds any plugin, through an entry point: `install`
writes the .dist-info a pip install would (a name and the entry point) into a directory that the
process gets on PYTHONPATH, with tests/ (this module and broken_backends).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from broken_backends import PlantedBugBackend
from shaderbay.backends.numpy import kernels as ref
from shaderbay.plugins import BackendEntry, hookimpl

NAME = "faulty-embed"
ENV_TOKEN = "SHADERBAY_TEST_FAULT_TOKEN"


def embed_refusing_token(b: dict[str, np.ndarray], p: dict[str, Any], c: dict[str, Any]) -> None:
    token = int(os.environ[ENV_TOKEN])
    if token in b["ids"][: p["rows"]]:
        raise RuntimeError(f"planted fault: token {token} embedded")
    ref.embed(b, p, c)


class _Plugin:
    @hookimpl
    def shaderbay_backends(self) -> list[BackendEntry]:
        backend = type(
            "FaultyEmbedBackend", (PlantedBugBackend,), {"name": NAME, "kernels": {"embed": embed_refusing_token}}
        )
        return [BackendEntry(NAME, backend, priority=-1000, description="embed raises on $" + ENV_TOKEN)]


PLUGIN = _Plugin()


def install(site: Path) -> str:
    """Make the plugin discoverable by processes with the returned PYTHONPATH."""
    info = site / "shaderbay_test_faults-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shaderbay-test-faults\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[shaderbay]\nfaulty = faulty_backend:PLUGIN\n")
    return os.pathsep.join([str(site), str(Path(__file__).parent)])
