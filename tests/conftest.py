"""Shared fixtures of the project's tests.

- `model_backend`: parametrized over every discovered backend (shaderbay.plugins.discover()),
  one instance per name for the whole session, from the conformance plugin's `session_backend`:
  a backend that is unavailable here (no driver) is skipped with the reason, unless its name is
  in $SHADERBAY_REQUIRE_BACKENDS, and then the tests fail.
- `numpy_backend`: the reference backend, shared by the session.
- `make_checkpoint(name, dtype, shards)`: a synthetic checkpoint directory, written once per session.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from shaderbay.conformance.plugin import required_backends, session_backend
from shaderbay.models.synthetic import write_checkpoint
from shaderbay.plugins import discover


def discovered_backends() -> list[str]:
    return sorted(set(discover()) | required_backends(), key=lambda n: (n != "numpy", n))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_backend" in metafunc.fixturenames:
        names = discovered_backends()
        metafunc.parametrize("model_backend", names, ids=names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def model_backend(request: pytest.FixtureRequest):
    """Each discovered backend in turn (see the module docstring)."""
    return session_backend(request.config, request.param)


@pytest.fixture(scope="session")
def numpy_backend(pytestconfig: pytest.Config):
    return session_backend(pytestconfig, "numpy")


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """make_checkpoint("tiny", "bf16", shards=2) -> a written synthetic checkpoint directory (cached)."""
    made: dict[tuple, Path] = {}

    def make(name: str = "tiny", dtype: str = "f32", shards: int = 1, seed: int = 0) -> Path:
        key = (name, dtype, shards, seed)
        if key not in made:
            out = tmp_path_factory.mktemp(f"{name}-{dtype}-{shards}")
            made[key] = write_checkpoint(name, out, dtype=dtype, shards=shards, seed=seed)
        return made[key]

    return make
