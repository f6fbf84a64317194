"""Try each kernel's SPIR-V through wgpu's translator in a child process before loading it.

wgpu translates SPIR-V with naga, and some inputs make naga panic; a Rust panic inside
wgpu-native aborts the whole Python process, which no `except` can catch. So before the
backend hands a variant's SPIR-V to wgpu for the first time, a child process builds it
(shader module and compute pipeline, with the backend's own layouts, on the same adapter):
the child dies instead of the caller, and the backend raises KernelCompileError naming
the variant and the panic. One child checks every variant usable on the device at once,
and the verdicts are cached on disk, keyed by the SPIR-V's hash, the wgpu version and the API
wgpu translates to. That costs ~50 s on lavapipe (every variant built once) and minutes on a
GPU, so the package ships the verdicts of every variant under the pinned wgpu on Vulkan
(translated.json, written by `python -m shaderbay.backends.wgpu.translated` at `make shaders`):
there the check costs nothing until a shader changes.

    python -m shaderbay.backends.wgpu.preflight_child [VARIANT ...]   # the child; also a manual check

SHADERBAY_WGPU_PREFLIGHT=0 turns the check off (then a translator panic aborts the process).
The verdicts found here live in the cache folder (shaderbay.config.cache_dir) as wgpu-translate.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from shaderbay.backend import Caps
from shaderbay.config import cache_dir
from shaderbay.errors import KernelCompileError

from ..shaders import variants
from ..shaders.records import Variant
from .adapter import pin_adapter_env

ENV_PREFLIGHT = "SHADERBAY_WGPU_PREFLIGHT"
CHILD = "shaderbay.backends.wgpu.preflight_child"  # run by name: it imports the backend, which imports this
OK = "ok"
TIMEOUT_S = 600
SHIPPED = Path(__file__).with_name("translated.json")  # the package's verdicts (see the docstring)


def cache_path() -> Path:
    return cache_dir() / "wgpu-translate.json"


class Preflight:
    """Verdicts on variants' SPIR-V ("ok" or the child's panic), asked for in batches."""

    child = (sys.executable, "-m", CHILD)  # the child's command line, before the variant names

    def __init__(self, adapter_info: dict, caps: Caps, wgpu_version: str):
        self.adapter_info = adapter_info
        self.caps = caps
        self.version = wgpu_version
        self.path = cache_path()
        self.shipped = _read(SHIPPED)
        self.verdicts = _read(self.path)  # the ones found on this machine
        self.broken = False

    def verdict(self, key: str) -> str | None:
        return self.verdicts.get(key, self.shipped.get(key))

    def key(self, variant: Variant) -> str:
        digest = hashlib.sha256(variants.spirv(variant)).hexdigest()[:32]
        return f"{self.version}:{digest}"

    def check(self, variant: Variant) -> None:
        """Raise KernelCompileError if the variant's SPIR-V kills wgpu's translator."""
        key = self.key(variant)
        if self.verdict(key) is None and not self.broken:
            self.run([variant] + [v for v in self._usable() if v.name != variant.name])
        verdict = self.verdict(key) or OK
        if verdict != OK:
            raise KernelCompileError(
                f"wgpu's SPIR-V translator crashes on {variant.name} (kernel {variant.kernel}); the backend "
                f"tried it in a child process, which died with: {verdict}. Rebuild the kernel so it avoids the "
                "construct (see shaderbay.backends.shaders.build.naga_traps), or use another backend"
            )

    def _usable(self) -> list[Variant]:
        out = []
        for v in variants.table():
            try:
                if variants.usable(v, self.caps) and self.verdict(self.key(v)) is None:
                    out.append(v)
            except KernelCompileError:  # its SPIR-V is not shipped; it will say so when used
                pass
        return out

    def run(self, todo: list[Variant]) -> None:
        """Build `todo` in children, one child after another until each variant has a verdict."""
        env = {**os.environ, ENV_PREFLIGHT: "0", **pin_adapter_env(self.adapter_info)}  # exactly this adapter
        names = [v.name for v in todo]
        keys = {v.name: self.key(v) for v in todo}
        while names:
            try:
                res = subprocess.run(
                    [*self.child, *names],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=TIMEOUT_S,
                )
            except (subprocess.TimeoutExpired, OSError):
                self.broken = True  # no verdicts: the variants will be tried in process
                return
            done = set()
            for line in res.stdout.splitlines():
                word, _, name = line.partition(" ")
                if word == "built" and name in keys:
                    self.verdicts[keys[name]] = OK
                    done.add(name)
            rest = [n for n in names if n not in done]
            if res.returncode == 0 or not rest:
                break
            if not done and "panicked" not in res.stderr:
                self.broken = True  # the child cannot even start here: stop trying, build in process
                return
            culprit = rest[0]  # the child was building this one when it died
            self.verdicts[keys[culprit]] = _panic_line(res.stderr, res.returncode)
            names = rest[1:]
        self._save()

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.verdicts, indent=0, sort_keys=True))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only home: keep the verdicts for this process only


def _read(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _panic_line(stderr: str, code: int) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "panicked at" in line:
            detail = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{line} {detail}".strip()
    return f"exit status {code}: " + (lines[-1] if lines else "no message")
