"""The watchdog's configuration: one pydantic-settings model, built once at start-up and passed down.

Built by the CLI (`gl-watchdog serve|demo|diagnose ...`) through `load_settings(config_path)`; read by
the clients (URLs, tokens, timeouts), the intake, the sweeps, the diagnostics and the remediation side.
Nothing else reads the environment.

Sources, highest first: keyword arguments to `load_settings`, environment (`GL_WATCHDOG_<NAME>`), the
optional YAML file, defaults. Secrets can come from mounted files: `orchestrator_token_file`,
`api_token_file` (one token per line), `approval_signing_key_file`, `pagerduty_routing_key_file`,
`opsgenie_api_key_file`, `smtp_password_file`, `slack_bot_token_file`, `slack_signing_secret_file`
and `grafana_api_token_file`; a file's contents override the plain value. Secrets are `SecretStr`, so
they never show up in reprs or logs.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

from gl_common.auth import TokenSource
from gl_common.db import PoolSettings
from gl_common.settings_files import SettingsFileError, ensure_secret_file, read_yaml_mapping
from watchdog.identity import HeaderSet, Role
from watchdog_sdk.constants import ORCHESTRATOR_APP_SELECTOR
from watchdog_sdk.diagnostic_step import DiagnosticSettings
from watchdog_sdk.errors import ConfigError
from watchdog_sdk.stuck import StuckSettings

ENV_PREFIX = "GL_WATCHDOG_"
RUNBOOK_URL = "https://runbooks.greenlang.io/orchestrator/dag-execution-stuck"  # the alert's runbook


class Mode(StrEnum):
    """Remediation mode: diagnose only, ask for every action, or act where policy allows."""

    OBSERVE = "observe"
    RECOMMEND = "recommend"
    AUTO = "auto"


class NotifierKind(StrEnum):
    """Payload format of the approval notifier webhook."""

    SLACK = "slack"
    JSON = "json"


class EscalationTarget(StrEnum):
    """Where an escalation goes: the chat webhook (`notifier_url`) and/or a paging service."""

    CHAT = "chat"
    PAGERDUTY = "pagerduty"
    OPSGENIE = "opsgenie"
    EMAIL = "email"


class LogFormat(StrEnum):
    """How the watchdog writes its log: one JSON object per line, or plain text for a terminal."""

    JSON = "json"
    TEXT = "text"


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WatchdogSettings(BaseSettings):
    """Every setting of the watchdog service (docs/architecture.md, "Ports, paths, settings")."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # -- service
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    database_url: str = "sqlite+aiosqlite:///gl-watchdog.db"
    replica_id: str = Field(default_factory=_default_replica_id, min_length=1)
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    # OTLP/HTTP endpoint for the watchdog's spans, e.g. http://otel-collector:4318 (unset: no spans).
    otlp_endpoint: str | None = None
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # The database pool (`gl_common.db`; sizes apply to PostgreSQL): connections kept open, extra ones
    # under load, one timeout for connecting, waiting for a connection, a statement and a whole
    # transaction; pre-ping tests each pooled connection before use (one more round trip each time).
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=20, ge=0, le=1000)
    db_timeout_seconds: float = Field(default=10.0, gt=0)
    db_pool_pre_ping: bool = False
    # The intake (docs/architecture.md, "Intake under load"): deliveries at the store at once (null: the
    # pool's size + overflow; on SQLite they wait there to be applied together, in batches), how long one
    # waits for its turn before it is shed (503 + Retry-After, nothing written), and how many recorded
    # episodes it remembers to answer repeats without the store.
    intake_max_in_flight: int | None = Field(default=None, ge=1, le=10_000)
    intake_wait_seconds: float = Field(default=5.0, gt=0)
    intake_known_episodes: int = Field(default=100_000, ge=0)

    # -- backends
    redis_url: str | None = None
    orchestrator_url: str = "http://127.0.0.1:8080"
    orchestrator_token: SecretStr | None = None
    orchestrator_token_file: Path | None = None
    prometheus_url: str | None = None
    # Alertmanager whose silences hold incidents (`watchdog.suppression`); None: silences not checked.
    alertmanager_url: str | None = None
    # When Alertmanager cannot be read: prompt (no automatic action, still ask a human), act (as if
    # nothing were silenced) or hold (do nothing until it answers again).
    silence_check_failure: Literal["prompt", "act", "hold"] = "prompt"
    silence_cache_seconds: float = Field(default=30.0, ge=0)
    kubernetes_enabled: bool = False
    kubeconfig: Path | None = None  # unset: in-cluster config, then the default kubeconfig
    kubernetes_host: str | None = None  # explicit API server URL (tests, kubectl proxy); no auth
    namespace: str = "greenlang"
    # Label selector of the orchestrator's pods, whose logs diagnostic step 7 reads in Kubernetes.
    orchestrator_pod_selector: str = Field(default=ORCHESTRATOR_APP_SELECTOR, min_length=1)

    # -- timeouts of calls to outside systems (seconds)
    orchestrator_timeout_seconds: float = Field(default=10.0, gt=0)
    prometheus_timeout_seconds: float = Field(default=5.0, gt=0)
    kubernetes_timeout_seconds: float = Field(default=10.0, gt=0)
    redis_timeout_seconds: float = Field(default=5.0, gt=0)
    alertmanager_timeout_seconds: float = Field(default=5.0, gt=0)
    step_timeout_seconds: float = Field(default=10.0, gt=0)
    # Diagnoses running at once; more wait their turn (a burst of alerts must not flood the
    # orchestrator and the store with hundreds of concurrent diagnoses). While alert deliveries keep
    # the intake busy, only `watchdog.diagnosis.AMID_DELIVERIES` (4) of them run (issue 11: 16 let a
    # burst of 30 be diagnosed in two rounds instead of eight).
    max_concurrent_diagnoses: int = Field(default=16, ge=1)
    # Diagnoses waiting for a worker, at most; beyond that the newest incidents wait for a later sweep.
    diagnosis_queue_size: int = Field(default=256, ge=1)

    # -- jobs of incidents in a transient state (docs/architecture.md, "Bounds on transient states")
    # A job's lease: renewed every third of this while it runs; lapsed this long after its process died.
    job_lease_seconds: float = Field(default=30.0, gt=0)
    # Attempts of one job (lost, failed or overrun) before the incident is escalated.
    job_attempts: int = Field(default=3, ge=1)
    # The pause before the first retry of a job, doubled for each further one (at most 8 times).
    job_retry_backoff_seconds: float = Field(default=30.0, ge=0)
    # The longest one attempt of a remediation may apply and verify before it gives up for a retry.
    remediation_timeout_seconds: float = Field(default=1800.0, gt=0)

    # -- the watchdog's own API and approvals
    # The bootstrap tokens: each is the `bootstrap` identity with role admin. Use one to create named
    # tokens (POST /api/v1/tokens), then remove it (docs/operations.md "Identity and roles").
    api_tokens: list[SecretStr] = Field(default_factory=list)
    api_token_file: Path | None = None
    approval_signing_key: SecretStr | None = None
    approval_signing_key_file: Path | None = None
    public_url: str | None = None
    notifier_url: str | None = None
    notifier_kind: NotifierKind = NotifierKind.SLACK
    notifier_timeout_seconds: float = Field(default=10.0, gt=0)
    # -- paging (docs/alerting.md, "Paging"): prompts always go to the chat webhook; escalations go to
    # every target listed here, and a page is resolved when the incident's alert resolves.
    escalation_targets: list[EscalationTarget] = Field(default_factory=lambda: [EscalationTarget.CHAT])
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_routing_key_file: Path | None = None
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    pagerduty_severity: Literal["critical", "error", "warning", "info"] = "critical"
    opsgenie_api_key: SecretStr | None = None
    opsgenie_api_key_file: Path | None = None
    opsgenie_url: str = "https://api.opsgenie.com"  # EU accounts: https://api.eu.opsgenie.com
    opsgenie_priority: Literal["P1", "P2", "P3", "P4", "P5"] = "P2"
    # Email over SMTP (STARTTLS unless smtp_starttls is false; login when smtp_username is set).
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_starttls: bool = True
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_password_file: Path | None = None
    email_from: str = "gl-watchdog@localhost"
    email_to: list[str] = Field(default_factory=list)
    policy_file: Path | None = None  # unset: the shipped default policy
    mode: Mode = Mode.RECOMMEND
    approval_ttl_seconds: float = Field(default=900.0, gt=0)
    # The longest one server-sent events stream of an incident lasts (GET /api/v1/incidents/{id}/events
    # with Accept: text/event-stream); the client reconnects with Last-Event-ID.
    events_stream_seconds: float = Field(default=300.0, ge=0, le=3600)
    # Identity from an authenticating proxy (oauth2-proxy; docs/operations.md "Identity and roles"):
    # its X-Forwarded-User/-Email/-Groups (or X-Auth-Request-*) headers are believed only when enabled
    # and only from a peer inside `trusted_proxies` (CIDRs); `proxy_role_map` maps a group, an email
    # or a user name to a role (the highest match wins), `proxy_default_role` otherwise.
    proxy_auth_enabled: bool = False
    trusted_proxies: list[str] = Field(default_factory=list)
    proxy_role_map: dict[str, Role] = Field(default_factory=dict)
    proxy_default_role: Role = Role.VIEWER
    # Which set of headers the proxy sets (and overwrites): X-Auth-Request-* (oauth2-proxy's
    # --set-xauthrequest, passed on by an ingress controller's external auth) or X-Forwarded-*
    # (oauth2-proxy as the reverse proxy, --pass-user-headers). Only that set is read.
    proxy_headers: HeaderSet = "x-auth-request"
    # Where a laptop set-up keeps generated secrets (see `with_local_secrets`).
    state_dir: Path = Path(".gl-watchdog")

    # -- detection and leadership
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    for_duration_seconds: float = Field(default=600.0, ge=0)
    leader_ttl_seconds: float = Field(default=30.0, gt=0)
    # A lock holder's heartbeat older than this counts as gone (0: its age is ignored).
    heartbeat_grace_seconds: float = Field(default=30.0, ge=0)
    # A running run with no timeout at all gets a sweep incident once it has run this long (null: never).
    max_run_age_seconds: float | None = Field(default=86400.0, gt=0)
    # The stuck runs the timeout cannot see (docs/architecture.md, "Stall detection: signals, thresholds,
    # tuning"): the stall rule's knobs under `stall`, and the bounds of the other stuck states. In the
    # environment as JSON: GL_WATCHDOG_STUCK_RUNS='{"queued_max_seconds": 600}'.
    stuck_runs: StuckSettings = Field(default_factory=StuckSettings)
    # Whether the sweep looks for them (false: only the timeout condition and the rules above).
    stuck_run_detection: bool = True

    # -- the incident console (`watchdog.console`; docs/console.md)
    console_enabled: bool = True  # served at /console/ to the trusted proxy's signed-in users
    # Without a proxy identity: a request from a loopback peer is signed in as this user and role.
    console_local_mode: bool = False
    console_local_user: str = Field(default="local", min_length=1, max_length=100)
    console_local_role: Role = Role.VIEWER
    grafana_url: str | None = None  # a dashboard's URL; the console adds the execution's variables
    # Grafana annotations of remediations (`watchdog.annotations`; docs/alerting.md): Grafana's API
    # root (e.g. http://grafana:3000) and a service-account token; a dashboard UID pins them to one
    # dashboard, otherwise they are organisation-wide and the dashboards query the `gl-watchdog` tag.
    grafana_api_url: str | None = None
    grafana_api_token: SecretStr | None = None
    grafana_api_token_file: Path | None = None
    grafana_annotation_dashboard_uid: str | None = None
    grafana_timeout_seconds: float = Field(default=5.0, gt=0)
    orchestrator_public_url: str | None = None  # the orchestrator as a browser reaches it
    runbook_url: str = RUNBOOK_URL
    # A Tempo/Jaeger search for the run's trace, `{execution_id}` and `{dag_id}` filled in (URL-quoted),
    # e.g. https://grafana/explore?left={"queries":[{"query":"{ .execution_id = \"{execution_id}\" }"}]}
    # (unset: the orchestrator's own trace of the run). Shown in every notification and page.
    trace_url_template: str | None = None

    # -- Slack with a bot (docs/alerting.md "Slack app"): with a bot token the prompt is posted with
    # chat.postMessage to `slack_channel`, its buttons post to /api/v1/slack/interactions (verified with
    # the signing secret) and every state change updates it with chat.update. Without: the incoming
    # webhook of `notifier_url` with link buttons. `slack_role_map` maps a Slack user id (U..., never a
    # username: users rename themselves) to a role; unmapped users get `slack_default_role` (viewer).
    slack_bot_token: SecretStr | None = None
    slack_bot_token_file: Path | None = None
    slack_signing_secret: SecretStr | None = None
    slack_signing_secret_file: Path | None = None
    slack_channel: str | None = None
    slack_api_url: str = "https://slack.com/api"
    slack_role_map: dict[str, Role] = Field(default_factory=dict)
    slack_default_role: Role = Role.VIEWER

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
        return values

    @model_validator(mode="after")
    def _proxy_needs_addresses(self) -> WatchdogSettings:
        if self.proxy_auth_enabled and not self.trusted_proxies:
            raise ValueError("proxy_auth_enabled needs trusted_proxies (the proxy's addresses, as CIDRs)")
        return self

    @model_validator(mode="after")
    def _read_secret_files(self) -> WatchdogSettings:
        if self.orchestrator_token_file is not None:
            # The first line: the orchestrator's own token file may hold two during a rotation.
            token = (
                _read_secret(self.orchestrator_token_file, "orchestrator_token_file").splitlines()[0].strip()
            )
            self.orchestrator_token = SecretStr(token)
        if self.approval_signing_key_file is not None:
            self.approval_signing_key = SecretStr(
                _read_secret(self.approval_signing_key_file, "approval_signing_key_file")
            )
        if self.api_token_file is not None:
            text = _read_secret(self.api_token_file, "api_token_file")
            self.api_tokens = [SecretStr(line.strip()) for line in text.splitlines() if line.strip()]
        if self.pagerduty_routing_key_file is not None:
            self.pagerduty_routing_key = SecretStr(
                _read_secret(self.pagerduty_routing_key_file, "pagerduty_routing_key_file")
            )
        if self.smtp_password_file is not None:
            self.smtp_password = SecretStr(_read_secret(self.smtp_password_file, "smtp_password_file"))
        if self.opsgenie_api_key_file is not None:
            key = _read_secret(self.opsgenie_api_key_file, "opsgenie_api_key_file")
            self.opsgenie_api_key = SecretStr(key)
        if self.slack_bot_token_file is not None:
            self.slack_bot_token = SecretStr(_read_secret(self.slack_bot_token_file, "slack_bot_token_file"))
        if self.slack_signing_secret_file is not None:
            secret = _read_secret(self.slack_signing_secret_file, "slack_signing_secret_file")
            self.slack_signing_secret = SecretStr(secret)
        if self.grafana_api_token_file is not None:
            token = _read_secret(self.grafana_api_token_file, "grafana_api_token_file")
            self.grafana_api_token = SecretStr(token)
        if self.grafana_api_url is not None and self.grafana_api_token is None:
            raise ValueError("grafana_api_url needs grafana_api_token (or grafana_api_token_file)")
        return self

    @model_validator(mode="after")
    def _slack_bot_is_complete(self) -> WatchdogSettings:
        if self.slack_bot_token is not None and not (self.slack_channel and self.slack_signing_secret):
            raise ValueError(
                "slack_bot_token needs slack_channel and slack_signing_secret (or slack_signing_secret_file)"
            )
        return self

    @model_validator(mode="after")
    def _paging_has_credentials(self) -> WatchdogSettings:
        needs = {
            EscalationTarget.PAGERDUTY: ("pagerduty_routing_key", self.pagerduty_routing_key),
            EscalationTarget.OPSGENIE: ("opsgenie_api_key", self.opsgenie_api_key),
        }
        if EscalationTarget.EMAIL in self.escalation_targets and not (self.smtp_host and self.email_to):
            raise ValueError("escalation_targets has email but smtp_host or email_to is not set")
        for target in self.escalation_targets:
            if target in needs and needs[target][1] is None:
                name = needs[target][0]
                raise ValueError(f"escalation_targets has {target.value} but no {name} (or {name}_file)")
        return self

    def with_local_secrets(self, *, create: bool) -> WatchdogSettings:
        """Fill what is not configured from the local state directory (`state_dir`).

        For a laptop set-up without any configuration: the orchestrator token is read from the
        `orchestrator.token` that `gl-orchestrator serve` generates in the same directory; the
        watchdog's own API token and approval signing key come from `watchdog.token` and
        `signing.key`, which `serve` creates (`create=True`, mode 0600) and the CLI's client commands
        only read. Configured values always win; nothing is ever logged but paths.
        """
        update: dict[str, Any] = {}
        orchestrator_file = self.state_dir / "orchestrator.token"
        if self.orchestrator_token is None and orchestrator_file.is_file():
            update["orchestrator_token"] = SecretStr(_read_secret(orchestrator_file, "orchestrator.token"))
        own_token = self.state_dir / "watchdog.token"
        signing_key = self.state_dir / "signing.key"
        if create:
            wanted = [(own_token, not self.api_tokens), (signing_key, self.approval_signing_key is None)]
            try:
                for path, missing in wanted:
                    if missing:
                        ensure_secret_file(path)
            except SettingsFileError as exc:
                raise ConfigError(str(exc)) from exc
        if not self.api_tokens and own_token.is_file():
            update["api_tokens"] = [SecretStr(_read_secret(own_token, "watchdog.token"))]
        if self.approval_signing_key is None and signing_key.is_file():
            update["approval_signing_key"] = SecretStr(_read_secret(signing_key, "signing.key"))
        return self.model_copy(update=update) if update else self

    def token_source(self) -> TokenSource:
        """The API's bearer tokens: `api_token_file` (re-read when it changes) or `api_tokens`."""
        if self.api_token_file is not None:
            return TokenSource([], self.api_token_file)
        return TokenSource(self.api_token_values())

    def api_token_values(self) -> list[str]:
        """The plain API tokens, for `hmac.compare_digest` (never log them)."""
        return [token.get_secret_value() for token in self.api_tokens]

    def db_pool(self) -> PoolSettings:
        """How the store reaches its database (SQLite: `BEGIN IMMEDIATE` for every writing transaction)."""
        return PoolSettings(
            timeout_seconds=self.db_timeout_seconds,
            pool_size=self.db_pool_size,
            max_overflow=self.db_max_overflow,
            pre_ping=self.db_pool_pre_ping,
            sqlite_begin="immediate",
        )

    def intake_in_flight(self) -> int:
        """Deliveries the intake lets at the store at once (see `intake_max_in_flight`)."""
        if self.intake_max_in_flight is not None:
            return self.intake_max_in_flight
        return self.db_pool_size + self.db_max_overflow

    def diagnostics(self) -> DiagnosticSettings:
        """What the diagnostic steps read of these settings."""
        return DiagnosticSettings(
            step_timeout_seconds=self.step_timeout_seconds,
            heartbeat_grace_seconds=self.heartbeat_grace_seconds,
            orchestrator_pod_selector=self.orchestrator_pod_selector,
            max_run_age_seconds=self.max_run_age_seconds,
            stuck=self.stuck_runs,
        )

    def orchestrator_token_value(self) -> str | None:
        """The plain orchestrator bearer token, or None when none is configured."""
        return None if self.orchestrator_token is None else self.orchestrator_token.get_secret_value()


def _read_secret(path: Path, field: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror or exc}") from exc
    if not text:
        raise ValueError(f"{field}: {path} is empty")
    return text


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "settings"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> WatchdogSettings:
    """Build the settings from `overrides` > environment > YAML file > defaults.

    Raises ConfigError with every offending field named when anything is invalid.
    """
    try:
        values = read_yaml_mapping(Path(config_path)) if config_path is not None else {}
    except SettingsFileError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        env_values = EnvSettingsSource(WatchdogSettings)()
    except SettingsError as exc:
        raise ConfigError(f"invalid {ENV_PREFIX}* environment variable: {exc}") from exc
    values.update(env_values)
    values.update(overrides)
    try:
        return WatchdogSettings(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid watchdog settings: {_describe(exc)}") from exc
    except SettingsError as exc:
        raise ConfigError(f"invalid watchdog settings: {exc}") from exc
