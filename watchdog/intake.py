"""Alertmanager webhook intake: payload version 4 in, incidents opened, joined or closed out.

`watchdog.api` receives `POST /api/v1/alerts` (auth, content type, size), calls
`watchdog.webhook.parse_payload()` on the body and `AlertIntake.handle()` on the result, and answers
2xx only after `handle()` returns, i.e. after every alert of the payload is durably written — so
Alertmanager retries when we fail.

Per alert:

- another alert name: counted and acknowledged, nothing else;
- firing: the episode (fingerprint + startsAt) is recorded in `alert_deliveries`, in the same
  transaction as opening or joining the incident of its `execution_id`. A repeat of a recorded
  episode (repeat_interval, group changes, an HA pair of Alertmanagers, a retried request) only counts
  a repeat: it never opens, joins or diagnoses again. A newly opened incident keeps what the alert
  says of itself (`watchdog.links.alert_links`: runbook_url, summary, description, generatorURL) and is
  handed to
  `on_opened` (the app starts its diagnosis), in the trace of the delivery's span (`watchdog.intake`,
  see `watchdog.tracing`);
- resolved: closes the execution's open incident if it has not acted yet (no action recorded, not
  remediating/verifying); an incident that has acted is left to the remediation, with an audit
  note; for an incident already escalated, `on_resolved_after_acting` resolves its page; a closed
  one is told to `on_closed` (the Slack bot's prompt then says so). A resolved
  alert never opens an incident and never triggers a remediation.

Validation happens for the whole payload before anything is read or written (docs/architecture.md,
"Webhook validation"). A payload that is not a valid webhook, or whose alerts are all invalid, is
refused (4xx) and changes nothing. Alertmanager does not retry a 4xx and re-sends a group unchanged,
so one invalid alert must not cost the valid alerts of its group their incidents: those are applied,
and the invalid ones are named in the answer (`rejected`), logged and counted
(`gl_watchdog_alerts_rejected_total`). An alert whose repeat key matches a recorded episode about
another execution or DAG is a `conflict`, named in the answer, and changes nothing.

At the speed of the store (`watchdog.episodes`): a repeat of an episode this replica knows recorded
is answered from memory (its count written later in a batch); the other alerts of a delivery are
applied in one transaction, once the gate lets the delivery at the store, together with those of the
deliveries admitted while the previous transaction ran (group commit: one transaction per batch, not
per delivery; when the store refuses a batch, each of its deliveries is tried alone, so a delivery
fails only for itself). The intake's transactions are urgent: on SQLite they go before the other
writers of the process (`watchdog.write_turns`), so diagnoses never starve it. A delivery that waits too
long for its turn is shed (503 with Retry-After, `gl_watchdog_intake_shed_total`) before anything of
it is written. When the store fails as the transaction ends (the commit may have happened), one read
decides: a delivery found recorded is answered `recorded`, never as a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from watchdog.episodes import GroupCommit, IntakeGate, KnownEpisode, KnownEpisodes, RepeatCounts
from watchdog.errors import InvalidTransition, StoreError, StoreUnavailable
from watchdog.http import ApiError
from watchdog.incidents import IncidentService, close_if_not_acted_in, open_or_join_in
from watchdog.intake_batch import record_new_episodes
from watchdog.links import alert_links
from watchdog.metrics import WatchdogMetrics
from watchdog.records import AlertDelivery, Incident
from watchdog.store import Tx, WatchdogStore
from watchdog.tracing import IncidentTracer
from watchdog.webhook import AmAlert, AmWebhook
from watchdog_sdk.constants import ALERT_NAME

ACTOR = "alertmanager"
# Defaults of what the settings size (`WatchdogSettings.intake_*`), for an intake built without them.
DEFAULT_IN_FLIGHT: Final = 30
DEFAULT_WAIT_SECONDS: Final = 5.0
DEFAULT_KNOWN_EPISODES: Final = 100_000
DEFAULT_PENDING_REPEATS: Final = 1000
DEFAULT_REPEAT_FLUSH_SECONDS: Final = 1.0
RETRY_AFTER_SECONDS: Final = 1
# A delivery's alerts are applied in transactions of at most this many (Alertmanager's max_alerts is
# unbounded by default): each transaction stays well within the store's timeout. A failure after some
# of them is answered 503; the retry finds those recorded (duplicates) and applies the rest.
ALERTS_PER_TRANSACTION: Final = 100
# Intake transactions under way at once on PostgreSQL (SQLite: one, its writers take turns): fewer and
# fuller batches cost fewer round trips per delivery than one transaction per delivery at a time.
BATCHES_AT_ONCE: Final = 4

log = logging.getLogger(__name__)


# -- handling ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertOutcome:
    """What happened to one alert of a payload."""

    alertname: str
    status: str
    fingerprint: str
    # opened | joined | duplicate | closed | left_open | escalated | no_incident | ignored | conflict |
    # recorded
    outcome: str
    execution_id: str | None = None
    incident_id: int | None = None
    detail: str | None = None  # why, for a conflict

    def as_json(self) -> dict[str, Any]:
        """The outcome as the API answers it."""
        answer: dict[str, Any] = {
            "alertname": self.alertname,
            "status": self.status,
            "fingerprint": self.fingerprint,
            "execution_id": self.execution_id,
            "incident_id": self.incident_id,
            "outcome": self.outcome,
        }
        if self.detail is not None:
            answer["detail"] = self.detail
        return answer


def _same_episode(recorded: AlertDelivery | KnownEpisode, alert: AmAlert) -> bool:
    """Whether a recorded episode is about what `alert` is about (older rows have no digest: their
    execution id decides)."""
    if recorded.labels_digest is not None:
        return recorded.labels_digest == alert.labels_digest
    return recorded.execution_id == alert.labels.get("execution_id")


def _conflict(alert: AmAlert, recorded_for: str | None) -> AlertOutcome:
    detail = (
        f"fingerprint {alert.episode_key!r} with startsAt {alert.startsAt.isoformat()} was recorded for "
        f"execution_id {recorded_for!r} with other labels; this alert changed nothing"
    )
    return AlertOutcome(
        alert.alertname,
        alert.status,
        alert.episode_key,
        "conflict",
        alert.labels["execution_id"],
        None,
        detail,
    )


class AlertIntake:
    """Turns validated webhook payloads into incident changes (see the module docstring)."""

    def __init__(
        self,
        store: WatchdogStore,
        incidents: IncidentService,
        metrics: WatchdogMetrics,
        on_opened: Callable[[Incident], object],
        *,
        gate: IntakeGate | None = None,
        known: KnownEpisodes | None = None,
        repeats: RepeatCounts | None = None,
        on_resolved_after_acting: Callable[[int], object] | None = None,
        on_closed: Callable[[int], object] | None = None,
        tracer: IncidentTracer | None = None,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.metrics = metrics
        self.on_opened = on_opened
        # An alert resolved for an incident escalated to on-call (`notify_router.PageResolver`).
        self.on_resolved_after_acting = on_resolved_after_acting
        self.on_closed = on_closed
        self.tracer = tracer or IncidentTracer()
        self.gate = gate or IntakeGate(DEFAULT_IN_FLIGHT, DEFAULT_WAIT_SECONDS)
        self.known = known or KnownEpisodes(DEFAULT_KNOWN_EPISODES)
        self.repeats = repeats or RepeatCounts(DEFAULT_PENDING_REPEATS, DEFAULT_REPEAT_FLUSH_SECONDS)
        self.batches = GroupCommit(
            self._apply_batch,
            max_size=ALERTS_PER_TRANSACTION,
            size=lambda delivery: len(delivery.todo),
            concurrency=1 if store.turns.serialize else BATCHES_AT_ONCE,
            name="alert-intake-batches",
        )
        # Episodes a delivery is applying right now: a concurrent delivery of only those waits for it
        # and is then answered from memory, instead of queueing at the gate for the same answer.
        self._applying: dict[tuple[str, datetime], asyncio.Event] = {}

    async def handle(self, payload: AmWebhook) -> list[AlertOutcome]:
        """Apply every alert of the payload; returns once all of them are durably written.

        Repeats of episodes known to be recorded are answered from memory. The others are applied in
        one transaction, once the gate lets the delivery at the store; `ApiError(503)` with
        Retry-After when it does not in time, before anything is written. All of it in one span
        (`watchdog.intake`), the parent of the spans of the incidents it opens.
        """
        with self.tracer.intake_span(payload.receiver, len(payload.alerts)):
            return await self._handle(payload)

    async def _handle(self, payload: AmWebhook) -> list[AlertOutcome]:
        if payload.truncatedAlerts:
            log.warning(
                "Alertmanager truncated %d alert(s) of group %s (max_alerts); sweeps will find those runs",
                payload.truncatedAlerts,
                payload.groupKey,
            )
        outcomes: list[AlertOutcome | None] = []
        todo: list[tuple[int, AmAlert]] = []
        for alert in payload.alerts:
            self.metrics.alerts_received.labels(alertname=alert.alertname, status=alert.status).inc()
            outcome = self._from_memory(alert)
            if outcome is None:
                todo.append((len(outcomes), alert))
            outcomes.append(outcome)
        if todo and all(_key(alert) in self._applying for _, alert in todo):
            todo = await self._after_the_others(todo, outcomes)
        if todo:
            for index, outcome in await self._apply(todo, payload.receiver):
                outcomes[index] = outcome
        elif self.repeats.due(self.store.clock.monotonic()):
            await self.flush_repeats()
        done = [outcome for outcome in outcomes if outcome is not None]
        for outcome in done:
            if outcome.outcome == "conflict":
                self.metrics.alert_conflicts.inc()
                log.warning("alert refused: %s", outcome.detail)
            elif outcome.outcome == "escalated" and outcome.incident_id and self.on_resolved_after_acting:
                self.on_resolved_after_acting(outcome.incident_id)
            elif outcome.outcome == "closed" and outcome.incident_id and self.on_closed:
                self.on_closed(outcome.incident_id)
        return done

    async def _after_the_others(
        self, todo: list[tuple[int, AmAlert]], outcomes: list[AlertOutcome | None]
    ) -> list[tuple[int, AmAlert]]:
        """Wait (at most the gate's wait) for the deliveries applying these episodes, then answer what
        memory can; what it cannot is returned, to be applied."""
        try:
            async with asyncio.timeout(self.gate.wait_seconds):
                for _, alert in todo:
                    event = self._applying.get(_key(alert))
                    if event is not None:
                        await event.wait()
        except TimeoutError:
            return todo
        left = []
        for index, alert in todo:
            outcomes[index] = self._from_memory(alert)
            if outcomes[index] is None:
                left.append((index, alert))
        return left

    def _from_memory(self, alert: AmAlert) -> AlertOutcome | None:
        """The outcome of an alert that needs no store: another alert name, or a repeat of a known
        episode (counted, written later in a batch); None when the store must be asked."""
        if alert.alertname != ALERT_NAME:
            return AlertOutcome(alert.alertname, alert.status, alert.episode_key, "ignored")
        known = self.known.get(_key(alert))
        if known is None or (alert.status == "resolved" and not known.resolved):
            return None
        if not _same_episode(known, alert):
            return _conflict(alert, known.execution_id)
        self.repeats.note(known.delivery_id, self.store.clock.now(), self.store.clock.monotonic())
        return AlertOutcome(
            alert.alertname,
            alert.status,
            alert.episode_key,
            "duplicate",
            alert.labels["execution_id"],
            known.incident_id,
        )

    async def _apply(self, todo: list[tuple[int, AmAlert]], receiver: str) -> list[tuple[int, AlertOutcome]]:
        """Apply the alerts that need the store in one transaction; remember what it recorded."""
        mine = {_key(alert) for _, alert in todo if _key(alert) not in self._applying}
        for key in mine:
            self._applying[key] = asyncio.Event()
        try:
            return await self._apply_admitted(todo, receiver)
        finally:
            for key in mine:
                self._applying.pop(key).set()

    async def _apply_admitted(
        self, todo: list[tuple[int, AmAlert]], receiver: str
    ) -> list[tuple[int, AlertOutcome]]:
        async with self.gate.admitted() as admitted:
            if not admitted:
                self.metrics.intake_shed.inc()
                raise ApiError(
                    503,
                    "overloaded",
                    f"the intake has {self.gate.limit} deliveries at the store and none ended within "
                    f"{self.gate.wait_seconds:g}s; nothing of this delivery was written, send it again",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            origin = trace.get_current_span().get_span_context()
            delivery = _Delivery(todo, receiver, origin)
            if len(todo) <= ALERTS_PER_TRANSACTION:
                return await self.batches.submit(delivery)
            results: list[tuple[int, AlertOutcome]] = []
            for start in range(0, len(todo), ALERTS_PER_TRANSACTION):
                part = _Delivery(todo[start : start + ALERTS_PER_TRANSACTION], receiver, origin)
                [answer] = await self._apply_together([part])
                if isinstance(answer, BaseException):
                    raise answer
                results += answer
            return results

    async def _apply_batch(self, deliveries: list[_Delivery]) -> list[_Results | BaseException]:
        """Deliveries gathered while the store was busy, in one transaction. When it fails for another
        reason than the store being out of reach, each is applied again alone, so that one delivery
        the store refuses fails alone."""
        answers = await self._apply_together(deliveries)
        if len(deliveries) == 1 or not any(_refused(answer) for answer in answers):
            return answers
        return [answer for delivery in deliveries for answer in await self._apply_together([delivery])]

    async def _apply_together(self, deliveries: list[_Delivery]) -> list[_Results | BaseException]:
        """One transaction of deliveries' alerts: each delivery's outcomes, or the exception it gets.
        The incidents it opened are handed to `on_opened` once it is committed."""
        pending = self.repeats.take()
        try:
            async with self.store.transaction("alert intake", urgent=True) as tx:
                applied = await self._apply_in(tx, deliveries)
                if pending:
                    await tx.add_repeats(pending)
        except StoreUnavailable as exc:
            # The write may have been committed (a timeout or a lost connection at COMMIT): never
            # answer a failure for a delivery that is stored.
            recorded = [await self._recorded(delivery) for delivery in deliveries]
            if any(answer is None for answer in recorded):
                self.repeats.put_back(pending, self.store.clock.monotonic())
                return [exc] * len(deliveries)
            return [answer for answer in recorded if answer is not None]
        except Exception as exc:
            self.repeats.put_back(pending, self.store.clock.monotonic())
            return [exc] * len(deliveries)
        except BaseException:
            self.repeats.put_back(pending, self.store.clock.monotonic())
            raise
        # committed: now it is safe to remember them and start work
        return [self._committed(alerts, d.origin) for alerts, d in zip(applied, deliveries, strict=True)]

    def _committed(self, applied: list[tuple[int, AmAlert, _Applied]], origin: SpanContext) -> _Results:
        """Remember what was recorded; hand the opened incidents on, in the trace of their delivery
        (the batch runs in the task of whichever delivery came first)."""
        results = []
        for index, alert, (outcome, known, incident) in applied:
            if known is not None:
                self.known.remember(_key(alert), known)
            if incident is not None:
                self.incidents.opened("alert")
                self.tracer.remember(incident.id, origin)
                self.on_opened(incident)
            results.append((index, outcome))
        return results

    async def _recorded(self, delivery: _Delivery) -> list[tuple[int, AlertOutcome]] | None:
        """After a write that failed with the store unreachable: when one read finds every alert's
        episode recorded as sent, the write was committed, and each alert is answered `recorded` (an
        incident it opened is handed to `on_opened`, which skips one already diagnosed); None when
        anything is missing or the read fails too."""
        found = []
        try:
            async with self.store.read("alert intake: was it written?") as tx:
                for index, alert in delivery.todo:
                    recorded = await tx.get_delivery(alert.episode_key, alert.startsAt)
                    if recorded is None or not _same_episode(recorded, alert):
                        return None
                    if alert.status == "resolved" and recorded.status != "resolved":
                        return None
                    incident = (
                        None if recorded.incident_id is None else await tx.get_incident(recorded.incident_id)
                    )
                    found.append((index, alert, recorded, incident))
        except StoreError:
            return None
        results = []
        for index, alert, recorded, incident in found:
            self.known.remember(_key(alert), _known(recorded))
            if incident is not None and incident.status == "open" and incident.diagnosis is None:
                self.tracer.remember(incident.id, delivery.origin)
                self.on_opened(incident)
            outcome = AlertOutcome(
                alert.alertname,
                alert.status,
                alert.episode_key,
                "recorded",
                alert.labels["execution_id"],
                recorded.incident_id,
            )
            results.append((index, outcome))
        log.warning("the store failed at the end of a delivery that it had recorded: answered as recorded")
        return results

    async def flush_repeats(self) -> None:
        """Write the repeats counted in memory (one batch, one transaction); kept for the next try
        when the store fails."""
        pending = self.repeats.take()
        if not pending:
            return
        try:
            async with self.store.transaction("alert repeats", urgent=True) as tx:
                await tx.add_repeats(pending)
        except StoreError as exc:
            self.repeats.put_back(pending, self.store.clock.monotonic())
            log.warning("could not write %d alert repeat count(s), kept for later: %s", len(pending), exc)

    async def _apply_in(
        self, tx: Tx, deliveries: list[_Delivery]
    ) -> list[list[tuple[int, AmAlert, _Applied]]]:
        """Every alert of the deliveries, in `tx`: the new firing episodes in a few statements for all
        (`watchdog.intake_batch`), the others one by one."""
        alerts = [(alert, delivery.receiver) for delivery in deliveries for _, alert in delivery.todo]
        new = await record_new_episodes(tx, alerts, actor=ACTOR)
        applied: list[list[tuple[int, AmAlert, _Applied]]] = []
        for delivery in deliveries:
            part: list[tuple[int, AmAlert, _Applied]] = []
            for index, alert in delivery.todo:
                key = _key(alert)
                if key in new.opened:  # popped: a second copy of the episode is a duplicate
                    recorded, incident = new.opened.pop(key)
                    outcome = _opened(alert, incident.id, created=True)
                    part.append((index, alert, (outcome, _known(recorded), incident)))
                elif key in new.recorded:
                    part.append(
                        (
                            index,
                            alert,
                            await self._open_for(tx, alert, new.recorded.pop(key), delivery.receiver),
                        )
                    )
                else:
                    part.append((index, alert, await self._one(tx, alert, delivery.receiver)))
            applied.append(part)
        return applied

    async def _one(self, tx: Tx, alert: AmAlert, receiver: str) -> _Applied:
        if alert.status == "firing":
            return await self._firing(tx, alert, receiver)
        return await self._resolved(tx, alert)

    async def _firing(self, tx: Tx, alert: AmAlert, receiver: str) -> _Applied:
        execution_id = alert.labels["execution_id"]
        key = alert.episode_key
        delivery = await _record(tx, alert)
        if delivery is None:
            existing = await tx.get_delivery(key, alert.startsAt)
            if existing is None:  # gone since (pruned by hand): answer as before, remember nothing
                return AlertOutcome(alert.alertname, "firing", key, "duplicate", execution_id), None, None
            if not _same_episode(existing, alert):
                return _conflict(alert, existing.execution_id), _known(existing), None
            await tx.note_repeat(existing.id)
            outcome = AlertOutcome(
                alert.alertname, "firing", key, "duplicate", execution_id, existing.incident_id
            )
            return outcome, _known(existing), None
        return await self._open_for(tx, alert, delivery, receiver)

    async def _open_for(self, tx: Tx, alert: AmAlert, delivery: AlertDelivery, receiver: str) -> _Applied:
        """A newly recorded firing episode: open its execution's incident, or join the open one."""
        key = alert.episode_key
        result = await open_or_join_in(
            tx,
            alert.labels["execution_id"],
            dag_id=alert.labels.get("dag_id"),
            source="alert",
            detection_source="prometheus",
            actor=ACTOR,
            data={"fingerprint": key, "starts_at": alert.startsAt.isoformat(), "receiver": receiver},
        )
        linked = await tx.update_delivery(delivery.id, incident_id=result.incident.id)
        said = alert_links(alert.annotations, alert.generatorURL)
        if result.created and said:
            await tx.update_incident(result.incident.id, alert_links=said)
        opened = result.incident if result.created else None
        outcome = _opened(alert, result.incident.id, created=opened is not None)
        return outcome, None if linked is None else _known(linked), opened

    async def _resolved(self, tx: Tx, alert: AmAlert) -> _Applied:
        execution_id = alert.labels["execution_id"]
        key = alert.episode_key
        delivery = await _record(tx, alert)
        if delivery is None:
            delivery = await tx.get_delivery(key, alert.startsAt)
            if delivery is not None and not _same_episode(delivery, alert):
                return _conflict(alert, delivery.execution_id), _known(delivery), None
            if delivery is not None and delivery.status == "resolved":
                await tx.note_repeat(delivery.id)
                outcome = AlertOutcome(
                    alert.alertname, "resolved", key, "duplicate", execution_id, delivery.incident_id
                )
                return outcome, _known(delivery), None
            if delivery is not None:
                delivery = await tx.update_delivery(
                    delivery.id, status="resolved", resolved_at=tx.clock.now()
                )
        incident = escalated = None
        if delivery is not None and delivery.incident_id is not None:
            incident = await tx.get_incident(delivery.incident_id)
            escalated = incident if incident is not None and incident.status == "escalated" else None
        if incident is None or not incident.is_open:
            incident = await tx.get_open_incident(execution_id)
        if incident is None and escalated is not None:  # on-call was paged: its page can resolve
            await tx.add_audit(escalated.id, "alert_resolved", actor=ACTOR, data={"fingerprint": key})
            outcome = AlertOutcome(alert.alertname, "resolved", key, "escalated", execution_id, escalated.id)
            return outcome, None if delivery is None else _known(delivery), None
        if incident is None:
            outcome = AlertOutcome(alert.alertname, "resolved", key, "no_incident", execution_id)
            return outcome, None if delivery is None else _known(delivery), None
        if delivery is not None and delivery.incident_id is None:
            delivery = await tx.update_delivery(delivery.id, incident_id=incident.id)
        known = None if delivery is None else _known(delivery)
        try:
            await close_if_not_acted_in(tx, incident.id, actor=ACTOR, reason="alert resolved")
        except InvalidTransition as exc:
            await tx.add_audit(
                incident.id, "alert_resolved", actor=ACTOR, data={"fingerprint": key, "left_open": str(exc)}
            )
            outcome = AlertOutcome(alert.alertname, "resolved", key, "left_open", execution_id, incident.id)
            return outcome, known, None
        return (
            AlertOutcome(alert.alertname, "resolved", key, "closed", execution_id, incident.id),
            known,
            None,
        )


def _opened(alert: AmAlert, incident_id: int, *, created: bool) -> AlertOutcome:
    """The outcome of a new firing episode: its execution's incident opened, or joined."""
    outcome = "opened" if created else "joined"
    return AlertOutcome(
        alert.alertname, "firing", alert.episode_key, outcome, alert.labels["execution_id"], incident_id
    )


def _key(alert: AmAlert) -> tuple[str, datetime]:
    """The episode of an alert: what Alertmanager keeps for one firing of one alert."""
    return alert.episode_key, alert.startsAt


async def _record(tx: Tx, alert: AmAlert) -> AlertDelivery | None:
    """Record the alert's episode; None when it was recorded before."""
    return await tx.insert_delivery(
        fingerprint=alert.episode_key,
        starts_at=alert.startsAt,
        alertname=alert.alertname,
        execution_id=alert.labels["execution_id"],
        status=alert.status,
        labels_digest=alert.labels_digest,
    )


# An alert's outcome, the episode to remember once committed, the incident it opened.
_Applied = tuple[AlertOutcome, KnownEpisode | None, Incident | None]
# A delivery's outcomes, by the alert's index in its payload.
_Results = list[tuple[int, AlertOutcome]]


@dataclass(frozen=True)
class _Delivery:
    """The alerts of one delivery that need the store, by their index in its payload."""

    todo: list[tuple[int, AmAlert]]
    receiver: str
    origin: SpanContext  # the delivery's span (`watchdog.intake`)


def _refused(answer: _Results | BaseException) -> bool:
    """Whether the store refused a batch for another reason than being out of reach."""
    return isinstance(answer, BaseException) and not isinstance(answer, StoreUnavailable)


def _known(delivery: AlertDelivery) -> KnownEpisode:
    return KnownEpisode(
        delivery_id=delivery.id,
        labels_digest=delivery.labels_digest,
        execution_id=delivery.execution_id,
        incident_id=delivery.incident_id,
        resolved=delivery.status == "resolved",
    )
