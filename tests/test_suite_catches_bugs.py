"""The conformance suite must catch bugs: each planted bug (tests/broken_backends.py) fails it.

The suite runs in-process (pytest.main) against each broken backend, registered with
shaderbay's plugin manager through the same pluggy hook a third-party package implements,
restricted with -k to the tests meant to catch that bug; the same selection passes on the
same machinery with no bug planted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import broken_backends  # noqa: E402


class Outcomes:
    """A pytest plugin recording the outcome of every test of a nested run."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.failed_phases: list[str] = []
        self.passed: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.messages: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid)
            self.failed_phases.append(report.when)
            self.messages.append(str(report.longrepr)[-3000:])
        elif report.when == "call" and report.passed:
            self.passed.append(report.nodeid)
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append((report.nodeid, reason))


def run_suite(backend: str, keyword: str, module: str) -> tuple[int, Outcomes]:
    broken_backends.register()
    outcomes = Outcomes()
    args = [
        "--pyargs",
        f"shaderbay.conformance.{module}",
        "--backend",
        backend,
        "-k",
        keyword,
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-profile",
        "ci",
    ]
    code = pytest.main(args, plugins=[outcomes])
    return int(code), outcomes


@pytest.fixture(scope="module", autouse=True)
def broken_registered():
    broken_backends.register()
    yield
    broken_backends.unregister()


@pytest.mark.parametrize("bug", broken_backends.BUGS, ids=[b.name for b in broken_backends.BUGS])
def test_suite_catches(bug: broken_backends.Bug) -> None:
    code, outcomes = run_suite(bug.name, bug.catch, bug.module)
    assert not any("unavailable" in reason for _, reason in outcomes.skipped), outcomes.skipped
    assert outcomes.failed, (
        f"the conformance suite did not catch {bug.description!r} ({bug.name}); "
        f"passed: {outcomes.passed}, skipped: {outcomes.skipped}"
    )
    assert code == pytest.ExitCode.TESTS_FAILED
    # a conformance failure (in the test itself), not the suite tripping over the backend's creation
    assert outcomes.failed_phases == ["call"] * len(outcomes.failed), outcomes.messages


def test_honest_backend_passes_the_same_selections() -> None:
    by_module: dict[str, list[str]] = {}
    for bug in broken_backends.BUGS:
        by_module.setdefault(bug.module, []).append(f"({bug.catch})")
    for module, keywords in by_module.items():
        code, outcomes = run_suite(broken_backends.HONEST, " or ".join(keywords), module)
        assert code == pytest.ExitCode.OK, f"{module}: {outcomes.failed}\n" + "\n".join(outcomes.messages)
        assert outcomes.passed and not outcomes.failed
