"""The operator API's models: the bodies and query strings it accepts and the answers it gives.

Where it sits: `watchdog.operator_api` declares its playbook, events, sweep, policy, modes and replay
routes with these models on its `gl_common.openapi.RouteTable` (validated before the handler runs, and
described in the OpenAPI document `watchdog.api` builds); the shared ids and the incident, approval
and token models are `watchdog.api_models`'.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from watchdog.api_models import ApprovalOut, IncidentId
from watchdog_sdk.outcomes import PlannedAction

MAX_EVENTS_PAGE = 1000
MAX_POLICY_TEXT = 256 * 1024
PlaybookName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", max_length=64),
    Field(description="a playbook's name (built in or a plugin's): 1-64 of a-z 0-9 _ . -"),
]
Window = Annotated[
    str,
    StringConstraints(pattern=r"^[1-9][0-9]{0,4}[dhm]$"),
    Field(description="a window back from now: 7d, 12h, 30m"),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WhoAmI(_Answer):
    """`GET /whoami`: the caller's identity as the service sees it."""

    name: str
    role: Literal["viewer", "approver", "operator", "admin"]
    source: Literal["token", "proxy", "slack", "link", "bootstrap"]
    groups: list[str]
    email: str | None
    actor: str = Field(description="how the audit log names the caller, e.g. token:alice")


# -- playbooks --------------------------------------------------------------------------------------


class PlaybookRunBody(_Request):
    """`POST /incidents/{id}/playbooks/{playbook}`: the playbook's params (over the policy's), and
    whether only to show the plan."""

    params: dict[str, Any] = Field(default_factory=dict, description="the playbook's params (validated)")
    dry_run: bool = Field(False, description="true: preconditions and planned actions only, nothing acts")


class PrecheckOut(_Answer):
    ok: bool
    reason: str


class PlaybookRunOut(_Answer):
    """202 `started`: the service runs it (follow `events`); 202 `awaiting_approval`: the policy's
    approval rule needs (more) approvers, a prompt was made (`approval`, with the requester's vote
    when they may approve); 200 `dry_run`: what it would do."""

    remediation_id: str | None = Field(description="the run's id (in its audit entries); null for a dry run")
    incident_id: int
    playbook: str
    state: Literal["started", "awaiting_approval", "dry_run"]
    params: dict[str, Any]
    precheck: PrecheckOut | None = None
    actions: list[PlannedAction] = Field(default_factory=list)
    approval: ApprovalOut | None = None
    events: str = Field(description="where to follow it: the incident's events route")


# -- events -----------------------------------------------------------------------------------------


class EventsQuery(_Request):
    """`GET /incidents/{id}/events`: the audit entries after `after` (a `seq`)."""

    after: int = Field(
        0, ge=0, le=2**63 - 1, description="the seq of the last event seen (0: from the start)"
    )
    limit: int = Field(500, ge=1, le=MAX_EVENTS_PAGE, description="page size")


class EventOut(_Answer):
    seq: int = Field(description="increasing id of the audit entry")
    at: datetime
    actor: str
    kind: str
    phase: str
    data: dict[str, Any]


class EventPage(_Answer):
    items: list[EventOut]
    next_after: int = Field(description="give as ?after= for the next events")
    incident_status: str
    final: bool = Field(description="the incident is closed: no more events will come")


# -- sweeps, policy, modes ----------------------------------------------------------------------------


class SweepOut(_Answer):
    """`POST /sweeps`: one sweep run now (on the sweep leader only)."""

    sweep: Literal["done"]
    report: dict[str, Any] = Field(description="result, leader, firing, pending, opened, joined, ...")


class PluginsOut(_Answer):
    playbooks: list[str]
    steps: list[str]
    problems: list[dict[str, str]]


class PolicyOut(_Answer):
    """`GET /policy`: the policy the service loaded and the plugins it knows."""

    source: str
    policy: dict[str, Any]
    plugins: PluginsOut


class ModesOut(_Answer):
    """`GET /modes`: the deployment's mode and each playbook's effective one. `live` false: the mode
    is set by configuration (`GL_WATCHDOG_MODE`) and a restart; there is no live switch to PUT."""

    mode: Literal["observe", "recommend", "auto"]
    playbooks: dict[str, str]
    live: bool
    kill_switch: str


# -- replay -----------------------------------------------------------------------------------------


class ReplayBody(_Request):
    """`POST /replay`: replay one incident, or every diagnosed one opened in a window, under `policy`."""

    incident_id: IncidentId | None = None
    since: Window | None = None
    policy: Annotated[str, StringConstraints(min_length=1, max_length=MAX_POLICY_TEXT)] = Field(
        description="the policy file's YAML text"
    )

    @model_validator(mode="after")
    def _one_target(self) -> ReplayBody:
        if (self.incident_id is None) == (self.since is None):
            raise ValueError("give exactly one of incident_id and since")
        return self


class ReplayOut(_Answer):
    items: list[dict[str, Any]] = Field(
        description="per incident: incident_id, execution_id, likely_cause, recorded, replayed, "
        "limits_refusal, changed"
    )
    changed: int = Field(description="how many plans the policy would change")
