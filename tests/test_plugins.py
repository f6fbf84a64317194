"""Plugins: an out-of-tree package's backend is discovered, selectable four ways, and conformance-checked.

The package in tests/plugin_pkg is pip-installed (from a copy, so the source tree stays clean)
into a private target directory that only this test's subprocesses see through PYTHONPATH:
the shared environment, and the automatic choice of any other process, are never touched.
Its entry points are found the way every plugin's are, through importlib.metadata.

Also here: configuration errors (bad TOML, a non-string backend) and unknown backends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from shaderbay.cli import main
from shaderbay.errors import ConfigError, UnknownBackend
from shaderbay.plugins import create_backend, requested_backend

PLUGIN_SOURCE = Path(__file__).parent / "plugin_pkg"


@dataclass
class ToyEnv:
    env: dict[str, str]
    cwd: Path
    config_home: Path

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600):
        merged = {**self.env, **(env or {})}
        merged = {k: v for k, v in merged.items() if v is not None}
        return subprocess.run(
            [sys.executable, *args], cwd=cwd or self.cwd, env=merged, capture_output=True, text=True, timeout=timeout
        )

    def selected(self, argument: str | None = None, **env: str) -> str:
        """The backend `create_backend(argument)` picks in a fresh process."""
        code = (
            "from shaderbay.plugins import create_backend; "
            f"b = create_backend({argument!r}); print(type(b).__name__, b.caps.device)"
        )
        done = self.run("-c", code, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
        return self.run("-m", "shaderbay.cli", *args, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> ToyEnv:
    work = tmp_path_factory.mktemp("toy-plugin")
    source = work / "source"
    shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"pip could not install the toy plugin:\n{done.stdout}\n{done.stderr}"
    assert list(target.glob("shaderbay_toy_backend-*.dist-info")), "the install left no metadata"
    cwd = work / "cwd"
    cwd.mkdir()
    config_home = work / "config"
    config_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHADERBAY_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    env["XDG_CONFIG_HOME"] = str(config_home)  # no user config file interferes
    return ToyEnv(env, cwd, config_home)


# --- discovery and selection ---------------------------------------------------------------------


def test_discovered_by_shaderbay_backends(toy: ToyEnv) -> None:
    done = toy.cli("backends")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "toy" in rows, done.stdout
    assert "Toy device" in rows["toy"] and " yes " in rows["toy"]
    assert "toy-unavailable" in rows and " no " in rows["toy-unavailable"]
    assert "the toy device is imaginary" in rows["toy-unavailable"], "the reason it is unavailable is shown"
    assert "numpy" in rows, "built-in backends are still there"


def test_not_installed_outside_the_test(toy: ToyEnv) -> None:
    env = {**toy.env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", "from shaderbay.plugins import discover; print(sorted(discover()))"],
        env=env,
        cwd=toy.cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "'toy'" not in done.stdout


def test_selected_by_argument(toy: ToyEnv) -> None:
    assert toy.selected("toy") == "ToyBackend Toy device"
    # the argument wins over the environment variable and the config file
    (toy.cwd / "shaderbay.toml").write_text('backend = "numpy"\n')
    try:
        assert toy.selected("toy", SHADERBAY_BACKEND="numpy").startswith("ToyBackend")
    finally:
        (toy.cwd / "shaderbay.toml").unlink()


def test_selected_by_environment(toy: ToyEnv) -> None:
    assert toy.selected(None, SHADERBAY_BACKEND="toy").startswith("ToyBackend")
    (toy.cwd / "shaderbay.toml").write_text('backend = "numpy"\n')
    try:  # the environment wins over the config file
        assert toy.selected(None, SHADERBAY_BACKEND="toy").startswith("ToyBackend")
    finally:
        (toy.cwd / "shaderbay.toml").unlink()
    done = toy.cli("backends", env={"SHADERBAY_BACKEND": "toy"})
    assert "chosen: toy (asked for by SHADERBAY_BACKEND)" in done.stdout


def test_selected_by_config_file(toy: ToyEnv) -> None:
    config = toy.cwd / "shaderbay.toml"
    config.write_text('backend = "toy"\n')
    try:
        assert toy.selected(None).startswith("ToyBackend")
        done = toy.cli("backends")
        assert f"chosen: toy (asked for by {config})" in done.stdout
    finally:
        config.unlink()
    user_config = toy.config_home / "shaderbay" / "shaderbay.toml"  # the user config dir, when cwd has none
    user_config.parent.mkdir(exist_ok=True)
    user_config.write_text('backend = "toy"\n')
    try:
        assert toy.selected(None).startswith("ToyBackend")
    finally:
        user_config.unlink()


def test_selected_automatically_with_highest_priority(toy: ToyEnv) -> None:
    assert not toy.selected(None).startswith("ToyBackend"), "at its default priority the toy is never chosen"
    assert toy.selected(None, SHADERBAY_TOY_PRIORITY="1000").startswith("ToyBackend")


# --- the conformance suite ---------------------------------------------------------------------


def test_conformance_suite_passes_on_the_plugin(toy: ToyEnv) -> None:
    done = toy.run(
        "-m",
        "pytest",
        "--pyargs",
        "shaderbay.conformance",
        "--backend",
        "toy",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rs",
        env={"SHADERBAY_LARGE_BUDGET_S": "0.5"},
    )
    tail = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert " passed" in done.stdout and " failed" not in done.stdout, tail
    # the kernel the toy does not implement is reported as unsupported, not passed
    unsupported = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED") and "unsupported" in line]
    assert unsupported and all("sample" in line for line in unsupported), tail


def test_check_lists_unsupported_kernel(toy: ToyEnv) -> None:
    done = toy.cli("check", "--backend", "toy", "-k", "sample or add")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rows = {" ".join(line.split()[:2]): line for line in done.stdout.splitlines() if line.startswith("kernel ")}
    assert "unsupported" in rows["kernel sample"].split()[2], done.stdout
    assert rows["kernel add"].split()[2] == "pass", done.stdout


def test_unavailable_backend_is_skipped_unless_required(toy: ToyEnv) -> None:
    args = ["-m", "pytest", "--pyargs", "shaderbay.conformance.test_errors", "--backend", "toy-unavailable"]
    args += ["-p", "no:cacheprovider", "-q", "-rs"]
    done = toy.run(*args)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "the toy device is imaginary" in done.stdout and " failed" not in done.stdout
    done = toy.run(*args, env={"SHADERBAY_REQUIRE_BACKENDS": "numpy,toy-unavailable"})
    assert done.returncode == 1, done.stdout[-3000:]
    assert "SHADERBAY_REQUIRE_BACKENDS requires it" in done.stdout
    done = toy.cli("check", "--backend", "toy-unavailable", "-k", "errors")
    assert done.returncode == 2 and "the toy device is imaginary" in done.stderr, done.stdout + done.stderr


# --- unknown backends and bad configuration --------------------------------------------------------


def test_unknown_backend(toy: ToyEnv, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SHADERBAY_BACKEND", raising=False)
    with pytest.raises(UnknownBackend, match="no-such-backend") as info:
        create_backend("no-such-backend")
    assert "numpy" in str(info.value), "the message lists the backends that exist"
    monkeypatch.setenv("SHADERBAY_BACKEND", "no-such-backend")
    with pytest.raises(UnknownBackend):
        create_backend()
    done = toy.cli("check", "--backend", "no-such-backend")
    assert done.returncode == 2 and "no backend named 'no-such-backend'" in done.stderr, done.stderr
    done = toy.run("-m", "pytest", "--pyargs", "shaderbay.conformance.test_errors", "--backend", "no-such-backend")
    assert done.returncode == 1, "an unknown backend fails the suite; it is never skipped"
    assert "no backend named 'no-such-backend'" in done.stdout


@pytest.mark.parametrize(
    ("text", "match"),
    [("backend = \n", "not valid TOML"), ("[backend\n", "not valid TOML"), ("backend = 3\n", "must be a string")],
)
def test_config_errors(monkeypatch, tmp_path, text: str, match: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SHADERBAY_BACKEND", raising=False)
    (tmp_path / "shaderbay.toml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        requested_backend()
    with pytest.raises(ConfigError, match=match):
        create_backend()
    assert requested_backend("numpy") == ("numpy", "argument"), "an explicit choice does not read the file"


def test_config_error_in_cli(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SHADERBAY_BACKEND", raising=False)
    (tmp_path / "shaderbay.toml").write_text("backend = [\n")
    assert main(["backends"]) == 2
    err = capsys.readouterr().err
    assert "shaderbay.toml is not valid TOML" in err and "fix or delete it" in err
