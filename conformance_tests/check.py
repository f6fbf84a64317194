"""`shaderbay check`: run the conformance suite against one backend and print a table.

It is the same suite as ``pytest --pyargs shaderbay.conformance --backend NAME``, run
in-process with a small pytest plugin that collects each test's outcome, grouped as
buffers, kernels (one row per catalogue kernel, with the worst relative error measured and
the largest shape run), command lists and errors. A kernel the backend does not implement
is listed as unsupported, never as a pass. Exit status: 0 when everything conforms, 1 on
any failure, 2 when the backend cannot run here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shaderbay.config import cache_dir
from shaderbay.errors import BackendUnavailable, UnknownBackend
from shaderbay.plugins import discover, requested_backend

from .report import STATS, clear

GROUPS = {
    "test_buffers": "buffers",
    "test_kernels": "kernels",
    "test_command_lists": "command lists",
    "test_errors": "errors",
}
UNAVAILABLE_MARK = "is unavailable here"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        metavar="NAME",
        help="the backend to check (default: SHADERBAY_BACKEND, shaderbay.toml, else the first available)",
    )
    parser.add_argument(
        "--profile",
        choices=("ci", "thorough"),
        default=None,
        help="Hypothesis settings profile: ci (fast, fixed seed; the default) or thorough (many more examples)",
    )
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="only run tests matching this pytest -k expression")
    parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's full output")


@dataclass
class Row:
    group: str
    kernel: str | None
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> pass / fail / skip
    reasons: dict[str, str] = field(default_factory=dict)  # nodeid -> skip reason

    @property
    def label(self) -> str:
        if self.kernel:
            return f"kernel {self.kernel}"
        return "kernel catalogue" if self.group == "kernels" else self.group

    def status(self) -> str:
        values = list(self.outcomes.values())
        if "fail" in values:
            return "FAIL"
        if values and all(v == "skip" for v in values):
            if any(r.startswith("unsupported") for r in self.reasons.values()):
                return "unsupported"
            return "skipped"
        return "pass" if values else "-"

    def counts(self) -> str:
        values = list(self.outcomes.values())
        parts = [
            f"{values.count(k)} {word}" for k, word in (("pass", "passed"), ("fail", "failed"), ("skip", "skipped"))
        ]
        return ", ".join(p for p in parts if not p.startswith("0 ")) or "not run"


class Collector:
    """A pytest plugin: the outcome of every test, sorted into the table's rows."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str | None], Row] = {}
        self.where: dict[str, tuple[str, str | None]] = {}

    def pytest_collection_finish(self, session) -> None:
        for item in session.items:  # what is left after -k deselection
            module = getattr(item, "module", None)
            stem = (module.__name__ if module else item.nodeid).rsplit(".", 1)[-1]
            group = GROUPS.get(stem, stem)
            callspec = getattr(item, "callspec", None)
            kernel = callspec.params.get("kernel") if callspec is not None else None
            key = (group, kernel if group == "kernels" else None)
            self.where[item.nodeid] = key
            self.rows.setdefault(key, Row(*key))

    def pytest_runtest_logreport(self, report) -> None:
        key = self.where.get(report.nodeid)
        if key is None:
            return
        row = self.rows[key]
        if report.failed:
            row.outcomes[report.nodeid] = "fail"
        elif report.skipped:
            if row.outcomes.get(report.nodeid) != "fail":
                row.outcomes[report.nodeid] = "skip"
                longrepr = report.longrepr
                reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
                row.reasons[report.nodeid] = reason.removeprefix("Skipped: ")
        elif report.when == "call" and row.outcomes.get(report.nodeid) != "fail":
            row.outcomes[report.nodeid] = "pass"

    def ordered_rows(self) -> list[Row]:
        order = list(GROUPS.values())
        return sorted(
            self.rows.values(),
            key=lambda r: (
                order.index(r.group) if r.group in order else len(order),
                r.kernel is not None,
                r.kernel or "",
            ),
        )

    def unavailable_reason(self) -> str | None:
        for row in self.rows.values():
            for reason in row.reasons.values():
                if UNAVAILABLE_MARK in reason:
                    return reason
        return None


def _resolve_backend(name: str | None) -> tuple[str, str]:
    wanted, source = requested_backend(name)
    if wanted:
        known = discover()
        if wanted not in known:
            raise UnknownBackend(wanted, sorted(known))
        return wanted, source
    reasons = []
    for entry in sorted(discover().values(), key=lambda e: -e.priority):
        try:
            made = entry.create()
        except BackendUnavailable as exc:
            reasons.append(f"{entry.name}: {exc.reason}")
            continue
        made.close()
        return entry.name, "automatic"
    raise BackendUnavailable("any", "; ".join(reasons) or "no backends are installed")


def _format_error(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return "0" if value == 0 else f"{value:.2e}"


def _format_share(ratio: float) -> str:
    if math.isinf(ratio):
        return "inf"
    if 0 < ratio < 0.01:
        return "<1%"
    return f"{100 * ratio:.0f}%"


def print_table(backend: str, collector: Collector, out=sys.stdout) -> None:
    header = ("group", "result", "tests", "worst rel. error", "of tolerance", "largest shape run")
    lines = [header]
    for row in collector.ordered_rows():
        if not row.outcomes:  # deselected, or never reached
            continue
        # one backend per run: its Backend.name may differ from the name it was registered under
        stats = next((v for (_, kernel), v in STATS.items() if kernel == row.kernel), None) if row.kernel else None
        if row.kernel and stats is not None and stats.runs:
            err, share = _format_error(stats.worst_error), _format_share(stats.worst_ratio)
        else:
            err, share = "", ""
        largest = stats.largest if stats is not None else ""
        status = row.status()
        detail = row.counts()
        if status == "unsupported":
            detail = next(iter(row.reasons.values()))
        lines.append((row.label, status, detail, err, share, largest))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f"\nshaderbay conformance: backend {backend}", file=out)
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)


def run(args: argparse.Namespace) -> int:
    import pytest  # lazily: the optional `conformance` extra; `shaderbay check --help` works without it

    name, source = _resolve_backend(args.backend)
    package = Path(__file__).resolve().parent
    pytest_args = [str(package), "--backend", name, "--rootdir", str(package)]
    pytest_args += ["-p", "no:cacheprovider", "-p", "no:benchmark"]  # nothing written to the working directory
    pytest_args += ["-c", os.devnull]  # the suite's own settings, whatever ini file the working directory has
    if args.profile:
        pytest_args += ["--hypothesis-profile", args.profile]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    if args.exitfirst:
        pytest_args.append("-x")
    pytest_args += ["-v"] if args.verbose else ["-q", "--tb=short", "--no-header"]
    # Hypothesis keeps a small cache; keep it out of the user's working directory
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(cache_dir() / "hypothesis"))
    print(f"checking backend {name!r} (selected by {source})", flush=True)
    clear()
    collector = Collector()
    code = pytest.main(pytest_args, plugins=[collector])
    if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.INTERRUPTED):
        return 2
    unavailable = collector.unavailable_reason()
    if unavailable:
        print(f"\nshaderbay check: {unavailable}", file=sys.stderr)
        return 2
    print_table(name, collector)
    if code == pytest.ExitCode.OK:
        return 0
    if code == pytest.ExitCode.TESTS_FAILED:
        failed = sum(o == "fail" for row in collector.rows.values() for o in row.outcomes.values())
        print(f"\n{failed} test(s) failed: backend {name!r} does not conform", file=sys.stderr)
        return 1
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("\nno tests were selected", file=sys.stderr)
    return 1
