"""The console's inputs: the incident list's filter form, the approval, diagnosis and playbook forms,
validated.

Used by the console's handlers (`watchdog.console.routes`). An HTML form sends every field, empty
ones as "", and `datetime-local` inputs without an offset: both are read here (empty is "not
given", a time without offset is UTC, as the form's labels say), so a handler gets typed values or
a `FormError` naming the field, which it answers with a 400 page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from gl_common.ids import DagId
from watchdog.api_models import Cause, IncidentStatus, TrueOrFalse
from watchdog.listing import IncidentFilter
from watchdog.migrations import INCIDENT_STATUSES, TERMINAL_INCIDENT_STATUSES
from watchdog.operator_models import PlaybookName

PAGE_SIZE: Final = 25
MAX_PAGE: Final = 100
LIVE: Final = "live"  # the status filter's "any status still being handled"
LIVE_STATUSES: Final = tuple(s for s in INCIDENT_STATUSES if s not in TERMINAL_INCIDENT_STATUSES)
STATUS_CHOICES: Final = (LIVE, *INCIDENT_STATUSES)


class FormError(Exception):
    """An input the console cannot use; `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _utc_if_naive(value: Any) -> Any:
    value = _blank_is_none(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


BlankIsNone = BeforeValidator(_blank_is_none)  # a form sends an empty field as ""
When = Annotated[datetime | None, BeforeValidator(_utc_if_naive)]


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_FormT = TypeVar("_FormT", bound=_Form)


class ListQuery(_Form):
    """`GET /console/incidents`: the filter form, the page position and size."""

    status: Annotated[Literal["live"] | IncidentStatus | None, BlankIsNone] = None
    dag_id: Annotated[DagId | None, BlankIsNone] = None
    cause: Annotated[Cause | None, BlankIsNone] = None
    opened_after: When = None
    opened_before: When = None
    # true: only the incidents held now (`IncidentFilter.held`); false: the others; blank: any
    held: Annotated[TrueOrFalse | None, BlankIsNone] = None
    cursor: Annotated[Annotated[str, StringConstraints(max_length=512)] | None, BlankIsNone] = None
    limit: int = Field(PAGE_SIZE, ge=1, le=MAX_PAGE)

    def filters(self) -> dict[str, Any]:
        """The filters as JSON values (what a cursor is bound to, and what the next page repeats)."""
        return self.model_dump(mode="json", exclude={"cursor", "limit"}, exclude_none=True)

    def where(self) -> IncidentFilter:
        statuses = LIVE_STATUSES if self.status == LIVE else (self.status,) if self.status else None
        return IncidentFilter(
            statuses=statuses,
            dag_id=self.dag_id,
            likely_cause=self.cause,
            opened_after=self.opened_after,
            opened_before=self.opened_before,
            held=self.held,
        )


class DecisionForm(_Form):
    """`POST /console/incidents/{id}/decision`: which prompt, and the button pressed."""

    approval_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    decision: Literal["approve", "deny"]


class EventsQuery(_Form):
    """`GET /console/incidents/{id}/events`: the seq after which to stream (the page's newest)."""

    after: int = Field(0, ge=0, le=2**62)


class DiagnoseForm(_Form):
    """`POST /console/incidents/{id}/diagnose`: the button alone, no fields."""


def _json_object(value: Any) -> Any:
    """The params field: blank is none (the policy's defaults), else a JSON object."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError('not JSON: write an object such as {"agent_id": "a1"}') from None
        if not isinstance(value, dict):
            raise ValueError('not a JSON object: write one such as {"agent_id": "a1"}')
    return value


class PlaybookForm(_Form):
    """`POST /console/incidents/{id}/playbook`: which playbook, its params (a JSON object over the
    policy's defaults), and the step: `dry_run` (show what it would do) or `run`."""

    playbook: PlaybookName
    params: Annotated[dict[str, Any], BeforeValidator(_json_object)] = Field(default_factory=dict)
    step: Literal["dry_run", "run"]

    def params_text(self) -> str:
        """The params as the form shows them again (blank for none)."""
        return json.dumps(self.params, sort_keys=True) if self.params else ""


def read(model: type[_FormT], pairs: Mapping[str, str] | list[tuple[str, str]]) -> _FormT:
    """The fields of a query string or form body as `model`; each field may be given once."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else pairs
    fields: dict[str, str] = {}
    for name, value in items:
        if name in fields:
            raise FormError(name, "may be given once")
        fields[name] = value
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"][:1])
        raise FormError(field, str(error["msg"])) from None
