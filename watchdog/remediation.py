"""The remediation loop: diagnosis → plan → (approval) → re-check preconditions → apply → verify →
resolved | escalated, every step written to the audit log before and after it happens.

Called by the watchdog app once an incident's diagnosis is stored (`Remediator.handle_diagnosed`), by
the approval surfaces (API, web page, CLI) after a decision (`Remediator.on_decision`), by the sweeper
for expired prompts (`Remediator.expire_approvals`), and at start-up (`Remediator.resume_interrupted`).
Uses the planner (`watchdog.planner`), the policy's limits (`watchdog.policy`), approvals
(`watchdog.approvals`), the notifier (`watchdog.notifier`), the incidents service
(`watchdog.incidents`) and the playbooks (`playbooks.registry`), which reach outside systems through
`watchdog_sdk.clients`.

Safety rules, all enforced through the store so they hold across restarts and replicas:

- one action in flight per execution: an incident moves into `remediating` by compare-and-set, and there
  is at most one open incident per execution (the store's unique index);
- an approval drives at most one remediation: it moves `approved → used` in that same transaction;
- limits (`rate_events`): agent restarts per agent per hour, a global budget of remediations per hour,
  and a circuit breaker that refuses to act after K failed remediations in a window;
- steps are recorded in `actions` with a unique idempotency key (`watchdog_sdk.playbook.run_step`); after a
  crash, `resume_interrupted` re-enters the playbook: steps that finished are skipped, idempotent
  half-done steps are re-run with their recorded request, and a non-idempotent half-done step is marked
  `interrupted` and the incident escalated — it is never repeated.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from gl_common.clock import Clock
from playbooks.registry import default_registry
from watchdog.app import WatchdogApp
from watchdog.approvals import ApprovalService
from watchdog.errors import InvalidTransition
from watchdog.incidents import IncidentService, transition_in
from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import EscalationMessage, Notifier, NotifyResult, PromptMessage, notifier_from_settings
from watchdog.plan import Plan
from watchdog.planner import make_plan
from watchdog.policy import Policy, load_policy
from watchdog.settings import Mode
from watchdog.store import Approval, Incident, Tx, WatchdogStore
from watchdog_sdk.clients import Clients
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.errors import ConfigError, WatchdogError
from watchdog_sdk.ledger import ActionLedger, ActionState, InMemoryLedger, LedgerEntry
from watchdog_sdk.outcomes import ApplyResult, VerifyResult
from watchdog_sdk.playbook import PlaybookContext, PlaybookLimits
from watchdog_sdk.registry import Registry

log = logging.getLogger(__name__)

ACTOR = "watchdog"
STARTABLE = ("open", "diagnosing", "awaiting_approval")
# Diagnoses that need no remediation: the run ended by itself between the alert and the diagnosis.
SELF_RESOLVED = frozenset({"not_stuck"})
OBSERVE_REFUSAL = (
    "the watchdog is in observe mode: nothing acts, including remediations approved or started before"
    " the switch; run the playbook by hand (gl-watchdog playbook run) if it is still wanted"
)
RATE_AGENT_RESTART = "agent_restart"
RATE_REMEDIATION = "remediation"
RATE_FAILED = "remediation_failed"
GLOBAL_KEY = "*"
LIMITS_LOCK_KEY = 0x676C5744  # "glWD": the PostgreSQL advisory lock around limit checks


# -- the ledger over the store ---------------------------------------------------------------------------


class StoreLedger:
    """`watchdog_sdk.ledger.ActionLedger` over the store's `actions` table (unique idempotency key)."""

    def __init__(self, store: WatchdogStore, approval_id: str | None = None) -> None:
        self.store = store
        self.approval_id = approval_id

    async def get(self, key: str) -> LedgerEntry | None:
        async with self.store.transaction() as tx:
            action = await tx.get_action(key)
        if action is None:
            return None
        return LedgerEntry(
            key=key,
            incident_id=action.incident_id,
            playbook=action.playbook,
            step=action.step,
            state=ActionState(action.state),
            request=dict(action.params or {}),
            result=dict(action.result or {}),
        )

    async def start(
        self, key: str, incident_id: int, playbook: str, step: str, request: dict[str, Any]
    ) -> bool:
        async with self.store.transaction() as tx:
            action = await tx.insert_action(
                incident_id=incident_id,
                playbook=playbook,
                step=step,
                idempotency_key=key,
                params=request,
                approval_id=self.approval_id,
            )
            if action is None:
                return False
            await tx.add_audit(
                incident_id,
                "action",
                phase="before",
                actor=ACTOR,
                data={"playbook": playbook, "step": step, "key": key, "request": request},
            )
        return True

    async def restart(self, key: str) -> bool:
        entry = await self.get(key)
        if entry is None or entry.state is not ActionState.STARTED:
            return False
        async with self.store.transaction() as tx:
            await tx.add_audit(
                entry.incident_id,
                "action",
                phase="before",
                actor=ACTOR,
                data={"playbook": entry.playbook, "step": entry.step, "key": key, "rerun": True},
            )
        return True

    async def finish(self, key: str, state: ActionState, result: dict[str, Any]) -> None:
        async with self.store.transaction() as tx:
            action = await tx.get_action(key)
            if action is None:
                return
            await tx.finish_action(action.id, state.value, result)
            await tx.add_audit(
                action.incident_id,
                "action",
                phase="after",
                actor=ACTOR,
                data={
                    "playbook": action.playbook,
                    "step": action.step,
                    "key": key,
                    "state": state.value,
                    **result,
                },
            )


