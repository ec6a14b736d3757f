"""The Alertmanager webhook payload (version 4): its models and `parse_payload`, which validates it.

Where it sits: `watchdog.api` calls `validate_payload()` on the body of `POST /api/v1/alerts` as it
parsed it (tools and tests call `parse_payload()` on the bytes) and hands the result to
`watchdog.intake.AlertIntake.handle()`. Everything the intake stores or logs is checked
here, before anything is read or written (docs/architecture.md, "Webhook validation"): the labels the
runbook needs, ids by the one rule of `gl_common.ids`, no NUL anywhere, no control characters in
labels or stored text, every field within its column. One invalid alert is rejected on its own
(`RejectedAlert`); the valid alerts of its payload are still applied.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from gl_common.ids import DAG_ID_MAX, EXECUTION_ID_MAX, DagId, ExecutionId, id_text, printable
from watchdog.http import ApiError
from watchdog_sdk.constants import ALERT_NAME

# -- the payload (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config) ---------


MAX_LABELS: Final = 64
MAX_LABEL_NAME: Final = 128
MAX_LABEL_VALUE: Final = 1024
MAX_ALERTNAME: Final = 200  # alert_deliveries.alertname
MAX_FINGERPRINT: Final = 128  # alert_deliveries.fingerprint
MAX_TEXT: Final = 1024  # externalURL, generatorURL
MAX_RECEIVER: Final = 200  # stored in the audit entry of an incident the alert opens
MAX_GROUP_KEY: Final = 4096

LabelName = Annotated[str, printable(MAX_LABEL_NAME, min_length=1)]
LabelValue = Annotated[str, printable(MAX_LABEL_VALUE)]
Text = Annotated[str, printable(MAX_TEXT)]
_EXECUTION_ID: Final = TypeAdapter(ExecutionId)
_DAG_ID: Final = TypeAdapter(DagId)
_EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)


def _check_label(labels: dict[str, str], name: str, adapter: TypeAdapter[str], text: str) -> None:
    try:
        adapter.validate_python(labels[name])
    except ValidationError:
        raise ValueError(f"{name} {labels[name][:80]!r} is not a valid {text}") from None


def nul_in(value: Any, where: str) -> str | None:
    """Where a NUL character sits in a parsed JSON value (a key or a string), or None. Nothing with a
    NUL is stored anywhere (PostgreSQL text and JSON cannot hold one); iterative, no recursion."""
    stack = [(value, where)]
    while stack:
        current, at = stack.pop()
        if isinstance(current, str):
            if "\x00" in current:
                return at
        elif isinstance(current, dict):
            for key, child in current.items():
                if "\x00" in key:
                    return f"{at}.{key.replace(chr(0), '?')}"
                stack.append((child, f"{at}.{key}"))
        elif isinstance(current, list):
            stack.extend((child, f"{at}.{index}") for index, child in enumerate(current))
    return None


class AmAlert(BaseModel):
    """One alert of an Alertmanager webhook payload, validated for everything the intake stores or logs
    (docs/architecture.md, "Webhook validation")."""

    model_config = ConfigDict(extra="allow", frozen=True)

    status: Literal["firing", "resolved"]
    labels: dict[LabelName, LabelValue] = Field(max_length=MAX_LABELS)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: AwareDatetime  # Alertmanager's field names, as sent
    endsAt: AwareDatetime | None = None
    generatorURL: Text = ""
    fingerprint: Annotated[str, printable(MAX_FINGERPRINT)] = ""

    @field_validator("labels")
    @classmethod
    def _has_alertname(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("labels must include a non-empty 'alertname'")
        if len(labels["alertname"]) > MAX_ALERTNAME:
            raise ValueError(f"alertname is longer than {MAX_ALERTNAME} characters")
        if labels["alertname"] != ALERT_NAME:
            return labels
        if not labels.get("execution_id"):
            raise ValueError(f"an {ALERT_NAME} alert must carry a non-empty 'execution_id' label")
        _check_label(labels, "execution_id", _EXECUTION_ID, id_text("execution id", EXECUTION_ID_MAX))
        if labels.get("dag_id"):
            _check_label(labels, "dag_id", _DAG_ID, id_text("DAG id", DAG_ID_MAX))
        return labels

    @field_validator("startsAt")
    @classmethod
    def _storable_start(cls, starts_at: datetime) -> datetime:
        try:
            in_utc = starts_at.astimezone(UTC)
        except OverflowError:
            raise ValueError("startsAt is out of range") from None
        if not _EARLIEST <= in_utc < _LATEST:
            raise ValueError("startsAt must lie between 1970 and 9999")
        return starts_at

    @property
    def alertname(self) -> str:
        """The alert's name label."""
        return self.labels["alertname"]

    @property
    def episode_key(self) -> str:
        """The fingerprint Alertmanager sent, or one computed from the labels (older senders)."""
        if self.fingerprint:
            return self.fingerprint
        canonical = json.dumps(sorted(self.labels.items()), separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def labels_digest(self) -> str:
        """What the episode is about (execution and DAG), hashed: stored with the delivery, so that a
        repeat key (fingerprint + startsAt) that comes back with other labels is a conflict."""
        about = json.dumps([self.labels.get("execution_id"), self.labels.get("dag_id")])
        return hashlib.sha256(about.encode()).hexdigest()


class AmWebhook(BaseModel):
    """The Alertmanager webhook payload, version 4."""

    model_config = ConfigDict(extra="allow", frozen=True)

    version: Literal["4"]
    groupKey: Annotated[str, printable(MAX_GROUP_KEY)] = ""
    truncatedAlerts: int = Field(default=0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: Annotated[str, printable(MAX_RECEIVER)] = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: Text = ""
    alerts: list[AmAlert]


class _AmEnvelope(AmWebhook):
    """The payload around its alerts, each alert still unvalidated (see `parse_payload`)."""

    alerts: list[Any]


@dataclass(frozen=True)
class RejectedAlert:
    """An alert of a payload that failed validation: where it was and what is wrong with it."""

    index: int
    problem: str

    def as_json(self) -> dict[str, Any]:
        """The rejection as the API answers it."""
        return {"index": self.index, "problem": self.problem}


@dataclass(frozen=True)
class ParsedWebhook:
    """A validated payload (`payload.alerts` holds the valid alerts) and the alerts it rejected."""

    payload: AmWebhook
    rejected: list[RejectedAlert]


def describe_validation(exc: ValidationError, prefix: str = "") -> str:
    """Every problem of a validation error, each prefixed with where it is in the payload."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(part for part in (prefix, *map(str, error["loc"])) if part) or "body"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_payload(body: bytes) -> ParsedWebhook:
    """Parse and validate a webhook body, each alert on its own (see the module docstring).

    ApiError(400/422) naming the problem when the body is not a valid payload or every alert in it
    is invalid.
    """
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc
    return validate_payload(data)


def validate_payload(data: Any) -> ParsedWebhook:
    """`parse_payload` of a body already parsed as JSON (the API parses it once, with its limits)."""
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_payload", "body must be a JSON object (Alertmanager webhook payload)")
    if "version" in data and data["version"] != "4":
        raise ApiError(
            422,
            "unsupported_version",
            f"webhook payload version {data['version']!r} is not supported; expected version '4'",
        )
    nul = nul_in({key: value for key, value in data.items() if key != "alerts"}, "body")
    if nul is not None:
        raise ApiError(422, "invalid_payload", f"{nul}: holds a NUL character")
    try:
        envelope = _AmEnvelope.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_payload", describe_validation(exc)) from exc
    alerts: list[AmAlert] = []
    rejected: list[RejectedAlert] = []
    for index, raw in enumerate(envelope.alerts):
        nul = nul_in(raw, f"alerts.{index}")
        if nul is not None:
            rejected.append(RejectedAlert(index, f"{nul}: holds a NUL character"))
            continue
        try:
            alerts.append(AmAlert.model_validate(raw))
        except ValidationError as exc:
            rejected.append(RejectedAlert(index, describe_validation(exc, prefix=f"alerts.{index}")))
    if rejected and not alerts:
        raise ApiError(422, "invalid_payload", "; ".join(r.problem for r in rejected))
    payload = AmWebhook.model_construct(
        **{name: getattr(envelope, name) for name in AmWebhook.model_fields if name != "alerts"},
        alerts=alerts,
    )
    return ParsedWebhook(payload, rejected)
