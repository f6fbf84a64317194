"""Shared fixtures of the project's tests.

- `model_backend`: parametrized over every discovered backend (shaderbay.plugins.discover()),
  one instance per name for the whole session, from the conformance plugin's `session_backend`:
  a backend that is unavailable here (no driver) is skipped with the reason, unless its name is
  in $SHADERBAY_REQUIRE_BACKENDS, and then the tests fail.
- `numpy_backend`: the reference backend, shared by the session.
- `make_checkpoint(name, dtype, shards)`: a synthetic checkpoint directory, written once per session.
- `default_cache`: SHADERBAY_CACHE pointed at a session's directory (the default model converted there once).
- `text_model_dir`: a tiny model with a real tokenizer and a chat template (converted from a GGUF).
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures_model import write_tiny_gguf
    from shaderbay.models.gguf import convert_gguf

    d = tmp_path_factory.mktemp("tiny-text")
    return convert_gguf(write_tiny_gguf(d / "tiny.gguf"), d / "model", dtype="float32")


@pytest.fixture(scope="session")
def default_cache(tmp_path_factory: pytest.TempPathFactory):
    """SHADERBAY_CACHE pointed at a temporary directory for the session's default-model tests."""
    from fixtures_model import link_default_model, required_smollm2_gguf

    gguf = required_smollm2_gguf()
    old = os.environ.get("SHADERBAY_CACHE")
    os.environ["SHADERBAY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    link_default_model(gguf)
    yield os.environ["SHADERBAY_CACHE"]
    if old is None:
        os.environ.pop("SHADERBAY_CACHE", None)
    else:
        os.environ["SHADERBAY_CACHE"] = old
