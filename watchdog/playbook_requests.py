"""A playbook a person asks for on one incident: its dry run, its start, or its proposal for approval.

Called by the operator API (`POST /api/v1/incidents/{id}/playbooks/{playbook}`, `watchdog.operator_api`)
and the console's playbook form (`watchdog.console.actions`), which map its errors to their answers.
It acts through the same services as the automatic path: the remediation service runs the playbook
(`RemediationService.run_manual`: budgets, breaker, audit; in the background, as a job of the
service's `JobTracker`), or, when the policy's approval rule needs more than the requester, the
responder proposes it (`Responder.propose`: the prompt, its links and notification), with the
requester's own vote when they may approve (one of two). Each start or proposal is audited as
`playbook_requested` under the requester's actor. Raises UnknownPlaybook, PlaybookError (params) and
RequestRefused (`watchdog.errors`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from watchdog.approvals import ApprovalService, Decision, approver_problem
from watchdog.errors import RequestRefused, UnknownPlaybook
from watchdog.identity import Identity
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.plan import Plan
from watchdog.policy import ApprovalRule, Policy
from watchdog.records import Approval, Incident
from watchdog.remediation import MANUAL_RULE, RemediationService
from watchdog.remediation_setup import ManualRun, parse_params, preview
from watchdog.responder import Responder
from watchdog.settings import Mode
from watchdog_sdk.outcomes import PlannedAction, Precheck, Risk
from watchdog_sdk.registry import AnyPlaybook


@dataclass(frozen=True)
class Requester:
    """Who asks: the audit's `actor`, and the identity the approval rule is checked against (None: a
    trusted in-process user, the console's local user, who decides as the CLI on the machine does)."""

    actor: str
    identity: Identity | None

    def approval_problem(self, rule: ApprovalRule) -> str | None:
        """Why this requester may not approve under `rule`, or None when they may."""
        return approver_problem(rule, self.identity) if self.identity is not None else None

    async def approve(self, approvals: ApprovalService, approval_id: str) -> Approval:
        if self.identity is not None:
            return await approvals.decide(approval_id, Decision.APPROVE, identity=self.identity)
        return await approvals.decide(approval_id, Decision.APPROVE, actor=self.actor, authenticated=True)


@dataclass(frozen=True)
class Requested:
    """What became of a request: `started` (follow the incident's events), or `awaiting_approval`
    with the prompt (the requester's vote in it when they may approve)."""

    remediation_id: str
    state: Literal["started", "awaiting_approval"]
    approval: Approval | None = None


@dataclass(frozen=True)
class PlaybookRequests:
    """The services a request acts through (`watchdog.operator_api.Operations.requests`: the API's
    and the console's)."""

    remediation: RemediationService
    incidents: IncidentService
    approvals: ApprovalService
    responder: Responder
    jobs: JobTracker
    policy: Policy
    mode: Mode

    def names(self) -> list[str]:
        """The playbooks a person may ask for: the registry's, plugins included."""
        return sorted(self.remediation.registry.names())

    def request(
        self, incident: Incident, name: str, params: dict[str, Any], requester: Requester, *, via: str
    ) -> PlaybookRequest:
        """The request of playbook `name` on `incident` with `params` over the policy's defaults
        (UnknownPlaybook, or PlaybookError naming the bad params); `via` says where it was asked
        ("the API", "the console"), in the plan's rationale."""
        if name not in self.remediation.registry.names():
            raise UnknownPlaybook(f"no playbook {name!r}; known: {', '.join(self.names())}")
        playbook = self.remediation.registry.get(name)
        typed = parse_params(playbook, {**self.policy.playbook(name).params, **params})
        return PlaybookRequest(self, requester, incident, playbook, typed.model_dump(mode="json"), via)


@dataclass(frozen=True)
class PlaybookRequest:
    """One playbook asked for: shown (`preview`), then started or proposed (`submit`)."""

    service: PlaybookRequests
    requester: Requester
    incident: Incident
    playbook: AnyPlaybook
    params: dict[str, Any]
    via: str
    remediation_id: str = field(default_factory=lambda: f"rem_{secrets.token_urlsafe(9)}")

    @property
    def risk(self) -> Risk:
        """The policy's risk for this playbook, else its own."""
        return self.service.policy.playbook(self.playbook.name).risk or self.playbook.risk

    @property
    def rule(self) -> ApprovalRule | None:
        """The policy's approval rule for this playbook at its risk (None: none applies)."""
        return self.service.policy.approval_for(self.playbook.name, self.risk)

    @property
    def needs_approval(self) -> bool:
        """True when submitting makes a proposal: the rule needs two people, or one the requester is not."""
        rule = self.rule
        return rule is not None and (
            rule.approvers_required > 1 or self.requester.approval_problem(rule) is not None
        )

    @property
    def rationale(self) -> str:
        return f"asked for through {self.via} by {self.requester.actor} ({self.remediation_id})"

    async def preview(self) -> tuple[Precheck, tuple[PlannedAction, ...]]:
        """The dry run: the preconditions and the actions, recorded nowhere."""
        contexts = self.service.remediation.contexts
        return await preview(self.playbook, self.incident.execution_id, self.params, contexts)

    async def submit(self) -> Requested:
        """Start it, or propose it when the approval rule needs more than the requester
        (RequestRefused when the incident is settled, or the proposal cannot be made)."""
        if not self.incident.is_open:
            raise RequestRefused(
                "settled", f"incident {self.incident.id} is {self.incident.status}: open a new one to act"
            )
        rule = self.rule
        if rule is not None and self.needs_approval:
            return await self._propose(rule)
        return await self._start()

    async def _record(self, **more: Any) -> None:
        data = {"remediation_id": self.remediation_id, "playbook": self.playbook.name, "params": self.params}
        await self.service.incidents.record(
            self.incident.id, "playbook_requested", actor=self.requester.actor, data={**data, **more}
        )

    async def _start(self) -> Requested:
        """Run it now: the remediation state machine, in the background (followed through events)."""
        manual = ManualRun(
            playbook=self.playbook.name,
            execution_id=self.incident.execution_id,
            params=self.params,
            actor=self.requester.actor,
            rationale=self.rationale,
        )
        await self._record()
        remediation = self.service.remediation
        self.service.jobs.spawn(remediation.run_manual(manual), name=f"playbook-{self.remediation_id}")
        return Requested(self.remediation_id, "started")

    async def _propose(self, rule: ApprovalRule) -> Requested:
        """A prompt for the plan (superseding one pending for the incident's former plan), with the
        requester's own vote when they may approve (one of two)."""
        precheck, actions = await self.preview()
        if not precheck.ok:
            raise RequestRefused(
                "preconditions", f"{self.playbook.name}: {precheck.reason}; nothing proposed"
            )
        service = self.service
        plan = Plan(
            execution_id=self.incident.execution_id,
            likely_cause="manual",
            playbook=self.playbook.name,
            params=self.params,
            risk=self.risk,
            mode=service.mode,
            requires_approval=True,
            will_act=True,
            rule=MANUAL_RULE,
            rationale=self.rationale,
            actions=list(actions),
        )
        await self._record(approval="needed")
        await service.responder.propose(self.incident, plan, self.rationale, actor=self.requester.actor)
        approval = await service.approvals.pending_of(self.incident.id)
        if approval is None:  # the prompt could not be made (the incident moved meanwhile)
            raise RequestRefused("not_proposed", f"incident {self.incident.id} could not be put to approval")
        if self.requester.approval_problem(rule) is None:
            approval = await self.requester.approve(service.approvals, approval.id)
        return Requested(self.remediation_id, "awaiting_approval", approval)
