"""The configuration file: `shaderbay.toml` in the working directory, else in the user config dir."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_NAME = "shaderbay.toml"


def config_paths() -> list[Path]:
    user_dir = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "shaderbay"
    return [Path.cwd() / CONFIG_NAME, user_dir / CONFIG_NAME]


def load_config() -> tuple[dict[str, Any], Path | None]:
    """The first config file found, parsed, and its path (an empty dict and None if there is none)."""
    for path in config_paths():
        if path.is_file():
            try:
                return tomllib.loads(path.read_text()), path
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path} is not valid TOML ({exc}); fix or delete it") from None
    return {}, None


def configured_backend() -> tuple[str | None, Path | None]:
    config, path = load_config()
    name = config.get("backend")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f'{path}: `backend` must be a string such as backend = "vulkan"')
    return name, path
