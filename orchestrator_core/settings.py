"""`OrchestratorSettings`: the one configuration model of the orchestrator service.

Where it sits: built once at start-up (`load_settings`, called by `cli.py`) and passed down to the
service, the engine and the API; nothing in `orchestrator_core` reads `os.environ` elsewhere.

Sources, highest priority first: environment variables `GL_ORCHESTRATOR_<NAME>`, then the optional YAML
file (`--config FILE`), then the defaults below. Environment wins over the file so that the runbook's
`kubectl set env ... GL_ORCHESTRATOR_MAX_PARALLEL_NODES=5` works even when a config file is mounted.
List values from the environment are JSON (`GL_ORCHESTRATOR_API_TOKENS='["t1","t2"]'`).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from gl_common.auth import TokenFileError, TokenSource
from gl_common.settings_files import SettingsFileError, ensure_secret_file, read_yaml_mapping
from orchestrator_core.errors import ConfigError

# Upper bounds of the two live-tunable limits; the settings, `PUT /admin/limits` and the OpenAPI
# document all refuse values past them (a typo like 1000000000 must not become the live limit).
MAX_PARALLEL_NODES_BOUND = 10_000
MAX_CONCURRENT_EXECUTIONS_BOUND = 100_000
MAX_EXECUTION_TIMEOUT_SECONDS = 30 * 24 * 3600


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class OrchestratorSettings(BaseSettings):
    """Settings of one orchestrator replica (see docs/architecture.md "Ports, paths, settings")."""

    model_config = SettingsConfigDict(env_prefix="GL_ORCHESTRATOR_", extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    database_url: str = "sqlite+aiosqlite:///gl-orchestrator.db"
    redis_url: str | None = None
    api_tokens: list[SecretStr] = Field(default_factory=list)
    api_token_file: Path | None = None
    max_parallel_nodes: int = Field(10, ge=1, le=MAX_PARALLEL_NODES_BOUND)
    max_concurrent_executions: int = Field(50, ge=1, le=MAX_CONCURRENT_EXECUTIONS_BOUND)
    replica_id: str = Field(default_factory=_default_replica_id, min_length=1)
    pod_name: str | None = None
    namespace: str = "greenlang"
    lock_ttl_seconds: float = Field(15.0, gt=0)
    heartbeat_ttl_seconds: float = Field(15.0, gt=0)
    agent_url_template: str = "http://{agent_id}.{namespace}.svc:8080/run"
    http_agents: list[str] = Field(default_factory=list)
    otlp_endpoint: str | None = None
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Where a replica started without any API token keeps the one it generates (see `with_local_token`).
    state_dir: Path = Path(".gl-watchdog")
    # Engine and store tuning (added by the engine; documented in docs/architecture.md).
    db_pool_size: int = Field(5, ge=1, le=200)
    db_max_overflow: int = Field(10, ge=0, le=1000)
    db_timeout_seconds: float = Field(10.0, gt=0)
    checkpoint_retry_base_delay: float = Field(0.1, ge=0)
    checkpoint_retry_max_delay: float = Field(5.0, ge=0)
    # The execution timeout of a run whose DAG sets no `execution_timeout_seconds` (the API shows it as
    # the run's `timeout_seconds` with `timeout_is_default: true`, and the timeout gauge exists for the
    # run, so the alert can fire). `null` in the YAML file: such runs have no timeout at all.
    default_execution_timeout_seconds: float | None = Field(3600.0, gt=0, le=MAX_EXECUTION_TIMEOUT_SECONDS)
    # glibc's malloc arenas (`mallopt(M_ARENA_MAX)`, set at start-up by `serve`; see malloc.py): threads
    # share this many instead of up to 8 per core, so a burst's freed memory is reused instead of kept per
    # thread. `null`: glibc's default. No effect on a C library that is not glibc.
    malloc_arena_max: int | None = Field(2, ge=1, le=64)

    @field_validator("agent_url_template")
    @classmethod
    def _check_agent_url_template(cls, template: str) -> str:
        # Checked here, so a typo fails at start-up instead of as a KeyError on every HTTP agent call.
        try:
            url = template.format(agent_id="agent", namespace="namespace")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"only the placeholders {{agent_id}} and {{namespace}} may be used ({exc!r})"
            ) from None
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return template

    def with_local_token(self) -> OrchestratorSettings:
        """These settings, or, when no API token is configured, a copy that accepts a local token.

        The token is generated once into `state_dir/orchestrator.token` (mode 0600) and reused, so
        `gl-orchestrator serve` with no configuration still requires auth, and a watchdog started in
        the same directory finds the token there. Never log the token, only the file's path.
        """
        if self.api_tokens or self.api_token_file is not None:
            return self
        path = self.state_dir / LOCAL_TOKEN_FILE
        try:
            ensure_secret_file(path)
        except SettingsFileError as exc:
            raise ConfigError(str(exc)) from exc
        return self.model_copy(update={"api_token_file": path})

    def token_source(self) -> TokenSource:
        """The API's bearer tokens: `api_tokens` plus one token per non-empty line of `api_token_file`
        (re-read when it changes). Raises `ConfigError` when the token file cannot be read now."""
        source = TokenSource((token.get_secret_value() for token in self.api_tokens), self.api_token_file)
        try:
            source.tokens()
        except TokenFileError as exc:
            raise ConfigError(f"cannot read api_token_file {exc.path}: {exc.reason}") from exc
        return source

    def resolved_api_tokens(self) -> list[str]:
        """The accepted bearer tokens as they are now (`token_source`). Never log the result."""
        return self.token_source().tokens()


LOCAL_TOKEN_FILE = "orchestrator.token"


def _describe(exc: ValidationError, origin: str) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(root)"
        parts.append(f"{field}: {error['msg']}")
    return f"invalid orchestrator settings ({origin}): " + "; ".join(parts)


def _describe_env_parse_error(exc: SettingsError) -> str:
    match = re.search(r'field "([^"]+)"', str(exc))
    if match is None:
        return f"invalid orchestrator settings (environment): {exc}"
    variable = f"GL_ORCHESTRATOR_{match.group(1).upper()}"
    return (
        f"invalid orchestrator settings (environment): {variable} must be a JSON list, "
        f'e.g. {variable}=\'["first", "second"]\''
    )


def load_settings(config_path: Path | str | None = None) -> OrchestratorSettings:
    """Build the settings from the environment and, when given, a YAML file (environment wins).

    Raises `ConfigError` with a message naming the bad field or the unreadable file.
    """
    try:
        from_env = OrchestratorSettings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "environment")) from exc
    except SettingsError as exc:  # a list-valued variable that is not JSON
        raise ConfigError(_describe_env_parse_error(exc)) from exc
    if config_path is None:
        return from_env
    try:
        file_values = read_yaml_mapping(Path(config_path))
    except SettingsFileError as exc:
        raise ConfigError(str(exc)) from exc
    merged = {**file_values, **{name: getattr(from_env, name) for name in from_env.model_fields_set}}
    try:
        return OrchestratorSettings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, f"file {config_path}")) from exc
