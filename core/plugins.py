"""Backend discovery through pluggy, and the choice of a backend.

Every backend, built-in or third-party, is found the same way: a module named in the
`shaderbay` entry-point group implements the `shaderbay_backends` hook and returns
`BackendEntry`s. Their `create` is called only when the backend is wanted, so a
backend whose library or driver is missing costs nothing until then.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pluggy

from .backend import Backend
from .config import configured_backend
from .errors import BackendUnavailable, UnknownBackend

hookspec = pluggy.HookspecMarker("shaderbay")
hookimpl = pluggy.HookimplMarker("shaderbay")

ENV_BACKEND = "SHADERBAY_BACKEND"


@dataclass(frozen=True)
class BackendEntry:
    name: str
    create: Callable[[], Backend]  # raises BackendUnavailable with the reason
    priority: int = 0  # automatic choice takes the highest available
    description: str = ""


class BackendSpec:
    @hookspec
    def shaderbay_backends(self) -> list[BackendEntry]:
        """Return the backends this plugin provides."""


@cache
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("shaderbay")
    pm.add_hookspecs(BackendSpec)
    pm.load_setuptools_entrypoints("shaderbay")
    return pm


def discover() -> dict[str, BackendEntry]:
    """Every backend the installed plugins provide, by name."""
    entries: dict[str, BackendEntry] = {}
    for batch in plugin_manager().hook.shaderbay_backends():
        for entry in batch:
            entries.setdefault(entry.name, entry)
    return entries


def requested_backend(name: str | None = None) -> tuple[str | None, str]:
    """The backend asked for, and where the request came from (argument, env, config, auto)."""
    if name:
        return name, "argument"
    if os.environ.get(ENV_BACKEND):
        return os.environ[ENV_BACKEND], ENV_BACKEND
    configured, path = configured_backend()
    if configured:
        return configured, str(path)
    return None, "automatic"


def create_backend(name: str | None = None) -> Backend:
    """The backend named by the argument, SHADERBAY_BACKEND, shaderbay.toml, or else the best available."""
    entries = discover()
    wanted, _ = requested_backend(name)
    if wanted:
        if wanted not in entries:
            raise UnknownBackend(wanted, sorted(entries))
        return entries[wanted].create()
    reasons = []
    emulated: Backend | None = None
    for entry in sorted(entries.values(), key=lambda e: -e.priority):
        try:
            backend = entry.create()
        except BackendUnavailable as exc:
            reasons.append(f"{entry.name}: {exc.reason}")
            continue
        # A software GPU (lavapipe) is far slower than the NumPy reference for real models:
        # automatic choice takes it only when nothing else starts.
        if backend.caps.device_type != "software":
            if emulated is not None:
                emulated.close()
            return backend
        if emulated is None:
            emulated = backend
        else:
            backend.close()
    if emulated is not None:
        return emulated
    raise BackendUnavailable("any", "; ".join(reasons) or "no backends are installed")
