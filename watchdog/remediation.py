"""The one remediation state machine: begin → (re-check) → reserve → apply → verify → close.

Every remediation goes through here, however it was started:

- `execute()`: the service, once a plan may act (auto mode, or an approval) — called by the responder
  (`watchdog.responder`) after a diagnosis or an approval decision;
- `run_manual()`: a playbook run by hand (`gl-watchdog playbook run`, and later the API's), which opens
  or joins the execution's incident, checks preconditions and plans first (refused: nothing done, a
  fresh incident closed again), then takes the same path;
- `resume_interrupted()`: at start-up, incidents a dead watchdog left in `remediating`/`verifying`
  (when this process is the only watchdog; otherwise the reconciler takes them back);
- `retry()`: the reconciler's retry of a remediation whose job was lost (`watchdog.reconciler`).

    begin      compare-and-set into `remediating` (one action in flight per execution; an approval is
               consumed `approved → used` in the same transaction)
    re-check   the playbook's preconditions against live state (refused: escalate, or resolve when the
               run completed by itself meanwhile)
    reserve    the budgets and the circuit breaker (`watchdog.limits`), counted only when they allow it
    apply      the playbook's steps through the action ledger (`watchdog.ledger`): idempotent, restart safe
    verify     the runbook's post-resolution checks
    close      `resolved`, or `escalated` with the reason (notified; a failure counts toward the breaker)

Every phase is written to the audit log before and after it happens (`incidents.record`), so a
restarted watchdog resumes or reports an interrupted remediation instead of repeating it: steps that
finished are skipped, idempotent half-done steps are re-run with their recorded request, and a
non-idempotent half-done step is marked `interrupted` and the incident escalated.

A remediation runs under its job lease (`watchdog.leases`), taken in the transaction that begins it
and renewed while it runs, within `deadline_seconds` for apply and verification together. Its closing
writes (into `verifying`, `resolved`, `escalated`) check the lease and drop it in the same
transaction, and are retried while the store is briefly out of reach. A remediation that overruns
its deadline gives its lease up for a retry after a backoff; one whose writes fail is reported and
its lease lapses: either way the reconciler retries it (steps done are never repeated) and escalates
it after its attempts run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Final

from watchdog.annotations import RemediationAnnotations
from watchdog.approvals import ApprovalService
from watchdog.errors import InvalidTransition, StoreError
from watchdog.incidents import IncidentService, transition_in
from watchdog.leases import JOB_OF_STATUS, JobLeases, Lease, LeaseLost
from watchdog.ledger import StoreLedger
from watchdog.limits import RemediationLimits
from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import Notifier
from watchdog.plan import Plan
from watchdog.records import Incident
from watchdog.remediation_close import ACTOR, Closing, Outcome
from watchdog.remediation_setup import ManualRun, PlaybookContexts, RemediationProgress, parse_params
from watchdog.settings import Mode
from watchdog.store import Tx, WatchdogStore
from watchdog.tracing import PLAN_SPAN, REMEDIATION_SPAN, IncidentTracer
from watchdog_sdk.errors import PlaybookError, WatchdogError
from watchdog_sdk.ledger import ActionLedger, InMemoryLedger
from watchdog_sdk.outcomes import ApplyResult, Precheck, VerifyResult
from watchdog_sdk.playbook import Playbook, PlaybookContext
from watchdog_sdk.registry import Registry

log = logging.getLogger(__name__)

MANUAL_RULE: Final = "manual"  # the `rule` of a plan made for a run by hand
STARTABLE: Final = ("open", "diagnosing", "awaiting_approval")
ACTING: Final = ("remediating", "verifying")
OBSERVE_REFUSAL: Final = (
    "the watchdog is in observe mode: nothing acts, including remediations approved or started before"
    " the switch; run the playbook by hand (gl-watchdog playbook run) if it is still wanted"
)


def _label(plan: Plan) -> str:
    """How escalations name the playbook of `plan` ("cancel", or "cancel by hand")."""
    return f"{plan.playbook} by hand" if plan.rule == MANUAL_RULE else str(plan.playbook)


class RemediationService:
    """The state machine over the store. One instance per watchdog process; its state lives in the store."""

    def __init__(
        self,
        *,
        store: WatchdogStore,
        incidents: IncidentService,
        approvals: ApprovalService,
        limits: RemediationLimits,
        notifier: Notifier,
        registry: Registry,
        contexts: PlaybookContexts,
        mode: Mode,
        leases: JobLeases,
        deadline_seconds: float,
        backoff: Callable[[int], float],
        metrics: WatchdogMetrics | None = None,
        tracer: IncidentTracer | None = None,
        annotations: RemediationAnnotations | None = None,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.approvals = approvals
        self.limits = limits
        self.notifier = notifier
        self.registry = registry
        self.contexts = contexts
        self.mode = mode
        self.leases = leases
        # The longest one attempt may spend applying and verifying.
        self.deadline_seconds = deadline_seconds
        self.backoff = backoff
        self.metrics = metrics
        self.closing = Closing(
            store=store,
            incidents=incidents,
            leases=leases,
            limits=limits,
            notifier=notifier,
            clock=contexts.clock,
            metrics=metrics,
        )
        self.tracer = tracer or IncidentTracer()
        self.annotations = annotations  # Grafana annotations of remediations that acted (optional)

    def context(
        self, incident_id: int, execution_id: str, playbook: str, ledger: ActionLedger | None = None
    ) -> PlaybookContext:
        """The playbook context for one incident (the store's ledger unless one is given); its steps
        make their spans with the incident's tracer."""
        ctx = self.contexts.build(incident_id, execution_id, playbook, ledger or StoreLedger(self.store))
        return dataclasses.replace(ctx, tracer=self.tracer.tracer)

    # -- dry runs (nothing changes)

    async def dry_run(self, incident: Incident, plan: Plan) -> Plan:
        """`plan` with its playbook's dry-run actions filled in (a failure to plan is audited)."""
        assert plan.playbook is not None
        playbook = self.registry.get(plan.playbook)
        ctx = self.context(incident.id, incident.execution_id, plan.playbook, ledger=InMemoryLedger())
        try:
            with self.tracer.span(PLAN_SPAN, incident.id, incident.execution_id, job="plan") as span:
                span.set_attribute("playbook", plan.playbook)
                actions = await playbook.plan(ctx, playbook.parse_params(plan.params))
        except WatchdogError as exc:
            await self.incidents.record(incident.id, "dry_run", actor=ACTOR, data={"error": str(exc)})
            return plan
        return plan.model_copy(update={"actions": list(actions)})

    # -- entry points

    async def execute(self, incident_id: int, approval_id: str | None = None) -> Outcome:
        """Take the incident into `remediating` (one winner), re-check, reserve, apply, verify, close."""
        if self.mode is Mode.OBSERVE:
            # The kill switch also holds for prompts approved after the switch to observe.
            return await self.closing.escalate(incident_id, OBSERVE_REFUSAL)
        incident, lease, refusal = await self._begin(incident_id, approval_id)
        if incident is None or lease is None or incident.plan is None:
            return Outcome(incident_id, "unchanged", refusal)
        work = self._act(incident, incident.plan, approval_id, lease, recheck=True)
        return await self._leased(lease, work, incident.execution_id)

    async def run_manual(self, run: ManualRun, progress: RemediationProgress | None = None) -> Outcome:
        """A playbook run by hand, through the same path (budgets, breaker, audit, restart safety).

        Raises PlaybookError for an unknown playbook, bad params, or an incident the watchdog is
        already acting on. Runs in any mode: observe mode stops the watchdog, not a person.
        """
        progress = progress or RemediationProgress()
        playbook = self.registry.get(run.playbook)
        params = parse_params(playbook, run.params)
        opened = await self.incidents.open_or_join(
            run.execution_id, dag_id=None, source="manual", detection_source="api", actor=run.actor
        )
        incident = opened.incident
        if incident.status in ACTING:
            raise PlaybookError(
                f"incident {incident.id} of execution {run.execution_id} is {incident.status}: "
                "the watchdog is already acting on it; not starting a second action"
            )
        ledger = StoreLedger(self.store, actor=run.actor)
        ctx = self.context(incident.id, run.execution_id, playbook.name, ledger=ledger)
        precheck = await self._precheck(incident.id, playbook, ctx, params, run.actor)
        with self.tracer.span(PLAN_SPAN, incident.id, run.execution_id, job="plan") as span:
            span.set_attribute("playbook", playbook.name)
            actions = await playbook.plan(ctx, params)
        progress.checked(playbook, precheck, actions)
        if not precheck.ok:
            if opened.created:  # opened only for this run, and nothing was done: do not leave it open
                reason = f"{playbook.name} by hand refused: {precheck.reason}"
                await self.incidents.close_if_not_acted(incident.id, actor=run.actor, reason=reason)
            return Outcome(incident.id, "refused", precheck.reason)
        plan = Plan(
            execution_id=run.execution_id,
            likely_cause="manual",
            playbook=playbook.name,
            params=params.model_dump(mode="json"),
            risk=playbook.risk,
            mode=self.mode,
            will_act=True,
            rule=MANUAL_RULE,
            rationale=run.rationale,
            actions=list(actions),
        )
        began, lease, refusal = await self._begin(incident.id, None, plan=plan, actor=run.actor)
        if began is None or lease is None:
            raise PlaybookError(f"not starting {playbook.name}: {refusal}")
        self.closing.taken(began, run.actor)
        try:
            work = self._act(began, plan, None, lease, recheck=False, actor=run.actor, progress=progress)
            return await self._leased(lease, work, run.execution_id)
        except asyncio.CancelledError:
            if run.interrupted_by is not None:
                reason = (
                    f"{playbook.name} by hand interrupted ({run.interrupted_by}) before it finished; "
                    "see the incident's actions for what was done"
                )
                with contextlib.suppress(WatchdogError):
                    await self.closing.escalate(began.id, reason, plan=plan, expected=ACTING, actor=run.actor)
            raise

    async def resume_interrupted(self) -> list[Outcome]:
        """At start-up, when this process is the only watchdog: re-enter incidents left in
        `remediating`/`verifying` by a dead watchdog (their leases are that process's).

        Finished steps are skipped and never repeated; a non-idempotent step found half-done is marked
        interrupted and the incident escalated.
        """
        outcomes = []
        for incident in await self.store.list_incidents(statuses=list(ACTING)):
            async with self.store.transaction() as tx:
                lease = await self._take_in(tx, incident, None)
            if lease is not None:
                work = self._resume_one(incident, lease)
                outcomes.append(await self._leased(lease, work, incident.execution_id))
        return outcomes

    async def retry(self, incident: Incident, token: int) -> Outcome:
        """The reconciler's retry of a remediation whose job was lost or gave up: take its lease back
        (compare-and-set on `token`, the lease as the reconciler saw it) and resume it."""
        async with self.store.transaction() as tx:
            current = await tx.get_incident(incident.id)
            if current is None or current.status not in ACTING:
                return Outcome(incident.id, "unchanged", "no longer remediating or verifying")
            lease = await self._take_in(tx, current, token)
        if lease is None:
            return Outcome(incident.id, "unchanged", "its lease was taken meanwhile")
        return await self._leased(lease, self._resume_one(current, lease), current.execution_id)

    async def _take_in(self, tx: Tx, incident: Incident, token: int | None) -> Lease | None:
        job = JOB_OF_STATUS[incident.status]
        return await self.leases.take_in(
            tx, incident.id, job, max_seconds=self.deadline_seconds, expect_token=token
        )

    async def _resume_one(self, incident: Incident, lease: Lease) -> Outcome:
        await self.closing.record(
            incident.id,
            "remediation_resumed",
            actor=ACTOR,
            data={"status": incident.status, "attempt": lease.attempts + 1},
        )
        plan = incident.plan
        if plan is None or plan.playbook is None:
            return await self.closing.escalate(
                incident.id, "interrupted remediation without a plan", failed=False, lease=lease
            )
        if incident.status == "verifying":
            return await self._verify_and_close(incident, plan, lease)
        if self.mode is Mode.OBSERVE:
            return await self.closing.escalate(
                incident.id, OBSERVE_REFUSAL + " (interrupted remediation)", lease=lease
            )
        # Died before the first step was recorded: nothing was done, so check live state and the
        # limits again; after it, both were checked (and counted) before the crash.
        async with self.store.transaction() as tx:
            acted = bool(await tx.list_actions(incident_id=incident.id))
        return await self._act(incident, plan, None, lease, recheck=not acted, reserve=not acted)

    async def _leased(
        self, lease: Lease, work: Awaitable[Outcome], execution_id: str | None = None
    ) -> Outcome:
        """Run `work` (one attempt of a remediation) holding `lease`, within its deadline.

        Overrunning the deadline gives the lease up for a retry after a backoff; a lease taken back
        meanwhile ends the attempt without writing its outcome; a write that failed after its
        retries is counted and raised (the lease lapses: the reconciler takes the incident back).
        """
        span = self.tracer.span(REMEDIATION_SPAN, lease.incident_id, execution_id, job=lease.job)
        with self.leases.holding(lease), span:
            remaining = (lease.deadline_at - self.contexts.clock.now()).total_seconds()
            try:
                async with asyncio.timeout(max(remaining, 0.0)) as deadline:
                    return await work
            except TimeoutError:
                if not deadline.expired():
                    raise
                reason = f"{lease.job} did not finish within {self.deadline_seconds:g}s"
                return await self._give_up(lease, reason)
            except LeaseLost as exc:
                log.warning("remediation of incident %s superseded: %s", lease.incident_id, exc)
                return Outcome(lease.incident_id, "superseded", str(exc))
            except StoreError:
                if self.metrics is not None:
                    self.metrics.job_save_failures.labels(job=lease.job).inc()
                log.error(
                    "remediation of incident %s could not be saved; its lease lapses and the "
                    "reconciler takes it back",
                    lease.incident_id,
                )
                raise

    async def _give_up(self, lease: Lease, reason: str) -> Outcome:
        """An attempt that overran its deadline: nobody holds the job now; retried after a backoff."""
        retry_at = self.contexts.clock.now() + timedelta(seconds=self.backoff(lease.attempts + 1))
        async with self.store.transaction() as tx:
            if await self.leases.fail_in(tx, lease, reason, retry_at=retry_at) is not None:
                await tx.add_audit(lease.incident_id, "job_timed_out", actor=ACTOR, data={"reason": reason})
        return Outcome(lease.incident_id, "timed_out", reason)

    # -- the phases

    async def _begin(
        self, incident_id: int, approval_id: str | None, *, plan: Plan | None = None, actor: str = ACTOR
    ) -> tuple[Incident | None, Lease | None, str]:
        """CAS into `remediating`, consume the approval and take the job's lease — one transaction. A
        `plan` given (a run by hand) is stored on the incident in the same update; otherwise the
        incident's own plan is used."""
        async with self.store.transaction() as tx:
            incident = await tx.get_incident(incident_id)
            if incident is None or incident.status not in STARTABLE:
                status = "missing" if incident is None else incident.status
                return None, None, f"incident {incident_id} is {status}; not starting a remediation"
            chosen = plan or incident.plan
            if chosen is None or chosen.playbook is None:
                return None, None, f"incident {incident_id} has no plan with a playbook"
            if chosen.requires_approval:
                if approval_id is None:
                    return None, None, f"incident {incident_id}: the plan needs an approval"
                if await self.approvals.consume_in(tx, approval_id, actor=actor) is None:
                    return None, None, f"approval {approval_id} is not approved (or already used)"
            values: dict[str, Any] = {} if plan is None else {"plan": plan}
            verb = f"applying {chosen.playbook}" + (" by hand" if chosen.rule == MANUAL_RULE else "")
            try:
                updated = await transition_in(
                    tx,
                    incident_id,
                    "remediating",
                    actor=actor,
                    reason=verb,
                    expected=STARTABLE,
                    data={"approval_id": approval_id},
                    **values,
                )
            except InvalidTransition as exc:
                return None, None, str(exc)
            lease = await self.leases.take_in(
                tx, incident_id, "remediation", max_seconds=self.deadline_seconds
            )
        return updated, lease, ""

    async def _precheck(
        self, incident_id: int, playbook: Playbook[Any], ctx: PlaybookContext, params: Any, actor: str
    ) -> Precheck:
        await self.closing.record(incident_id, "preconditions", phase="before", actor=actor, data={})
        precheck = await playbook.preconditions(ctx, params)
        data = precheck.model_dump(mode="json")
        await self.closing.record(incident_id, "preconditions", actor=actor, data=data)
        return precheck

    async def _act(
        self,
        incident: Incident,
        plan: Plan,
        approval_id: str | None,
        lease: Lease,
        *,
        recheck: bool,
        reserve: bool = True,
        actor: str = ACTOR,
        progress: RemediationProgress | None = None,
    ) -> Outcome:
        """From `remediating`: re-check (optional), reserve, apply, and on to verification."""
        progress = progress or RemediationProgress()
        assert plan.playbook is not None
        playbook = self.registry.get(plan.playbook)
        params = playbook.parse_params(plan.params)
        ledger = StoreLedger(self.store, approval_id, actor=actor)
        ctx = self.context(incident.id, incident.execution_id, plan.playbook, ledger=ledger)
        if recheck:
            precheck = await self._precheck(incident.id, playbook, ctx, params, actor)
            if not precheck.ok:
                if await self._completed_by_itself(incident.execution_id):
                    return await self._resolve_unneeded(incident, plan.playbook, precheck.reason, lease)
                return await self.closing.escalate(
                    incident.id,
                    f"{plan.playbook} refused: {precheck.reason}",
                    expected=("remediating",),
                    playbook=plan.playbook,
                    outcome="refused",
                    lease=lease,
                )
        if reserve:
            refusal = await self.limits.reserve(incident.id, plan, actor=actor)
            if refusal:
                progress.refused(refusal)
                return await self.closing.escalate(
                    incident.id, refusal, expected=("remediating",), actor=actor, lease=lease
                )
        await self.closing.record(
            incident.id,
            "apply",
            phase="before",
            actor=actor,
            data={"playbook": plan.playbook, "params": plan.params},
        )
        result: ApplyResult = await playbook.apply(ctx, params)
        await self.closing.record(incident.id, "apply", actor=actor, data=result.model_dump(mode="json"))
        progress.applied(result)
        if not result.ok:
            why = "interrupted before it finished and not repeated" if result.interrupted else "failed"
            escalated = await self.closing.escalate(
                incident.id,
                f"{_label(plan)} {why}: {result.detail}",
                expected=("remediating",),
                failed=not result.interrupted,
                playbook=plan.playbook,
                outcome="interrupted" if result.interrupted else "failed",
                actor=actor,
                lease=lease,
            )
            return await self._annotated(incident, plan.playbook, escalated)

        async def into_verifying() -> Lease:
            async with self.store.transaction() as tx:
                verifying = await self.leases.switch_in(tx, lease, "verification")
                await transition_in(
                    tx, incident.id, "verifying", actor=actor, reason=f"{plan.playbook} applied"
                )
            return verifying

        verifying = await self.closing.save(into_verifying)
        progress.verifying()
        return await self._verify_and_close(incident, plan, verifying, actor=actor, progress=progress)

    async def _verify_and_close(
        self,
        incident: Incident,
        plan: Plan,
        lease: Lease,
        *,
        actor: str = ACTOR,
        progress: RemediationProgress | None = None,
    ) -> Outcome:
        assert plan.playbook is not None
        playbook = self.registry.get(plan.playbook)
        ledger = StoreLedger(self.store, actor=actor)
        ctx = self.context(incident.id, incident.execution_id, plan.playbook, ledger=ledger)
        await self.closing.record(incident.id, "verify", phase="before", actor=actor, data={})
        verification: VerifyResult = await playbook.verify(ctx, playbook.parse_params(plan.params))
        data = verification.model_dump(mode="json")
        await self.closing.record(incident.id, "verify", actor=actor, data=data)
        (progress or RemediationProgress()).verified(verification)
        if verification.ok:
            by = f"{plan.playbook} (by hand)" if plan.rule == MANUAL_RULE else plan.playbook
            await self.closing.resolve(
                lease,
                "verifying",
                actor=actor,
                reason=f"{plan.playbook} applied and verified",
                verification=data,
                summary=f"resolved by {by}: {verification.summary()}",
            )
            self.closing.count(plan.playbook, "resolved")
            if self.metrics is not None:
                self.metrics.observe_remediated(incident.diagnosis, self.contexts.clock.now())
            resolved = Outcome(incident.id, "resolved", verification.summary())
            return await self._annotated(incident, plan.playbook, resolved)
        escalated = await self.closing.escalate(
            incident.id,
            f"{_label(plan)} applied but verification failed: {verification.summary()}",
            expected=("verifying",),
            failed=True,
            playbook=plan.playbook,
            outcome="unverified",
            verification=data,
            actor=actor,
            lease=lease,
        )
        return await self._annotated(incident, plan.playbook, escalated)

    async def _annotated(self, incident: Incident, playbook: str, outcome: Outcome) -> Outcome:
        """`outcome` of a remediation that acted, annotated on the dashboards (`watchdog.annotations`)."""
        if self.annotations is not None:
            await self.annotations.remediated(incident, playbook, outcome.status)
        return outcome

    async def _completed_by_itself(self, execution_id: str) -> bool:
        """True when the run has completed cleanly (e.g. between the prompt and the approval)."""
        try:
            execution = await self.contexts.clients.orchestrator.get_execution(execution_id)
        except WatchdogError:
            return False
        return execution.status == "completed" and not execution.error

    async def _resolve_unneeded(self, incident: Incident, playbook: str, why: str, lease: Lease) -> Outcome:
        """The run completed before anything was done: resolved, not a page for on-call."""
        reason = f"{playbook} not needed: the run completed by itself ({why}); nothing was done"
        try:
            await self.closing.resolve(lease, "remediating", actor=ACTOR, reason=reason, summary=reason)
        except InvalidTransition as exc:
            return Outcome(incident.id, "unchanged", str(exc))
        self.closing.count(playbook, "not_needed")
        return Outcome(incident.id, "resolved", reason)
