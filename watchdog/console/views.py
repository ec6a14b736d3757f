"""What the console's pages show, as plain values: an incident's diagnosis, plan, approval, timeline
and links, made from the records of the store (`watchdog.records`).

Called by the console's handlers (`watchdog.console.routes`), whose Jinja2 templates render these
values and nothing else (no lookups from templates). Pure functions: no I/O, no clock (the handler
passes `now`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from watchdog.incidents import IncidentDetail
from watchdog.policy import ApprovalRule
from watchdog.records import Approval, AuditEntry, Incident
from watchdog_sdk.diagnosis import Diagnosis

VALUE_WIDTH: Final = 400  # an evidence value longer than this is cut (the API has it whole)
STATE_WORDS: Final = {"used": "approved (acted on)"}
# What the page says after a form sent the visitor back to it (`?notice=`).
NOTICES: Final = {
    "approved": "Your approval is recorded.",
    "denied": "Your denial is recorded: nothing will act on this plan, and the incident is escalated.",
    "vote": "Your approval is recorded; the plan needs a second, different approver before it runs.",
    "same_approver": "You have already approved this plan: a second, different approver is needed.",
    "closed": "This prompt was settled before your answer arrived (its state is below): nothing changed.",
    "diagnosing": "A new diagnosis is queued under your name: the timeline below follows it.",
    "diagnosis_waiting": (
        "A diagnosis of this incident is already waiting or running, or the queue is full: it is "
        "diagnosed again shortly (your request is in the timeline)."
    ),
    "playbook_started": "The playbook is started under your name: the timeline below follows it.",
    "playbook_proposed": (
        "The playbook needs approval: it is proposed, and the approval below asks for it "
        "(your own vote is counted where the policy lets you approve)."
    ),
}


@dataclass(frozen=True)
class Item:
    """One labelled value (evidence, audit data), already turned into text."""

    label: str
    text: str


@dataclass(frozen=True)
class StepView:
    step: int
    name: str
    status: str
    summary: str
    evidence: list[Item]
    duration_ms: float


@dataclass(frozen=True)
class DiagnosisView:
    likely_cause: str
    cause_evidence: list[str]
    steps: list[StepView]
    stuck_node: str | None
    agent: str | None
    raw: str | None = None  # a stored diagnosis this version cannot read, shown as JSON


@dataclass(frozen=True)
class EventView:
    at: datetime
    actor: str
    kind: str
    phase: str
    data: list[Item]


@dataclass(frozen=True)
class ApprovalView:
    """The incident's newest approval prompt and how far it got."""

    id: str
    state: str
    pending: bool
    expires_at: datetime
    decided_by: str | None
    approvers: list[str]
    required: int

    @property
    def progress(self) -> str:
        """ "1 of 2": approvals given of approvals needed."""
        return f"{len(self.approvers)} of {self.required}"


def text_of(value: Any) -> str:
    """A JSON value as one line of text, cut at VALUE_WIDTH characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"


def fields_of(data: dict[str, Any]) -> list[Item]:
    return [Item(str(key), text_of(value)) for key, value in data.items()]


def diagnosis_view(stored: dict[str, Any] | None) -> DiagnosisView | None:
    """The stored diagnosis, steps in order; None before the first diagnosis."""
    if stored is None:
        return None
    try:
        diagnosis = Diagnosis.model_validate(stored)
    except ValidationError:
        raw = json.dumps(stored, indent=2, default=str, sort_keys=True)
        return DiagnosisView(str(stored.get("likely_cause", "unknown")), [], [], None, None, raw=raw)
    steps = [
        StepView(f.step, f.name, f.status.value, f.summary, fields_of(f.evidence), f.duration_ms)
        for f in sorted(diagnosis.findings, key=lambda finding: finding.step)
    ]
    return DiagnosisView(
        diagnosis.likely_cause,
        list(diagnosis.cause_evidence),
        steps,
        diagnosis.stuck_node_id,
        diagnosis.agent_id,
    )


@dataclass(frozen=True)
class ListedIncident:
    """One row of the incident list: the incident, and what holds it (empty: not held)."""

    incident: Incident
    held: list[str]


def listed(incidents: list[Incident]) -> list[ListedIncident]:
    """The rows of the incident list, each marked with what holds it (from its row, not its audit)."""
    return [ListedIncident(incident, held_lines(incident)) for incident in incidents]


def held_lines(incident: Incident) -> list[str]:
    """What holds the incident now (the API's `suppressed_by`, read from its row: `held_by`), one line
    each; empty when nothing."""
    lines = []
    for held in (incident.held_by or []) if incident.is_held else []:
        if held.get("kind") == "silence":
            matchers = ", ".join(held.get("matchers") or [])
            by = f" by {held['created_by']}" if held.get("created_by") else ""
            note = f": {held['comment']}" if held.get("comment") else ""
            lines.append(
                f"Alertmanager silence {held.get('id')} ({matchers}){by} until {held.get('ends_at')}{note}"
            )
        elif held.get("kind") == "maintenance":
            lines.append(f"maintenance window {held.get('name')} until {held.get('ends_at')}")
        else:
            lines.append(f"Alertmanager's silences could not be read ({held.get('error')}); held by policy")
    return lines


def timeline(entries: list[AuditEntry]) -> list[EventView]:
    """The audit log, oldest first: who did what, before or after, with its data."""
    return [EventView(e.at, e.actor, e.kind, e.phase, fields_of(e.data)) for e in entries]


def approval_view(
    approvals: list[Approval], rule_for: Callable[[Approval], ApprovalRule | None], *, now: datetime
) -> ApprovalView | None:
    """The newest prompt of the incident (None: none was asked for), with its approvers so far of
    the number its policy rule (`rule_for`) asks for."""
    if not approvals:
        return None
    newest = max(approvals, key=lambda approval: approval.created_at)
    expired = newest.state == "pending" and now >= newest.expires_at
    state = "expired" if expired else STATE_WORDS.get(newest.state, newest.state)
    approvers = list(newest.votes or [])
    if not approvers and newest.decided_by and newest.state in ("approved", "used"):
        approvers = [newest.decided_by]
    rule = rule_for(newest)
    return ApprovalView(
        id=newest.id,
        state=state,
        pending=newest.state == "pending" and not expired,
        expires_at=newest.expires_at,
        decided_by=newest.decided_by,
        approvers=approvers,
        required=rule.approvers_required if rule is not None else 1,
    )


def last_seq(detail: IncidentDetail) -> int:
    """The seq of the incident's newest audit entry (0: none): where the page's event stream starts."""
    return max((entry.id for entry in detail.audit), default=0)


def version_of(detail: IncidentDetail) -> str:
    """What changes whenever the incident page would: status, audit length, approval states."""
    approvals = ",".join(f"{a.id}:{a.state}" for a in detail.approvals)
    return f"{detail.incident.status}/{len(detail.audit)}/{approvals}"
