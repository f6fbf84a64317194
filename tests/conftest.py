"""Shared fixtures of the project's tests.

- `model_backend`: parametrized over every discovered backend (shaderbay.plugins.discover()),
  one instance per name for the whole session. A backend that cannot start here (no driver,
  or its module not written yet) is skipped with the reason, unless its name is in
  $SHADERBAY_REQUIRE_BACKENDS, and then the tests fail.
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

ENV_REQUIRE = "SHADERBAY_REQUIRE_BACKENDS"
_MADE: dict[str, object] = {}


def required_backends() -> set[str]:
    return {n.strip() for n in os.environ.get(ENV_REQUIRE, "").split(",") if n.strip()}


def discovered_backends() -> list[str]:
    from shaderbay.plugins import discover

    required = required_backends()
    return sorted(set(discover()) | required, key=lambda n: (n != "numpy", n))


def get_backend(name: str):
    """The session's backend `name`; skips (or fails, when required) if it cannot start here."""
    from shaderbay.errors import BackendUnavailable
    from shaderbay.plugins import create_backend

    if name not in _MADE:
        try:
            _MADE[name] = create_backend(name)
        except BackendUnavailable as exc:
            _MADE[name] = f"backend {name!r} is unavailable here: {exc.reason}"
        except ImportError as exc:  # the backend's module is not there (yet)
            _MADE[name] = f"backend {name!r} cannot be imported: {exc}"
        except Exception as exc:  # noqa: BLE001 - reported as the skip/fail reason
            _MADE[name] = f"creating backend {name!r} raised {type(exc).__name__}: {exc}"
    made = _MADE[name]
    if isinstance(made, str):
        if name in required_backends():
            pytest.fail(f"{made} (and {ENV_REQUIRE} requires it)", pytrace=False)
        pytest.skip(made)
    return made


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_backend" in metafunc.fixturenames:
        names = discovered_backends()
        metafunc.parametrize("model_backend", names, ids=names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def model_backend(request: pytest.FixtureRequest):
    """Each discovered backend in turn (see the module docstring)."""
    return get_backend(request.param)


@pytest.fixture(scope="session")
def numpy_backend():
    return get_backend("numpy")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for made in _MADE.values():
        if not isinstance(made, str):
            try:
                made.close()
            except Exception:  # noqa: BLE001 - closing at exit must not mask the results
                pass
    _MADE.clear()


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """make_checkpoint("tiny", "bf16", shards=2) -> a written synthetic checkpoint directory (cached)."""
    from shaderbay.models.synthetic import write_checkpoint

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
    from fixtures_model import required_smollm2_gguf

    required_smollm2_gguf()
    old = os.environ.get("SHADERBAY_CACHE")
    os.environ["SHADERBAY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield os.environ["SHADERBAY_CACHE"]
    if old is None:
        os.environ.pop("SHADERBAY_CACHE", None)
    else:
        os.environ["SHADERBAY_CACHE"] = old
