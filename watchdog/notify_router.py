"""Which notification goes where, each delivery counted: the chat webhook and the paging services.

Built by the composition root (`watchdog.assembly`) from the settings (`notifier_from_settings`); used
as the one `Notifier` of the responder (prompts) and the remediation state machine (escalations),
and by `PageResolver`, which the intake, the remediation's closing and the sweep call so the page
of an escalated incident follows its run (the audit log is the record of pages; the incident's row
says whether its page is open, `page_open`, kept with the entries that open and close it).

    approval prompt  ──▶ chat (the Slack bot with `slack_bot_token`, else `notifier_url`: Slack or
                         JSON; nothing without either)
    escalation       ──▶ every `escalation_targets` entry: chat, pagerduty, opsgenie, email (at once)
    alert resolved   ──▶ the pagers' resolve, when the incident was escalated (its page is over);
                         the bot's prompt says "Resolved" when the alert closed the incident first
    run taken        ──▶ the pagers' acknowledge, when a person starts, approves or denies a playbook
                         on a paged run (a denial: the pages of the run's other incidents; the
                         denied incident's own escalation pages on-call)
    run over         ──▶ the pagers' resolve, when another incident of the run resolves or the sweep
                         finds the run completed, failed or cancelled

Every prompt and escalation carries the incident's links (runbook, Grafana, trace, provenance, the
alert's source: `watchdog.links`) and what its alert said; when they cannot be read (the store
failing), the message goes without them and the log says so. With the bot, `state_changed` updates
the posted prompt (`watchdog.slack_bot`).

Every delivery to a real target is counted in `gl_watchdog_notifications_total{target,kind,result}`
(the `WatchdogNotifierFailing` alert); email is `watchdog.mail`. The result handed back for the audit
log is the one target's, or, for several, ok only when every target took it, with each target's
detail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Final

import httpx

from watchdog import notifier as chat
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.links import IncidentLinks
from watchdog.mail import EmailPager
from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import (
    EscalationMessage,
    MessageUpdates,
    Notifier,
    NotifyResult,
    NullNotifier,
    PromptMessage,
)
from watchdog.paging import OpsgeniePager, Pager, PagerDutyPager, ResolvedMessage
from watchdog.records import Incident
from watchdog.settings import EscalationTarget, WatchdogSettings
from watchdog.slack_bot import TARGET as BOT_TARGET
from watchdog.slack_bot import SlackApi, SlackBot
from watchdog.store import WatchdogStore
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

ACTOR = "watchdog"
# A page stays open while its run may still be stuck; these statuses end it (the orchestrator's).
RUN_ENDED: Final = frozenset({"completed", "failed", "cancelled"})
# How many escalated incidents with an open page each sweep reads at once (one orchestrator listing)
# while it pages through all of them for an ended run.
ENDED_RUNS_CHUNK: Final = 200


def _combined(results: Sequence[tuple[str, NotifyResult]]) -> NotifyResult:
    """One result for the audit log: a single target's as it is; several folded into one."""
    if len(results) == 1:
        return results[0][1]
    return NotifyResult(
        ok=all(result.ok for _, result in results),
        sent=any(result.sent for _, result in results),
        detail="; ".join(f"{target}: {result.detail}" for target, result in results),
    )


