"""The CLI's connection settings: contexts in a config file, like kubectl's, and what overrides them.

Where it sits: read by `watchdog.cli` before any command that talks to the watchdog's API, and written
by `gl-watchdog config ...` (`watchdog.cli.config_commands`). Knows nothing of HTTP: it resolves a
`Connection` (server URL, token, TLS verification) that `watchdog.client.ApiClient` uses.

The file (YAML) is `--config FILE`, else `$GL_WATCHDOG_CONFIG`, else
`$XDG_CONFIG_HOME/gl-watchdog/config.yaml` (`~/.config/...` without XDG_CONFIG_HOME):

    current-context: prod
    contexts:
      prod:
        server: https://watchdog.example.com
        token_file: ~/.secrets/watchdog-token     # or token: glw_...
        ca_bundle: /etc/ssl/internal-ca.pem       # optional; insecure_skip_tls_verify: true to skip
      local:
        server: http://127.0.0.1:8081

Precedence, highest first: the flags (`--context`, `--server`, `--token`), the environment
(`GL_WATCHDOG_CONTEXT`, `GL_WATCHDOG_SERVER`, `GL_WATCHDOG_TOKEN`), the chosen context. Relative
`token_file` and `ca_bundle` paths are relative to the config file. The file holds tokens: it is
written with mode 0600, and a token is never printed (`get-contexts` says where it comes from).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from watchdog.exit_codes import EXIT_NOT_FOUND, EXIT_USAGE, CliError

CONFIG_ENV: Final = "GL_WATCHDOG_CONFIG"
CONTEXT_ENV: Final = "GL_WATCHDOG_CONTEXT"
SERVER_ENV: Final = "GL_WATCHDOG_SERVER"
TOKEN_ENV: Final = "GL_WATCHDOG_TOKEN"
MAX_TOKEN_FILE_BYTES: Final = 4096


def check_server_url(value: str) -> str:
    """An http(s) URL with a host, without a trailing slash; a usage error otherwise."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server {value!r} is not an http:// or https:// URL with a host")
    return value.strip().rstrip("/")


class ContextEntry(BaseModel):
    """One context: where the watchdog is and how to authenticate to it."""

    model_config = ConfigDict(extra="forbid")

    server: str
    token: str | None = Field(None, repr=False)
    token_file: str | None = None
    ca_bundle: str | None = None
    insecure_skip_tls_verify: bool = False

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        return check_server_url(value)

    def token_source(self) -> str:
        """Where the token comes from, for display (never the token itself)."""
        if self.token:
            return "token (in the file)"
        if self.token_file:
            return f"token_file {self.token_file}"
        return "none"


class ClientConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    current_context: str | None = Field(None, alias="current-context")
    contexts: dict[str, ContextEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class Connection:
    """What a client needs: the server, the token (never shown), how to verify TLS."""

    server: str
    token: str | None = field(default=None, repr=False)
    verify: bool | str = True
    context: str | None = None


def config_path(explicit: str | None, env: Mapping[str, str]) -> Path:
    """The config file: --config, else $GL_WATCHDOG_CONFIG, else the XDG location."""
    if explicit:
        return Path(explicit).expanduser()
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base).expanduser() / "gl-watchdog" / "config.yaml"


def load_config(path: Path) -> ClientConfig:
    """The file's contexts (none when the file does not exist); a usage error naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ClientConfig()
    except OSError as exc:
        raise CliError(f"cannot read the config file {path}: {exc.strerror or exc}", EXIT_USAGE) from exc
    try:
        raw: Any = yaml.safe_load(text) or {}
        return ClientConfig.model_validate(raw)
    except yaml.YAMLError as exc:
        raise CliError(f"the config file {path} is not valid YAML: {exc}", EXIT_USAGE) from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'file'}: {error['msg']}" for error in exc.errors()
        )
        raise CliError(f"the config file {path} is not valid: {problems}", EXIT_USAGE) from exc


def save_config(path: Path, config: ClientConfig) -> None:
    """Write the file (mode 0600: it may hold tokens), creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = config.model_dump(by_alias=True, exclude_none=True, exclude_defaults=False)
    for entry in document.get("contexts", {}).values():
        if not entry.get("insecure_skip_tls_verify"):
            entry.pop("insecure_skip_tls_verify", None)
    text = yaml.safe_dump(document, sort_keys=False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    path.chmod(0o600)


def context_entry(config: ClientConfig, name: str, path: Path) -> ContextEntry:
    """The context `name`; not found (3) naming the known ones."""
    try:
        return config.contexts[name]
    except KeyError:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise CliError(
            f"no context {name!r} in {path} (contexts: {known}; add one: gl-watchdog config set-context)",
            EXIT_NOT_FOUND,
        ) from None


@dataclass(frozen=True)
class Overrides:
    """The flags of one invocation (None: not given)."""

    context: str | None = None
    server: str | None = None
    token: str | None = field(default=None, repr=False)


def resolve(path: Path, flags: Overrides, env: Mapping[str, str]) -> Connection:
    """The connection to use: flags over environment over the chosen context (module docstring)."""
    config = load_config(path)
    name = flags.context or env.get(CONTEXT_ENV) or config.current_context
    entry = context_entry(config, name, path) if name else None
    server = flags.server or env.get(SERVER_ENV) or (entry.server if entry else None)
    if not server:
        raise CliError(
            f"no watchdog server: no context in {path}; add one with `gl-watchdog config set-context NAME "
            f"--server URL --token-file FILE`, or give --server / {SERVER_ENV}",
            EXIT_USAGE,
        )
    try:
        server = check_server_url(server)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    token = flags.token or env.get(TOKEN_ENV) or (_entry_token(entry, path) if entry else None)
    return Connection(server=server, token=token, verify=_verify(entry, path), context=name)


def _relative_to(path: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else path.parent / candidate


def _entry_token(entry: ContextEntry, path: Path) -> str | None:
    if entry.token:
        return entry.token.strip()
    if not entry.token_file:
        return None
    token_path = _relative_to(path, entry.token_file)
    try:
        with token_path.open("rb") as handle:
            token = handle.read(MAX_TOKEN_FILE_BYTES).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CliError(f"cannot read the token_file {token_path}: {reason}", EXIT_USAGE) from exc
    if not token:
        raise CliError(f"the token_file {token_path} is empty", EXIT_USAGE)
    return token


def _verify(entry: ContextEntry | None, path: Path) -> bool | str:
    if entry is None:
        return True
    if entry.insecure_skip_tls_verify:
        return False
    if entry.ca_bundle:
        bundle = _relative_to(path, entry.ca_bundle)
        if not bundle.is_file():
            raise CliError(f"the ca_bundle {bundle} is not a file", EXIT_USAGE)
        return str(bundle)
    return True