# -- the loop --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one pass of the loop over an incident ended."""

    incident_id: int
    status: str
    detail: str


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


class Remediator:
    """Runs incidents through the loop. One instance per watchdog process; state lives in the store."""

    def __init__(
        self,
        *,
        store: WatchdogStore,
        incidents: IncidentService,
        approvals: ApprovalService,
        notifier: Notifier,
        policy: Policy,
        registry: Registry,
        clients: Clients,
        mode: Mode,
        metrics: WatchdogMetrics | None = None,
        clock: Clock | None = None,
        poll_interval_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.approvals = approvals
        self.notifier = notifier
        self.policy = policy
        self.registry = registry
        self.clients = clients
        self.mode = mode
        self.metrics = metrics
        self.clock = clock or store.clock
        self.poll_interval_seconds = poll_interval_seconds
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expiry: asyncio.Task[None] | None = None

    # -- background work, tracked so shutdown (and tests) can wait for it

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run `coro` in the background, tracked; `drain()` waits for every such task."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for every background task started by `spawn`."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def start(self, expiry_interval_seconds: float) -> list[Outcome]:
        """Resume what a previous process left half-done, then expire overdue prompts periodically."""
        outcomes = await self.resume_interrupted()
        self._expiry = asyncio.create_task(self._expiry_loop(expiry_interval_seconds), name="approval-expiry")
        return outcomes

    async def _expiry_loop(self, interval: float) -> None:
        while True:
            try:
                await self.expire_approvals()
            except WatchdogError as exc:  # store down for a moment: try again next round
                log.warning("approval expiry round failed: %s", exc)
            await self.clock.sleep(interval)

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Stop the expiry loop; wait (bounded) for decisions being acted on, then cancel them."""
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
            self._expiry = None
        try:
            async with asyncio.timeout(grace_seconds):
                await self.drain()
        except TimeoutError:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- context

    def context(
        self, incident: Incident, playbook: str, ledger: ActionLedger | None = None
    ) -> PlaybookContext:
        """The playbook context for `incident` (the store's ledger unless one is given)."""
        limits = self.policy.limits
        ready = float(self.policy.playbook(playbook).params.get("ready_timeout_seconds", 120.0))
        return PlaybookContext(
            incident_id=incident.id,
            execution_id=incident.execution_id,
            clients=self.clients,
            ledger=ledger or StoreLedger(self.store),
            limits=PlaybookLimits(
                max_node_timeout_seconds=limits.max_node_timeout_seconds,
                lock_grace_seconds=float(limits.lock_grace_seconds),
                ready_timeout_seconds=ready,
                poll_interval_seconds=self.poll_interval_seconds,
            ),
            clock=self.clock,
        )

    # -- entry points

    async def handle_diagnosed(self, incident_id: int, diagnosis: Diagnosis) -> Outcome:
        """Plan for a freshly diagnosed incident; then ask, act, or escalate as the plan says."""
        incident = await self.incidents.get(incident_id)
        if not incident.is_open:
            return Outcome(incident_id, incident.status, "incident no longer open")
        if diagnosis.likely_cause in SELF_RESOLVED:
            evidence = "; ".join(diagnosis.cause_evidence) or "the run ended"
            reason = f"nothing to do: {diagnosis.likely_cause} ({evidence})"
            try:
                await self.incidents.transition(
                    incident_id, "resolved", actor=ACTOR, reason=reason, expected=STARTABLE, summary=reason
                )
            except InvalidTransition as exc:
                return Outcome(incident_id, "unchanged", str(exc))
            return Outcome(incident_id, "resolved", reason)
        await self.incidents.record(
            incident_id, "plan", phase="before", actor=ACTOR, data={"likely_cause": diagnosis.likely_cause}
        )
        plan = make_plan(diagnosis, self.policy, self.mode, self.registry)
        if plan.playbook is not None and plan.will_act:
            plan = await self._with_dry_run(incident, plan)
        await self.incidents.update(
            incident_id,
            kind="plan",
            actor=ACTOR,
            data={"rationale": plan.rationale},
            plan=plan,
        )
        summary = diagnosis_summary(diagnosis)
        if plan.playbook is None or not plan.will_act:
            reason = plan.rationale
            return await self._escalate(incident_id, reason, plan=plan, summary=summary)
        if plan.requires_approval:
            return await self._ask(incident, plan, summary)
        return await self.execute(incident_id)

    async def on_decision(self, approval: Approval) -> Outcome:
        """Continue after a human answered: approved → act; denied → escalate, nothing acts."""
        if self.metrics is not None:
            self.metrics.approvals.labels(decision=approval.state).inc()
        await self._refresh_pending_gauge()
        if approval.state == "approved":
            return await self.execute(approval.incident_id, approval_id=approval.id)
        return await self._escalate(
            approval.incident_id,
            f"approval {approval.id} {approval.state} by {approval.decided_by}; nothing was done",
            expected=("awaiting_approval",),
        )

    async def expire_approvals(self) -> list[Outcome]:
        """Expire overdue prompts and escalate their incidents (nothing acts on an expired prompt)."""
        outcomes = []
        for approval in await self.approvals.expire_due(actor=ACTOR):
            if self.metrics is not None:
                self.metrics.approvals.labels(decision="expired").inc()
            outcomes.append(
                await self._escalate(
                    approval.incident_id,
                    f"approval {approval.id} expired at {approval.expires_at.isoformat()} without an answer; "
                    "nothing was done",
                    expected=("awaiting_approval",),
                )
            )
        await self._refresh_pending_gauge()
        return outcomes

    async def execute(self, incident_id: int, approval_id: str | None = None) -> Outcome:
        """Take the incident into `remediating` (one winner), re-check, check limits, apply, verify."""
        if self.mode is Mode.OBSERVE:
            # The kill switch also holds for prompts approved after the switch to observe.
            return await self._escalate(incident_id, OBSERVE_REFUSAL)
        incident, refusal = await self._begin(incident_id, approval_id)
        if incident is None:
            return Outcome(incident_id, "unchanged", refusal)
        plan = incident.plan
        assert plan is not None and plan.playbook is not None  # _begin refuses plans without a playbook
        return await self._run(incident, plan, approval_id, recheck=True)

    async def resume_interrupted(self) -> list[Outcome]:
        """At start-up: re-enter incidents left in `remediating`/`verifying` by a dead watchdog.

        Finished steps are skipped and never repeated; a non-idempotent step found half-done is marked
        interrupted and the incident escalated.
        """
        outcomes = []
        for incident in await self.store.list_incidents(statuses=["remediating", "verifying"]):
            await self.incidents.record(
                incident.id, "remediation_resumed", actor=ACTOR, data={"status": incident.status}
            )
            plan = incident.plan
            if plan is None or plan.playbook is None:
                outcomes.append(
                    await self._escalate(incident.id, "interrupted remediation without a plan", failed=False)
                )
                continue
            if incident.status == "verifying":
                outcomes.append(await self._verify_and_close(incident, plan))
            elif self.mode is Mode.OBSERVE:
                refusal = OBSERVE_REFUSAL + " (interrupted remediation)"
                outcomes.append(await self._escalate(incident.id, refusal))
            else:
                # Died before the first step was recorded: nothing was done, so check live state again.
                async with self.store.transaction() as tx:
                    acted = bool(await tx.list_actions(incident_id=incident.id))
                outcomes.append(await self._run(incident, plan, None, recheck=not acted))
        return outcomes

    async def dry_run(self, incident: Incident, plan: Plan) -> Plan:
        """The plan with its playbook's dry-run actions filled in (nothing is changed)."""
        return await self._with_dry_run(incident, plan)

    # -- steps

    async def _with_dry_run(self, incident: Incident, plan: Plan) -> Plan:
        assert plan.playbook is not None
        playbook = self.registry.get(plan.playbook)
        ctx = self.context(incident, plan.playbook, ledger=InMemoryLedger())
        try:
            actions = await playbook.plan(ctx, playbook.parse_params(plan.params))
        except WatchdogError as exc:
            await self.incidents.record(incident.id, "dry_run", actor=ACTOR, data={"error": str(exc)})
            return plan
        return plan.model_copy(update={"actions": list(actions)})

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
        )
        await self._notify(incident.id, "approval_notified", self.notifier.approval_requested(message))
        await self._refresh_pending_gauge()
        return Outcome(incident.id, "awaiting_approval", f"approval {approval.id} requested")

    async def _begin(self, incident_id: int, approval_id: str | None) -> tuple[Incident | None, str]:
        """CAS into `remediating` and consume the approval — one transaction (limits: `_reserve`)."""
        async with self.store.transaction() as tx:
            incident = await tx.get_incident(incident_id)
            if incident is None or incident.status not in STARTABLE:
                status = "missing" if incident is None else incident.status
                return None, f"incident {incident_id} is {status}; not starting a remediation"
            plan = incident.plan
            if plan is None or plan.playbook is None:
                return None, f"incident {incident_id} has no plan with a playbook"
            if plan.requires_approval:
                if approval_id is None:
                    return None, f"incident {incident_id}: the plan needs an approval"
                if await self.approvals.consume_in(tx, approval_id, actor=ACTOR) is None:
                    return None, f"approval {approval_id} is not approved (or already used)"
            try:
                await transition_in(
                    tx,
                    incident_id,
                    "remediating",
                    actor=ACTOR,
                    reason=f"applying {plan.playbook}",
                    expected=STARTABLE,
                    data={"approval_id": approval_id},
                )
            except InvalidTransition as exc:
                return None, str(exc)
            updated = await tx.get_incident(incident_id)
        return updated, ""

    async def _reserve(self, incident_id: int, plan: Plan) -> str:
        """Check the limits and count this remediation — one transaction, after the preconditions held.

        Counting only what is about to act means a refused or unneeded attempt never uses up an agent's
        restarts or the global budget; check and count stay atomic across replicas.
        """
        limits = self.policy.limits
        async with self.store.transaction() as tx:
            if tx.conn.dialect.name == "postgresql":
                # Serialise limit checks across replicas (SQLite's BEGIN IMMEDIATE already does).
                await tx.conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LIMITS_LOCK_KEY})
            now = self.clock.now()
            refusal = await self._limits_refusal(tx, plan, now)
            await tx.add_audit(
                incident_id,
                "limits",
                actor=ACTOR,
                data={"ok": not refusal, "reason": refusal or "within limits", "limits": limits.model_dump()},
            )
            if not refusal:
                await tx.add_rate_event(RATE_REMEDIATION, GLOBAL_KEY, now)
                if plan.playbook == "restart_agent":
                    await tx.add_rate_event(RATE_AGENT_RESTART, str(plan.params.get("agent_id")), now)
        return refusal

    async def _limits_refusal(self, tx: Tx, plan: Plan, now: datetime) -> str:
        limits = self.policy.limits
        hour_ago = now - timedelta(hours=1)
        breaker = limits.circuit_breaker
        failures = await tx.count_rate_events(
            RATE_FAILED, GLOBAL_KEY, now - timedelta(seconds=breaker.window_seconds)
        )
        if failures >= breaker.failures:
            return (
                f"circuit open: {failures} failed remediations in the last {breaker.window_seconds}s "
                f"(limit {breaker.failures}); not acting"
            )
        done = await tx.count_rate_events(RATE_REMEDIATION, GLOBAL_KEY, hour_ago)
        if done >= limits.remediations_per_hour:
            budget = limits.remediations_per_hour
            return f"rate limit reached: {done} remediations in the last hour (budget {budget})"
        if plan.playbook == "restart_agent":
            agent = str(plan.params.get("agent_id"))
            restarts = await tx.count_rate_events(RATE_AGENT_RESTART, agent, hour_ago)
            if restarts >= limits.agent_restarts_per_agent_per_hour:
                return (
                    f"rate limit reached: agent {agent} restarted {restarts} times in the last hour "
                    f"(limit {limits.agent_restarts_per_agent_per_hour})"
                )
        return ""

    async def _run(
        self, incident: Incident, plan: Plan, approval_id: str | None, *, recheck: bool
    ) -> Outcome:
        assert plan.playbook is not None
        playbook = self.registry.get(plan.playbook)
        params = playbook.parse_params(plan.params)
        ctx = self.context(incident, plan.playbook, ledger=StoreLedger(self.store, approval_id))
        if recheck:
            await self.incidents.record(incident.id, "preconditions", phase="before", actor=ACTOR, data={})
            precheck = await playbook.preconditions(ctx, params)
            await self.incidents.record(
                incident.id, "preconditions", actor=ACTOR, data=precheck.model_dump(mode="json")
            )
            if not precheck.ok:
                if await self._completed_by_itself(incident.execution_id):
                    return await self._resolve_unneeded(incident, plan.playbook, precheck.reason)
                return await self._escalate(
                    incident.id,
                    f"{plan.playbook} refused: {precheck.reason}",
                    expected=("remediating",),
                    failed=False,
                    playbook=plan.playbook,
                    outcome="refused",
                )
            refusal = await self._reserve(incident.id, plan)
            if refusal:
                return await self._escalate(incident.id, refusal, expected=("remediating",), failed=False)
        await self.incidents.record(
            incident.id,
            "apply",
            phase="before",
            actor=ACTOR,
            data={"playbook": plan.playbook, "params": plan.params},
        )
        result: ApplyResult = await playbook.apply(ctx, params)
        await self.incidents.record(incident.id, "apply", actor=ACTOR, data=result.model_dump(mode="json"))
        if not result.ok:
            why = "interrupted before it finished and not repeated" if result.interrupted else "failed"
            return await self._escalate(
                incident.id,
                f"{plan.playbook} {why}: {result.detail}",
                expected=("remediating",),
                failed=not result.interrupted,
                playbook=plan.playbook,
                outcome="interrupted" if result.interrupted else "failed",
            )
        async with self.store.transaction() as tx:
            await transition_in(tx, incident.id, "verifying", actor=ACTOR, reason=f"{plan.playbook} applied")
        return await self._verify_and_close(incident, plan)

    async def _completed_by_itself(self, execution_id: str) -> bool:
        """True when the run has completed cleanly (e.g. between the prompt and the approval)."""
        try:
            execution = await self.clients.orchestrator.get_execution(execution_id)
        except WatchdogError:
            return False
        return execution.status == "completed" and not execution.error

    async def _resolve_unneeded(self, incident: Incident, playbook: str, why: str) -> Outcome:
        """The run completed before anything was done: resolved, not a page for on-call."""
        reason = f"{playbook} not needed: the run completed by itself ({why}); nothing was done"
        try:
            await self.incidents.transition(
                incident.id, "resolved", actor=ACTOR, reason=reason, expected=("remediating",), summary=reason
            )
        except InvalidTransition as exc:
            return Outcome(incident.id, "unchanged", str(exc))
        self._count(playbook, "not_needed")
        return Outcome(incident.id, "resolved", reason)

    async def _verify_and_close(self, incident: Incident, plan: Plan) -> Outcome:
        assert plan.playbook is not None
        playbook = self.registry.get(plan.playbook)
        ctx = self.context(incident, plan.playbook)
        await self.incidents.record(incident.id, "verify", phase="before", actor=ACTOR, data={})
        verification: VerifyResult = await playbook.verify(ctx, playbook.parse_params(plan.params))
        data = verification.model_dump(mode="json")
        await self.incidents.record(incident.id, "verify", actor=ACTOR, data=data)
        if verification.ok:
            await self.incidents.transition(
                incident.id,
                "resolved",
                actor=ACTOR,
                reason=f"{plan.playbook} applied and verified",
                expected=("verifying",),
                verification=data,
                summary=f"resolved by {plan.playbook}: {verification.summary()}",
            )
            self._count(plan.playbook, "resolved")
            return Outcome(incident.id, "resolved", verification.summary())
        return await self._escalate(
            incident.id,
            f"{plan.playbook} applied but verification failed: {verification.summary()}",
            expected=("verifying",),
            failed=True,
            playbook=plan.playbook,
            outcome="unverified",
            verification=data,
        )

    async def _escalate(
        self,
        incident_id: int,
        reason: str,
        *,
        plan: Plan | None = None,
        summary: str = "",
        expected: tuple[str, ...] | None = None,
        failed: bool = False,
        playbook: str | None = None,
        outcome: str = "escalated",
        verification: dict[str, Any] | None = None,
    ) -> Outcome:
        values: dict[str, Any] = {"summary": reason}
        if verification is not None:
            values["verification"] = verification
        try:
            async with self.store.transaction() as tx:
                if failed:
                    await tx.add_rate_event(RATE_FAILED, GLOBAL_KEY, self.clock.now())
                incident = await transition_in(
                    tx, incident_id, "escalated", actor=ACTOR, reason=reason, expected=expected, **values
                )
        except InvalidTransition as exc:
            log.info("incident %s not escalated: %s", incident_id, exc)
            return Outcome(incident_id, "unchanged", str(exc))
        await self.incidents.refresh_gauge()
        if playbook is not None:
            self._count(playbook, outcome)
        message = EscalationMessage(
            incident_id=incident_id,
            execution_id=incident.execution_id,
            reason=reason,
            diagnosis_summary=summary,
            plan_headline=plan.headline() if plan else "",
        )
        await self._notify(incident_id, "escalation_notified", self.notifier.escalated(message))
        return Outcome(incident_id, "escalated", reason)

    async def _notify(self, incident_id: int, kind: str, sending: Any) -> NotifyResult:
        await self.incidents.record(incident_id, kind, phase="before", actor=ACTOR, data={})
        result: NotifyResult = await sending
        if not result.ok:
            log.warning("notifier failed for incident %s: %s", incident_id, result.detail)
        await self.incidents.record(incident_id, kind, actor=ACTOR, data=result.as_dict())
        return result

    def _count(self, playbook: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.remediations.labels(playbook=playbook, outcome=outcome).inc()

    async def _refresh_pending_gauge(self) -> None:
        if self.metrics is None:
            return
        async with self.store.transaction() as tx:
            pending = await tx.list_approvals(states=["pending"])
        self.metrics.pending_approvals.set(len(pending))


# -- assembly ------------------------------------------------------------------------------------------


def attach(
    wd: WatchdogApp,
    *,
    policy: Policy | None = None,
    registry: Registry | None = None,
    notifier: Notifier | None = None,
    poll_interval_seconds: float = 1.0,
) -> Remediator:
    """Build the remediation loop over a `WatchdogApp` and hook it in as the app's `remediate`.

    The policy comes from `settings.policy_file` (the shipped default when unset), the notifier from
    `settings.notifier_url`/`notifier_kind`. Without `approval_signing_key` an ephemeral key is made:
    links then stop working when the process restarts (fine for the demo, not for production).
    """
    settings = wd.settings
    key = settings.approval_signing_key.get_secret_value().encode() if settings.approval_signing_key else b""
    if len(key) < 16:
        if key:
            raise ConfigError("approval_signing_key must be at least 16 bytes")
        log.warning(
            "no approval_signing_key configured: using an ephemeral key (links die with this process)"
        )
        key = secrets.token_bytes(32)
    public_url = settings.public_url or f"http://{settings.host}:{settings.port}"
    approvals = ApprovalService(
        wd.store, key, ttl_seconds=settings.approval_ttl_seconds, public_url=public_url, clock=wd.clock
    )
    remediator = Remediator(
        store=wd.store,
        incidents=wd.incidents,
        approvals=approvals,
        notifier=notifier or notifier_from_settings(settings),
        policy=policy or load_policy(settings.policy_file),
        registry=registry or default_registry(),
        clients=wd.diagnostic_context.clients,
        mode=settings.mode,
        metrics=wd.metrics,
        clock=wd.clock,
        poll_interval_seconds=poll_interval_seconds,
    )

    async def remediate(incident_id: int, diagnosis: Diagnosis) -> None:
        await remediator.handle_diagnosed(incident_id, diagnosis)

    wd.remediate = remediate
    return remediator