class RoutedNotifier:
    """The `Notifier` of the service: prompts to chat, escalations and resolves to their targets."""

    def __init__(
        self,
        chat_notifier: Notifier,
        chat_target: str,
        *,
        pagers: Sequence[Pager] = (),
        escalate_to_chat: bool = True,
        metrics: WatchdogMetrics | None = None,
        links: IncidentLinks | None = None,
        default_targets: Collection[str] | None = None,
        rule_targets: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        self.chat = chat_notifier
        self.chat_target = chat_target
        self.pagers = list(pagers)
        self.escalate_to_chat = escalate_to_chat
        self.metrics = metrics
        self.links = links
        # Where an escalation goes: its rule's `escalate_to`, else these (None: every pager, and chat
        # when `escalate_to_chat`).
        self.default_targets = None if default_targets is None else frozenset(default_targets)
        self.rule_targets = {rule: frozenset(targets) for rule, targets in (rule_targets or {}).items()}

    def targets_for(self, rule: str | None) -> frozenset[str]:
        """The targets of an incident planned by `rule`: the rule's `escalate_to`, else the default."""
        if rule is not None and rule in self.rule_targets:
            return self.rule_targets[rule]
        if self.default_targets is not None:
            return self.default_targets
        chat_target = {EscalationTarget.CHAT.value} if self.escalate_to_chat else set()
        return frozenset({pager.target for pager in self.pagers} | chat_target)

    def pagers_for(self, rule: str | None) -> list[Pager]:
        """The paging services an incident planned by `rule` pages."""
        targets = self.targets_for(rule)
        return [pager for pager in self.pagers if pager.target in targets]

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        message = replace(message, **await self._links_of(message.incident_id))
        return await self._counted(self.chat_target, "prompt", self.chat.approval_requested(message))

    async def state_changed(self, incident_id: int, state: str, detail: str) -> NotifyResult | None:
        """Update the incident's posted prompt to `state: detail` (the Slack bot only; None otherwise)."""
        if not isinstance(self.chat, SlackBot):
            return None
        return await self.chat.state_changed(incident_id, state, detail)

    async def _links_of(self, incident_id: int) -> dict[str, Any]:
        """The fields of a message that carry the incident's links (none when they cannot be read)."""
        if self.links is None:
            return {}
        try:
            found = await self.links.of(incident_id)
        except WatchdogError as exc:
            log.warning("the links of incident %s are left out of its notification: %s", incident_id, exc)
            return {}
        summary = " — ".join(text for text in (found.summary, found.description) if text)
        return {"links": found.urls(), "alert_summary": summary}

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        message = replace(message, **await self._links_of(message.incident_id))
        sends: list[tuple[str, Awaitable[NotifyResult]]] = [
            (pager.target, pager.trigger(message)) for pager in self.pagers_for(message.rule)
        ]
        if EscalationTarget.CHAT.value in self.targets_for(message.rule) or not sends:
            sends.insert(0, (self.chat_target, self.chat.escalated(message)))
        return await self._all("escalation", sends)

    async def resolved(self, message: ResolvedMessage) -> NotifyResult | None:
        """Resolve the incident's pages; None when it paged no paging service."""
        pagers = self.pagers_for(message.rule)
        if not pagers:
            return None
        return await self._all("resolve", [(pager.target, pager.resolve(message)) for pager in pagers])

    async def acknowledged(self, message: ResolvedMessage) -> NotifyResult | None:
        """Acknowledge the incident's pages (someone took it); None when it paged no paging service."""
        pagers = self.pagers_for(message.rule)
        if not pagers:
            return None
        sends = [(pager.target, pager.acknowledge(message)) for pager in pagers]
        return await self._all("acknowledge", sends)

    async def _all(self, kind: str, sends: Sequence[tuple[str, Awaitable[NotifyResult]]]) -> NotifyResult:
        results = await asyncio.gather(*(self._counted(target, kind, send) for target, send in sends))
        return _combined([(target, result) for (target, _), result in zip(sends, results, strict=True)])

    async def _counted(self, target: str, kind: str, sending: Awaitable[NotifyResult]) -> NotifyResult:
        result = await sending
        if self.metrics is not None and (result.sent or not result.ok):
            self.metrics.notified(target, kind, result.ok)
        return result


def notifier_from_settings(
    settings: WatchdogSettings,
    metrics: WatchdogMetrics | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    store: WatchdogStore | None = None,
    links: IncidentLinks | None = None,
    rule_targets: Mapping[str, Collection[str]] | None = None,
) -> RoutedNotifier:
    """The notifier the settings ask for: the Slack bot (with `slack_bot_token` and a `store` to keep
    its messages in) or the chat webhook (none without `notifier_url`), and the paging services of
    every configured target (`configured_targets`), every call under `notifier_timeout_seconds`;
    an escalation goes to `escalation_targets`, or to its policy rule's `escalate_to`
    (`rule_targets`); messages carry `links`."""
    timeout, configured = settings.notifier_timeout_seconds, configured_targets(settings)
    pagers: list[Pager] = []
    if EscalationTarget.PAGERDUTY in configured and settings.pagerduty_routing_key is not None:
        key, severity = settings.pagerduty_routing_key, settings.pagerduty_severity
        pagers.append(PagerDutyPager(key, settings.pagerduty_url, severity, timeout, transport))
    if EscalationTarget.OPSGENIE in configured and settings.opsgenie_api_key is not None:
        key, priority = settings.opsgenie_api_key, settings.opsgenie_priority
        pagers.append(OpsgeniePager(key, settings.opsgenie_url, priority, timeout, transport))
    if EscalationTarget.EMAIL in configured:
        pagers.append(_email(settings))
    chat_notifier: Notifier = chat.notifier_from_settings(settings, transport=transport)
    chat_target = "none" if isinstance(chat_notifier, NullNotifier) else settings.notifier_kind.value
    if settings.slack_bot_token is not None and settings.slack_channel and store is not None:
        api = SlackApi(
            settings.slack_bot_token.get_secret_value(),
            settings.slack_api_url,
            timeout=timeout,
            transport=transport,
        )
        chat_notifier, chat_target = SlackBot(api, settings.slack_channel, store, metrics), BOT_TARGET
    return RoutedNotifier(
        chat_notifier,
        chat_target,
        pagers=pagers,
        escalate_to_chat=EscalationTarget.CHAT in settings.escalation_targets,
        metrics=metrics,
        links=links,
        default_targets=[target.value for target in settings.escalation_targets],
        rule_targets=rule_targets,
    )


def configured_targets(settings: WatchdogSettings) -> frozenset[str]:
    """The escalation targets the settings configure: chat always (it may send nothing), a paging
    service with its key, email with its SMTP host and recipients. A policy rule's `escalate_to` may
    name only these (`watchdog.policy.check_escalation_targets`)."""
    configured = {EscalationTarget.CHAT.value}
    if settings.pagerduty_routing_key is not None:
        configured.add(EscalationTarget.PAGERDUTY.value)
    if settings.opsgenie_api_key is not None:
        configured.add(EscalationTarget.OPSGENIE.value)
    if settings.smtp_host is not None and settings.email_to:
        configured.add(EscalationTarget.EMAIL.value)
    return frozenset(configured)


def _email(settings: WatchdogSettings) -> EmailPager:
    assert settings.smtp_host is not None
    return EmailPager(
        settings.smtp_host,
        settings.smtp_port,
        settings.email_from,
        list(settings.email_to),
        starttls=settings.smtp_starttls,
        username=settings.smtp_username,
        password=settings.smtp_password,
        timeout=settings.notifier_timeout_seconds,
    )


async def update_prompt(
    incidents: IncidentService, messages: MessageUpdates, incident_id: int, state: str, detail: str
) -> None:
    """Update the incident's posted prompt to `state: detail`, audited (`prompt_updated`, with Slack's
    answer) when there is one; a failure is logged, never raised."""
    result = await messages.state_changed(incident_id, state, detail)
    if result is None:
        return
    if not result.ok:
        log.warning("updating the prompt of incident %s failed: %s", incident_id, result.detail)
    await incidents.record(
        incident_id, "prompt_updated", actor=ACTOR, data={"state": state, **result.as_dict()}
    )


def _rule_of(incident: Incident) -> str | None:
    return None if incident.plan is None else incident.plan.rule


class PageResolver:
    """Resolves the page of an escalated incident when the problem it paged for is over, whatever
    opened the incident: its alert resolved (the intake's hook), another incident of the same run
    resolved (`run_resolved`: a run by hand or the watchdog finished the job on-call was paged for),
    or the run ended (`resolve_ended_runs`, after every sweep).
    Acknowledges the page when a named person takes the run over (`taken`) or denies a playbook
    planned for it (`denied`: a person looked, and chose that nothing acts). Also updates the posted
    prompt of an incident its resolved alert closed before anything acted.

    Runs as background jobs (the intake answers Alertmanager first); each delivery is audited on the
    incident (`page_resolved`, `page_acknowledged`, before and after) like every notification.
    """

    def __init__(self, incidents: IncidentService, notifier: RoutedNotifier, jobs: JobTracker) -> None:
        self.incidents = incidents
        self.notifier = notifier
        self.jobs = jobs
        self._last_of_run: dict[str, asyncio.Task[Any]] = {}  # a run's newest page job, by execution id

    def _in_turn(self, execution_id: str, work: Callable[[], Awaitable[object]], name: str) -> None:
        """Run `work` in the background after the run's page jobs asked for before it: a person's
        acknowledgement reaches the pagers before the resolve that their playbook's success asks for,
        however the two jobs are scheduled."""
        previous = self._last_of_run.get(execution_id)

        async def after_previous() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait({previous})  # however it ended: it logged its own failure
            await work()

        task = self.jobs.spawn(after_previous(), name=name)
        if task is not None:
            self._last_of_run[execution_id] = task
            task.add_done_callback(partial(self._forget_run_job, execution_id))

    def _forget_run_job(self, execution_id: str, task: asyncio.Task[Any]) -> None:
        if self._last_of_run.get(execution_id) is task:
            del self._last_of_run[execution_id]

    def alert_resolved(self, incident_id: int) -> None:
        """The alert of escalated incident `incident_id` resolved: resolve its page, if any."""
        if self.notifier.pagers:
            self.jobs.spawn(self.resolve(incident_id), name=f"resolve page of incident {incident_id}")

    def run_resolved(self, incident: Incident) -> None:
        """`incident` resolved: the open pages of its run's escalated incidents are over too."""
        if self.notifier.pagers:
            reason = f"incident {incident.id} of the run resolved"
            self._in_turn(
                incident.execution_id,
                partial(self.resolve_run, incident.execution_id, reason),
                f"resolve the pages of execution {incident.execution_id}",
            )

    def taken(self, incident: Incident, actor: str) -> None:
        """`actor` (a named person) started or approved a playbook on `incident`'s run: acknowledge its
        open pages."""
        self._acknowledge_for(incident, actor, "started")

    def denied(self, incident: Incident, actor: str) -> None:
        """`actor` (a named person) denied the playbook planned for `incident`: acknowledge the open
        pages of its run's other incidents (`incident` escalates for the denial: that page is new,
        and on-call's to take)."""
        self._acknowledge_for(incident, actor, "denied", sparing=incident.id)

    def _acknowledge_for(self, incident: Incident, actor: str, verb: str, sparing: int | None = None) -> None:
        """Acknowledge, in the background, the open pages of `incident`'s run (but `sparing`'s) for
        `actor`, who `verb` (started, denied) the playbook planned for `incident`."""
        if self.notifier.pagers:
            playbook = incident.plan.playbook if incident.plan is not None else "a playbook"
            what = f"{verb} {playbook} on incident {incident.id}"
            self._in_turn(
                incident.execution_id,
                partial(self.acknowledge_run, incident.execution_id, actor, what, sparing=sparing),
                f"acknowledge the pages of execution {incident.execution_id}",
            )

    def alert_closed(self, incident_id: int) -> None:
        """The alert of incident `incident_id` resolved before anything acted: its prompt expired with
        it, and its posted message (the Slack bot's) says so."""
        if isinstance(self.notifier.chat, SlackBot):
            detail = "the alert resolved before anything acted; the prompt expired with the incident"
            update = update_prompt(self.incidents, self.notifier, incident_id, "Resolved", detail)
            self.jobs.spawn(update, name=f"update the prompt of incident {incident_id}")

    async def resolve(self, incident_id: int, reason: str = "the alert resolved") -> NotifyResult | None:
        """Resolve the incident's open page; None when there is nothing to resolve (not escalated,
        never paged, or its page already resolved)."""
        incident = await self._paged(incident_id)
        if incident is None:
            return None
        message = ResolvedMessage(incident.id, incident.execution_id, reason, _rule_of(incident))
        return await self._delivered(incident_id, "page_resolved", self.notifier.resolved(message))

    async def acknowledge(self, incident_id: int, actor: str, what: str) -> NotifyResult | None:
        """Acknowledge the incident's open page for `actor`; None when there is no open page."""
        incident = await self._paged(incident_id)
        if incident is None:
            return None
        taken = f"{actor} took it: {what}"
        message = ResolvedMessage(incident.id, incident.execution_id, taken, _rule_of(incident))
        return await self._delivered(incident_id, "page_acknowledged", self.notifier.acknowledged(message))

    async def resolve_run(self, execution_id: str, reason: str) -> list[NotifyResult]:
        """Resolve the open pages of the run's escalated incidents."""
        return [r for i in await self._escalated_of(execution_id) if (r := await self.resolve(i, reason))]

    async def acknowledge_run(
        self, execution_id: str, actor: str, what: str, sparing: int | None = None
    ) -> list[NotifyResult]:
        """Acknowledge the open pages of the run's escalated incidents for `actor`, but `sparing`'s."""
        ids = [i for i in await self._escalated_of(execution_id) if i != sparing]
        return [r for i in ids if (r := await self.acknowledge(i, actor, what))]

    async def resolve_ended_runs(self, orchestrator: OrchestratorClient) -> list[NotifyResult]:
        """The sweep's hook: resolve the open pages of every escalated incident whose run has ended
        (completed, failed or cancelled: nothing is stuck any more).

        The escalated incidents with an open page (`page_open`, no others: those whose page was
        resolved pile up over months) are read newest first in keyset chunks of `ENDED_RUNS_CHUNK`,
        down to the oldest; per chunk, one listing asks the orchestrator which of their runs ended
        (`GET /executions?status=...&execution_id=...`). When it cannot tell (unreachable, or an
        orchestrator without the filter), that is logged and the chunks left are looked at next sweep;
        a run it does not know is left open, as one still running."""
        if not self.notifier.pagers:
            return []
        results: list[NotifyResult] = []
        before_id: int | None = None
        while True:
            paged, before_id = await self._with_open_pages(before_id)
            ended = await self._ended_runs(orchestrator, paged) if paged else {}
            if ended is None:
                return results
            for incident in paged:
                status = ended.get(incident.execution_id)
                if status is None:
                    continue
                if (result := await self.resolve(incident.id, f"the run ended ({status})")) is not None:
                    results.append(result)
            if before_id is None:
                return results

    async def _ended_runs(
        self, orchestrator: OrchestratorClient, paged: list[Incident]
    ) -> dict[str, str] | None:
        """The ended status of each run of `paged` that ended (one listing); None when the orchestrator
        cannot tell."""
        try:
            ended = await orchestrator.list_executions_of(
                [incident.execution_id for incident in paged], ",".join(sorted(RUN_ENDED))
            )
        except WatchdogError as exc:
            log.warning("cannot tell whether the runs of %d open pages ended: %s", len(paged), exc)
            return None
        return {run.execution_id: run.status for run in ended if run.status in RUN_ENDED}

    async def _with_open_pages(self, before_id: int | None) -> tuple[list[Incident], int | None]:
        """Of the next `ENDED_RUNS_CHUNK` escalated incidents with an open page below `before_id`
        (None: the newest), newest first, those that page, with where the next chunk starts (None:
        this was the last); one index range on the rows (`page_open`), no audit read."""
        async with self.incidents.store.read() as tx:
            open_pages = await tx.list_open_pages(before_id=before_id, limit=ENDED_RUNS_CHUNK)
        following = open_pages[-1].id if len(open_pages) == ENDED_RUNS_CHUNK else None
        paging = [incident for incident in open_pages if self._pages(incident)]
        if unfollowed := [incident.id for incident in open_pages if not self._pages(incident)]:
            # escalated to chat only (its rule pages no paging service): no page to follow, so the
            # row leaves the index range instead of being read again by every sweep
            async with self.incidents.store.transaction() as tx:
                await tx.set_pages_closed(unfollowed)
        return paging, following

    async def _escalated_of(self, execution_id: str) -> list[int]:
        """The ids of all the run's escalated incidents (a run has few: no cap)."""
        async with self.incidents.store.read() as tx:
            found = await tx.list_incidents(statuses=["escalated"], execution_id=execution_id, limit=None)
        return [incident.id for incident in found]

    async def _paged(self, incident_id: int) -> Incident | None:
        """The incident when it is escalated, pages and its page is open (`page_open`), else None."""
        incident = await self.incidents.store.get_incident(incident_id)
        if incident is None or incident.status != "escalated" or not incident.page_open:
            return None
        return incident if self._pages(incident) else None

    def _pages(self, incident: Incident) -> bool:
        """True when an escalation of `incident` goes to a paging service (its rule's, or the default)."""
        return bool(self.notifier.pagers_for(_rule_of(incident)))

    async def _delivered(
        self, incident_id: int, kind: str, sending: Awaitable[NotifyResult | None]
    ) -> NotifyResult | None:
        """A delivery to the pagers, audited before and after; a failure is logged, never raised."""
        await self.incidents.record(incident_id, kind, phase="before", actor=ACTOR, data={})
        result = await sending
        if result is not None and not result.ok:
            log.warning("%s of incident %s failed: %s", kind, incident_id, result.detail)
        data = {} if result is None else result.as_dict()
        await self.incidents.record(incident_id, kind, actor=ACTOR, data=data)
        return result


OnAlertResolved = Callable[[int], object]
