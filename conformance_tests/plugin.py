"""The conformance suite's pytest plugin (registered under the ``pytest11`` entry point).

It adds:

- ``--backend NAME[,NAME...]`` (or ``all``): the backends the suite runs against; default
  ``$SHADERBAY_BACKEND``, else ``numpy``. Like the Array API test suite's one setting, it
  selects the implementation under test and nothing else changes.
- a session-scoped ``backend`` fixture, parametrized over those backends for the tests of
  ``shaderbay.conformance`` (and any test marked ``shaderbay_conformance``). A backend that
  is unavailable here is skipped with its reason, or fails the tests when its name is in
  ``SHADERBAY_REQUIRE_BACKENDS`` (comma list: what CI must really run).
- Hypothesis settings profiles: ``ci`` (the default: derandomized, bounded examples, no
  deadline since a GPU's first call is slow, no shrinking) and ``thorough`` (many more random
  examples, failures shrunk to a minimal case),
  selected with ``--hypothesis-profile thorough`` or ``SHADERBAY_HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from shaderbay.errors import BackendUnavailable, ShaderbayError
from shaderbay.plugins import ENV_BACKEND, create_backend, discover

ENV_REQUIRE = "SHADERBAY_REQUIRE_BACKENDS"
ENV_PROFILE = "SHADERBAY_HYPOTHESIS_PROFILE"
UNSUPPORTED = "unsupported"  # the prefix of every skip reason for a kernel a backend does not implement

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

# ci does not shrink: on a software GPU shrinking one failure can take minutes, and a broken
# backend fails dozens of tests; the failure messages describe the case in full anyway.
# thorough shrinks, so run it for a minimal failing example.
settings.register_profile(
    "ci",
    max_examples=20,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "thorough",
    max_examples=300,
    stateful_step_count=60,
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)

_PACKAGE_DIR = Path(__file__).resolve().parent
_BACKENDS = pytest.StashKey[dict[str, Any]]()
_NAMES = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shaderbay", "shaderbay conformance suite")
    group.addoption(
        "--backend",
        dest="shaderbay_backend",
        default=None,
        metavar="NAME[,NAME...]",
        help=f"shaderbay backend(s) the conformance suite runs against, or 'all' (default: ${ENV_BACKEND}, else numpy)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shaderbay_conformance: run this test once per backend chosen with --backend (fixture `backend`)"
    )
    # Hypothesis' own plugin loads --hypothesis-profile; otherwise SHADERBAY_HYPOTHESIS_PROFILE, or
    # ci unless something (a conftest) already chose a profile.
    if config.getoption("hypothesis_profile", None) is None:
        if os.environ.get(ENV_PROFILE):
            settings.load_profile(os.environ[ENV_PROFILE])
        elif settings.get_current_profile_name() == "default":
            settings.load_profile("ci")
    config.stash[_BACKENDS] = {}
    config.stash[_NAMES] = selected_backends(config.getoption("shaderbay_backend"))


def pytest_unconfigure(config: pytest.Config) -> None:
    for made in config.stash.get(_BACKENDS, {}).values():
        if hasattr(made, "close"):
            try:
                made.close()
            except Exception:  # noqa: BLE001 - closing at exit must not mask the results
                pass


def pytest_report_header(config: pytest.Config) -> str | None:
    args = [str(a) for a in config.invocation_params.args]
    if not any(a.startswith("shaderbay.conformance") or _is_conformance_path(Path(a)) for a in args):
        return None
    profile = settings.get_current_profile_name()
    return f"shaderbay conformance: --backend {','.join(config.stash[_NAMES])}; hypothesis profile {profile}"


def selected_backends(option: str | None) -> list[str]:
    """The backend names an option value asks for (`all`: every discovered backend)."""
    value = option or os.environ.get(ENV_BACKEND) or "numpy"
    names = [n.strip() for n in value.split(",") if n.strip()]
    if "all" in names:
        discovered = sorted(discover(), key=lambda n: (n != "numpy", n))
        names = [n for n in names if n != "all"] + discovered
    return list(dict.fromkeys(names))


def required_backends() -> set[str]:
    return {n.strip() for n in os.environ.get(ENV_REQUIRE, "").split(",") if n.strip()}


def _is_conformance_path(path: Path) -> bool:
    try:
        path.resolve().relative_to(_PACKAGE_DIR)
        return True
    except (ValueError, OSError):
        return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    in_suite = _is_conformance_path(Path(metafunc.definition.fspath))
    if in_suite or metafunc.definition.get_closest_marker("shaderbay_conformance"):
        names = metafunc.config.stash[_NAMES]
        metafunc.parametrize("backend", names, ids=names, indirect=True, scope="session")


def session_backend(config: pytest.Config, name: str):
    """The session's backend `name`, created once (closed at the end of the session); skips the
    test when it is unavailable here (fails it when $SHADERBAY_REQUIRE_BACKENDS names it), and
    fails it when creating it raises anything else."""
    made = config.stash[_BACKENDS]
    if name not in made:
        try:
            made[name] = create_backend(name)
        except BackendUnavailable as exc:
            made[name] = ("unavailable", f"backend {name!r} is unavailable here: {exc.reason}")
        except ShaderbayError as exc:  # unknown backend, bad config: a usage error, never a skip
            made[name] = ("error", f"backend {name!r} cannot be created: {exc}")
        except Exception as exc:  # noqa: BLE001 - a plugin that crashes on creation fails its tests
            made[name] = ("error", f"creating backend {name!r} raised {type(exc).__name__}: {exc}")
    result = made[name]
    if isinstance(result, tuple):
        kind, message = result
        if kind == "unavailable" and name not in required_backends():
            pytest.skip(message)
        if kind == "unavailable":
            message += f" (and {ENV_REQUIRE} requires it)"
        pytest.fail(message, pytrace=False)
    return result


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest):
    """A live backend of the suite's selection (one per name, shared by the whole session)."""
    name = getattr(request, "param", None) or request.config.stash[_NAMES][0]
    return session_backend(request.config, name)


@pytest.fixture
def fresh_backend(backend, request: pytest.FixtureRequest):
    """A new, separate instance of the backend under test, closed after the test."""
    made = create_backend(_entry_name(backend, request))
    yield made
    made.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test fails if a backend it used reported driver validation messages meanwhile (a backend that
    collects them, such as vulkan with SHADERBAY_VULKAN_VALIDATE=1, lists them in `validation_messages`)."""
    funcargs = getattr(item, "funcargs", {})
    watched = [funcargs.get(n) for n in ("backend", "fresh_backend")]
    seen = [(b, len(b.validation_messages)) for b in watched if getattr(b, "validation_messages", None) is not None]
    result = yield
    for b, count in seen:
        new = b.validation_messages[count:]
        if new:
            pytest.fail(f"{b.name}: {len(new)} validation message(s):\n" + "\n".join(new[:5]), pytrace=False)
    return result


def _entry_name(backend, request: pytest.FixtureRequest) -> str:
    param = getattr(request.node, "callspec", None)
    if param is not None and "backend" in param.params:
        return param.params["backend"]
    return backend.name


def require_kernels(backend, *names: str) -> None:
    """Skip (as unsupported, never as a pass) when the backend does not implement a kernel."""
    missing = [n for n in names if not backend.supports(n)]
    if missing:
        pytest.skip(f"{UNSUPPORTED}: backend {backend.name!r} does not implement {', '.join(missing)}")
