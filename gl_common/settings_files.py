"""The files both services' settings read: the YAML configuration file and the local secret files.

Where it sits: below `orchestrator_core.settings` and `watchdog.settings`, which build their
pydantic-settings models from a YAML file (`read_yaml_mapping`) and, when nothing is configured,
generate their local API token (and the watchdog its approval signing key) once into the state
directory (`ensure_secret_file`). Each service turns `SettingsFileError` into its own `ConfigError`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import yaml


class SettingsFileError(Exception):
    """A configuration or secret file cannot be read, parsed or created (the message names it)."""


def read_yaml_mapping(config_path: Path) -> dict[str, Any]:
    """The settings in the YAML file at `config_path` (an empty file holds none)."""
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsFileError(f"cannot read config file {config_path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsFileError(f"config file {config_path} is not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise SettingsFileError(f"config file {config_path} must hold a mapping of settings, not {kind}")
    return {str(key): value for key, value in raw.items()}


def ensure_secret_file(path: Path) -> None:
    """Create `path` holding a fresh random secret, readable by the owner only, unless it exists."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise SettingsFileError(f"cannot create the local secret file {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
