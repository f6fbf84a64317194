"""Settings from outside the code: the configuration file, yes/no environment flags, the cache folder.

The configuration file is `shaderbay.toml` in the working directory, else in the user config dir.
Every SHADERBAY_* environment variable is listed in the README's "Environment" table.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_NAME = "shaderbay.toml"
ENV_CACHE = "SHADERBAY_CACHE"
NO_WORDS = ("", "0", "false", "no", "off")  # what a yes/no flag reads as "no" (any case, spaces ignored)


def env_flag(name: str, default: bool | None = False) -> bool | None:
    """A yes/no environment flag: `default` when unset, no for "", 0, false, no or off, else yes."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in NO_WORDS


def cache_dir() -> Path:
    """Where shaderbay keeps what it makes once (converted models, pipeline caches, verdicts).

    `$SHADERBAY_CACHE`, else `$XDG_CACHE_HOME/shaderbay`, else `~/.cache/shaderbay`.
    """
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shaderbay"


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
