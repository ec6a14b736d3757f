"""What the watchdog does with a diagnosis: plan, then act, ask a human, or escalate.

Called by the diagnosis jobs (`watchdog.diagnosis`, through the `on_diagnosed` hook the composition
root wires to `handle_diagnosed`), by the approval surfaces after a decision (`start_decision`: the
API and web page of `watchdog.web`, the demo's terminal) and by its own expiry loop for prompts nobody
answered. Uses the planner (`watchdog.planner`), the approval prompts (`watchdog.approvals`) and the
notifier, and hands every remediation to the one state machine (`watchdog.remediation`).

    diagnosis ──▶ plan (policy) ──▶ nothing to do ─────────────────────────▶ resolved (run ended itself)
                               ├──▶ no playbook / observe mode ─────────────▶ escalated
                               ├──▶ approval needed ──▶ prompt ──▶ approved ──▶ remediation
                               │                              └──▶ denied / expired ──▶ escalated
                               └──▶ auto ──────────────────────────────────▶ remediation
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from gl_common.clock import Clock
from watchdog.annotations import PROMPTED
from watchdog.approvals import ApprovalService
from watchdog.errors import InvalidTransition
from watchdog.incidents import IncidentService, transition_in
from watchdog.jobs import JobTracker
from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import MessageUpdates, PromptMessage
from watchdog.notify_router import update_prompt
from watchdog.plan import Plan
from watchdog.planner import make_plan
from watchdog.policy import Policy
from watchdog.records import Approval, Incident
from watchdog.remediation import STARTABLE, RemediationService
from watchdog.remediation_close import ACTOR, Outcome
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog.suppression import SuppressionGate, Verdict
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.errors import WatchdogError
from watchdog_sdk.registry import Registry

log = logging.getLogger(__name__)

# Diagnoses that need no remediation: the run ended by itself between the alert and the diagnosis.
SELF_RESOLVED: Final = frozenset({"not_stuck"})


def diagnosis_summary(diagnosis: Diagnosis) -> str:
    """One line: the likely cause, the stuck node and agent, and the evidence."""
    where = ", ".join(
        f"{k} {v}"
        for k, v in (
            ("node", diagnosis.stuck_node_id),
            ("agent", diagnosis.agent_id),
            ("dag", diagnosis.dag_id),
        )
        if v
    )
    evidence = "; ".join(diagnosis.cause_evidence)
    text = f"likely cause {diagnosis.likely_cause}"
    if where:
        text += f" ({where})"
    if evidence:
        text += f": {evidence}"
    return text


class Responder:
    """Plans for diagnosed incidents and settles approval prompts; every action goes to `remediation`."""

    def __init__(
        self,
        *,
        store: WatchdogStore,
        incidents: IncidentService,
        approvals: ApprovalService,
        remediation: RemediationService,
        policy: Policy,
        registry: Registry,
        mode: Mode,
        jobs: JobTracker,
        clock: Clock,
        metrics: WatchdogMetrics | None = None,
        suppression: SuppressionGate | None = None,
        messages: MessageUpdates | None = None,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.approvals = approvals
        self.remediation = remediation
        self.policy = policy
        self.registry = registry
        self.mode = mode
        self.jobs = jobs
        self.clock = clock
        self.metrics = metrics
        # Silences and maintenance windows, asked before planning (None: nothing is ever held).
        self.suppression = suppression
        self.messages = messages
        self._expiry: asyncio.Task[None] | None = None

    # -- after a diagnosis

    async def handle_diagnosed(self, incident_id: int, diagnosis: Diagnosis) -> Outcome:
        """Plan for a freshly diagnosed incident; then ask, act, or escalate as the plan says."""
        incident = await self.incidents.get(incident_id)
        if not incident.is_open:
            return Outcome(incident_id, incident.status, "incident no longer open")
        if diagnosis.likely_cause in SELF_RESOLVED:
            evidence = "; ".join(diagnosis.cause_evidence) or "the run ended"
            reason = f"nothing to do: {diagnosis.likely_cause} ({evidence})"
            try:
                resolved = await self.incidents.transition(
                    incident_id, "resolved", actor=ACTOR, reason=reason, expected=STARTABLE, summary=reason
                )
            except InvalidTransition as exc:
                return Outcome(incident_id, "unchanged", str(exc))
            self.incidents.closed_without_action(resolved, "not_stuck")
            return Outcome(incident_id, "resolved", reason)
        verdict = Verdict()
        if self.suppression is not None:
            verdict = await self.suppression.check(incident, diagnosis)
            if verdict.hold:
                return await self.suppression.hold(incident, verdict)
        async with self.store.transaction() as tx:  # a plan is its decision now: no longer held
            data = {"likely_cause": diagnosis.likely_cause}
            await tx.add_audit(incident_id, "plan", phase="before", actor=ACTOR, data=data)
            await tx.release_incident(incident_id)
        plan = verdict.applied_to(make_plan(diagnosis, self.policy, self.mode, self.registry))
        if plan.playbook is not None and plan.will_act:
            plan = await self.remediation.dry_run(incident, plan)
        await self.incidents.update(
            incident_id, kind="plan", actor=ACTOR, data={"rationale": plan.rationale}, plan=plan
        )
        summary = diagnosis_summary(diagnosis)
        if plan.playbook is None or not plan.will_act:
            return await self.remediation.closing.escalate(
                incident_id, plan.rationale, plan=plan, summary=summary
            )
        if plan.requires_approval:
            return await self._ask(incident, plan, summary)
        return await self.remediation.execute(incident_id)

    async def propose(self, incident: Incident, plan: Plan, summary: str, *, actor: str) -> Outcome:
        """Ask for approval of a plan a person made (a playbook asked for through the operator API that
        the policy's approval rule does not let its requester settle alone). A prompt still pending for
        the incident's former plan is superseded (`denied` by `actor`, audited `approval_superseded`);
        the plan is stored on the incident, then the same prompt, links and notification follow as for
        a planned one."""
        async with self.store.transaction() as tx:
            for pending in await tx.list_approvals(states=["pending"], incident_id=incident.id):
                now = self.clock.now()
                if await tx.update_approval(
                    pending.id, expected_state=["pending"], state="denied", decided_at=now, decided_by=actor
                ):
                    data = {"approval_id": pending.id, "by": plan.playbook}
                    await tx.add_audit(incident.id, "approval_superseded", actor=actor, data=data)
            expected = (incident.status,)
            if incident.status == "awaiting_approval":  # back to open: the new prompt asks again
                await transition_in(
                    tx,
                    incident.id,
                    "open",
                    actor=actor,
                    reason=f"{plan.playbook} asked for",
                    expected=expected,
                )
            await tx.update_incident(incident.id, plan=plan)
            await tx.add_audit(incident.id, "plan", actor=actor, data={"rationale": plan.rationale})
            await tx.release_incident(incident.id)
        return await self._ask(incident, plan, summary)

    async def _ask(self, incident: Incident, plan: Plan, summary: str) -> Outcome:
        async with self.store.transaction() as tx:
            approval = await self.approvals.create_in(
                tx, incident_id=incident.id, plan=plan, summary=summary, actor=ACTOR
            )
            await transition_in(
                tx,
                incident.id,
                "awaiting_approval",
                actor=ACTOR,
                reason=f"plan {plan.playbook} needs approval ({approval.id})",
            )
        links = self.approvals.links(approval)
        message = PromptMessage(
            approval_id=approval.id,
            incident_id=incident.id,
            execution_id=incident.execution_id,
            diagnosis_summary=summary,
            plan_headline=plan.headline(),
            rationale=plan.rationale,
            actions=[a.description for a in plan.actions],
            risk=plan.risk.value if plan.risk else None,
            expires_at=approval.expires_at.isoformat(),
            page_url=links.page,
            approve_url=links.approve,
            deny_url=links.deny,
            approval_rule=self.approvals.rule_for(approval),
        )
        notifier = self.remediation.notifier
        await self.remediation.closing.notify(
            incident.id, "approval_notified", notifier.approval_requested(message)
        )
        await self._annotate(approval, PROMPTED, incident)
        await self.incidents.refresh_approvals_gauge()
        return Outcome(incident.id, "awaiting_approval", f"approval {approval.id} requested")

    # -- after a decision

    def start_decision(self, approval: Approval) -> None:
        """Continue after `approval` was decided, in the background (a tracked job)."""
        self.jobs.spawn(self.on_decision(approval), name=f"decision-{approval.id}")

    async def on_decision(self, approval: Approval) -> Outcome:
        """Continue after a human answered: approved → act; denied → escalate, nothing acts; a first
        vote of two only updates the posted prompt. The prompt's message says each step."""
        incident_id = approval.incident_id
        if approval.state == "pending":  # a vote of a two-person approval: the prompt stays open
            votes = ", ".join(approval.votes or [])
            await self._tell(incident_id, "Awaiting a second approver", f"approved so far by {votes}")
            return Outcome(incident_id, "awaiting_approval", f"approval {approval.id}: vote recorded")
        if self.metrics is not None:
            self.metrics.observe_decided(approval)
        await self.incidents.refresh_approvals_gauge()
        incident = await self.incidents.get(incident_id)
        await self._annotate(approval, approval.state, incident)
        if approval.state == "approved":
            if approval.decided_by:  # a person took the run: its pages are acknowledged
                self.remediation.closing.taken(incident, approval.decided_by)
            await self._tell(approval.incident_id, "Approved", f"approved by {approval.decided_by}; acting")
            outcome = await self.remediation.execute(approval.incident_id, approval_id=approval.id)
            if outcome.status == "resolved":  # an escalation updates the message itself
                await self._tell(approval.incident_id, "Resolved", outcome.detail)
            return outcome
        if approval.state == "denied" and approval.decided_by:  # a person looked: the pages are acknowledged
            self.remediation.closing.denied(incident, approval.decided_by)
        return await self.remediation.closing.escalate(
            approval.incident_id,
            f"approval {approval.id} {approval.state} by {approval.decided_by}; nothing was done",
            expected=("awaiting_approval",),
        )

    async def _annotate(self, approval: Approval, state: str, incident: Incident | None = None) -> None:
        """Annotate the prompt posted or decided on the dashboards (`watchdog.annotations`), when they
        are on, as a job of its own: a slow or unreachable Grafana never delays the prompt, the
        remediation or the escalation that follows; `incident` is the prompt's, read when not given."""
        if self.remediation.annotations is not None:
            self.jobs.spawn(
                self._annotated(approval, state, incident), name=f"annotate-{approval.id}-{state}"
            )

    async def _annotated(self, approval: Approval, state: str, incident: Incident | None) -> None:
        assert self.remediation.annotations is not None
        of = incident if incident is not None else await self.incidents.get(approval.incident_id)
        await self.remediation.annotations.approval(of, approval, state)

    async def _tell(self, incident_id: int, state: str, detail: str) -> None:
        """Update the incident's posted prompt (`watchdog.notify_router.update_prompt`), if any."""
        if self.messages is not None:
            await update_prompt(self.incidents, self.messages, incident_id, state, detail)

    # -- prompts nobody answered

    async def expire_approvals(self) -> list[Outcome]:
        """Expire overdue prompts and escalate their incidents (nothing acts on an expired prompt)."""
        outcomes = []
        for approval in await self.approvals.expire_due(actor=ACTOR):
            if self.metrics is not None:
                self.metrics.approvals.labels(decision="expired").inc()
            await self._annotate(approval, "expired")
            outcomes.append(
                await self.remediation.closing.escalate(
                    approval.incident_id,
                    f"approval {approval.id} expired at {approval.expires_at.isoformat()} without an answer; "
                    "nothing was done",
                    expected=("awaiting_approval",),
                )
            )
        await self.incidents.refresh_approvals_gauge()
        return outcomes

    def start_expiry(self, interval_seconds: float) -> None:
        """Expire overdue prompts every `interval_seconds` until `aclose()`."""
        self._expiry = asyncio.create_task(self._expiry_loop(interval_seconds), name="approval-expiry")

    async def _expiry_loop(self, interval: float) -> None:
        while True:
            try:
                await self.expire_approvals()
            except WatchdogError as exc:  # store down for a moment: try again next round
                log.warning("approval expiry round failed: %s", exc)
            await self.clock.sleep(interval)

    async def aclose(self) -> None:
        """Stop the expiry loop (decisions being acted on are jobs: `JobTracker.aclose` waits for them)."""
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
            self._expiry = None
