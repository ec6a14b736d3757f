"""The page of an escalated incident follows its run, whatever opened the incident (issue 14): a
person starting, approving or denying a playbook on the run acknowledges it, another incident of the run
resolving or the run ending resolves it (the audit log is the record of pages, the row's `page_open`
says which are open and is all the sweep reads), and a policy
rule's `escalate_to` chooses the targets of the incidents it planned.

PagerDuty and Opsgenie are faked at the HTTP level with respx, as their public docs shape the
requests, and the orchestrator's listing by `PagedOrchestrator` behind the real client (each request
counted); the store (SQLite and PostgreSQL), the remediation state machine, the responder and the
page resolver are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.watchdog.conftest import WATCHDOG_TOKEN, FakeClock, ScriptedDiagnose, make_diagnosis
from tests.watchdog.paged_orchestrator import PagedOrchestrator
from tests.watchdog.paging_wire import PD_URL, ROUTING_KEY, RecordingChat, body_of, paging_wire
from tests.watchdog.recording_playbook import POLICY, RecordingPlaybook
from watchdog import notify_router
from watchdog.approvals import ApprovalService, Decision
from watchdog.assembly import build_responder, build_watchdog
from watchdog.errors import PolicyError
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.metrics import WatchdogMetrics
from watchdog.migrations import incidents
from watchdog.notifier import EscalationMessage
from watchdog.notify_router import PageResolver, RoutedNotifier, configured_targets
from watchdog.paging import PagerDutyPager, dedup_key
from watchdog.plan import Plan
from watchdog.policy import parse_policy, parse_policy_text
from watchdog.records import Incident
from watchdog.remediation_setup import ManualRun
from watchdog.settings import Mode, WatchdogSettings
from watchdog.store import Tx, WatchdogStore
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.registry import Registry


@pytest.fixture
def mocked() -> Iterator[respx.MockRouter]:
    with paging_wire() as router:
        yield router


# -- the pages of a run follow its incidents, whatever opened them --------------------------------------


class PagedRun:
    """A sweep-found incident escalated with a PagerDuty page, on the real store and remediation."""

    def __init__(
        self, store: WatchdogStore, clock: FakeClock, mode: Mode = Mode.AUTO, **routing: Any
    ) -> None:
        self.store = store
        self.jobs = JobTracker()
        self.incidents = IncidentService(store, WatchdogMetrics())
        pager = PagerDutyPager(SecretStr(ROUTING_KEY), PD_URL, timeout=2)
        self.chat = RecordingChat()
        routing.setdefault("escalate_to_chat", False)
        self.notifier = RoutedNotifier(self.chat, "slack", pagers=[pager], **routing)
        self.playbook = RecordingPlaybook()
        self.orchestrator = OrchestratorClient("http://127.0.0.1:9", timeout=0.5)
        self.approvals = ApprovalService(
            store, b"s" * 32, ttl_seconds=600, public_url="http://wd", clock=clock
        )
        self.responder = responder = build_responder(
            store=store,
            incidents=self.incidents,
            approvals=self.approvals,
            notifier=self.notifier,
            policy=parse_policy(POLICY),
            registry=Registry([self.playbook]),
            clients=Clients(orchestrator=self.orchestrator),
            mode=mode,
            clock=clock,
            jobs=self.jobs,
        )
        self.remediation = responder.remediation
        self.pages = PageResolver(self.incidents, self.notifier, self.jobs)
        self.remediation.closing.on_resolved = self.pages.run_resolved
        self.remediation.closing.on_taken = self.pages.taken
        self.remediation.closing.on_denied = self.pages.denied

    async def escalated(self, execution_id: str) -> int:
        opened = await self.incidents.open_or_join(
            execution_id, dag_id="d", source="sweep", detection_source="api"
        )
        outcome = await self.remediation.closing.escalate(opened.incident.id, "no playbook fits")
        assert outcome.status == "escalated"
        return opened.incident.id

    async def paged_as_recorded(self, execution_ids: list[str]) -> list[int]:
        """Escalated incidents whose page was delivered, as the store records them (the status, the
        `escalation_notified` entry that opens the page and `page_open`), written in one transaction:
        many at once, in order (ids ascending)."""
        async with self.store.transaction() as tx:
            opened = [
                await tx.insert_incident(
                    execution_id=execution_id,
                    dag_id="d",
                    source="sweep",
                    detection_source="api",
                    status="escalated",
                )
                for execution_id in execution_ids
            ]
            ids = [incident.id for incident in opened if incident is not None]
            delivered = {"ok": True, "sent": True, "detail": "", "status": 202}
            await tx.add_audits(
                [{"incident_id": i, "kind": "escalation_notified", "data": delivered} for i in ids]
            )
            for incident_id in ids:
                await tx.set_page_open(incident_id, True)
        return ids

    async def decided_by_alice(self, execution_id: str, decision: Decision, outcome: str) -> int:
        """Another incident of the run, whose plan asks a person (recommend mode), decided by alice:
        the responder's outcome is `outcome`; the incident's id."""
        again = await self.incidents.open_or_join(
            execution_id, dag_id="d", source="manual", detection_source="api"
        )
        diagnosis = make_diagnosis(execution_id, cause="agent_unresponsive")
        assert (
            await self.responder.handle_diagnosed(again.incident.id, diagnosis)
        ).status == "awaiting_approval"
        pending = await self.approvals.pending_of(again.incident.id)
        assert pending is not None
        approval = await self.approvals.decide(pending.id, decision, actor="alice", authenticated=True)
        assert (await self.responder.on_decision(approval)).status == outcome
        return again.incident.id

    async def escalated_by_rule(self, execution_id: str, rule: str) -> int:
        """An incident planned by policy rule `rule` (its targets page), escalated."""
        opened = await self.incidents.open_or_join(
            execution_id, dag_id="d", source="sweep", detection_source="api"
        )
        plan = Plan(
            execution_id=execution_id,
            likely_cause="agent_unresponsive",
            playbook="restart_agent",
            mode=Mode.RECOMMEND,
            rationale="the agent is not answering",
            rule=rule,
        )
        await self.incidents.update(opened.incident.id, kind="planned", actor="watchdog", plan=plan)
        await self.remediation.closing.escalate(opened.incident.id, "approval expired")
        return opened.incident.id

    def by_hand(self, execution_id: str, actor: str) -> ManualRun:
        params = {"agent_id": "calc"}
        return ManualRun(playbook="restart_agent", execution_id=execution_id, params=params, actor=actor)


@pytest.fixture
async def paged_run(database_url: str, clock: FakeClock) -> AsyncIterator[PagedRun]:
    store = await WatchdogStore.open(database_url, clock=clock)
    run = PagedRun(store, clock)
    try:
        yield run
    finally:
        await run.orchestrator.aclose()
        await store.close()


async def test_a_person_running_a_playbook_acknowledges_the_page_and_its_success_resolves_it(
    mocked: respx.MockRouter, paged_run: PagedRun
) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success", "dedup_key": "x"})
    escalated = await paged_run.escalated("exec-s1")
    outcome = await paged_run.remediation.run_manual(paged_run.by_hand("exec-s1", "alice@example.com"))
    await asyncio.wait_for(paged_run.jobs.wait_idle(), 10)
    assert outcome.status == "resolved" and outcome.incident_id != escalated
    sent = [body_of(route, i) for i in range(len(route.calls))]
    assert [body["event_action"] for body in sent] == ["trigger", "acknowledge", "resolve"]
    assert {body["dedup_key"] for body in sent} == {dedup_key(escalated, "exec-s1")}
    # Events API v2: acknowledge and resolve carry the routing key and dedup key, no payload.
    assert all(set(body) == {"routing_key", "event_action", "dedup_key", "client"} for body in sent[1:])
    detail = await paged_run.incidents.detail(escalated)
    after = {(e.kind, e.data.get("ok")) for e in detail.audit if e.phase == "after"}
    assert ("page_acknowledged", True) in after and ("page_resolved", True) in after
    assert not detail.incident.page_open


async def test_an_acknowledgement_still_on_its_way_reaches_the_pager_before_the_runs_resolve(
    mocked: respx.MockRouter, paged_run: PagedRun
) -> None:
    """A person's playbook is acknowledged, and its success resolves the run's pages, as two background
    jobs: the resolve waits for the acknowledgement asked for before it, however slow that one is."""
    ack_arrived, release = asyncio.Event(), asyncio.Event()

    async def pagerduty(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["event_action"] == "acknowledge":
            ack_arrived.set()
            await release.wait()
        return httpx.Response(202, json={"status": "success"})

    route = mocked.post(PD_URL).mock(side_effect=pagerduty)
    escalated = await paged_run.escalated("exec-o1")
    incident = await paged_run.store.get_incident(escalated)
    assert incident is not None
    paged_run.pages.taken(incident, "alice@example.com")
    paged_run.pages.run_resolved(incident)
    await asyncio.wait_for(ack_arrived.wait(), 10)
    for _ in range(5):  # store round trips: time enough for a resolve that did not wait to be sent
        await paged_run.incidents.detail(escalated)
    # respx records a call once answered: the acknowledgement is held, and no resolve went past it
    assert [json.loads(call.request.content)["event_action"] for call in route.calls] == ["trigger"]
    release.set()
    await asyncio.wait_for(paged_run.jobs.wait_idle(), 10)
    sent = [json.loads(call.request.content)["event_action"] for call in route.calls]
    assert sent == ["trigger", "acknowledge", "resolve"]


async def test_a_resolved_page_is_not_resolved_again_and_a_failed_resolve_is_tried_again(
    mocked: respx.MockRouter, paged_run: PagedRun
) -> None:
    route = mocked.post(PD_URL).mock(
        side_effect=[
            httpx.Response(202, json={"status": "success"}),
            httpx.Response(503, text="busy"),
            httpx.Response(202, json={"status": "success"}),
        ]
    )
    escalated = await paged_run.escalated("exec-s2")
    [failed] = await paged_run.pages.resolve_run("exec-s2", "the run ended")
    assert not failed.ok and "PagerDuty resolve answered 503" in failed.detail
    [retried] = await paged_run.pages.resolve_run("exec-s2", "the run ended")
    assert retried.ok
    assert await paged_run.pages.resolve_run("exec-s2", "the run ended") == []
    assert await paged_run.pages.acknowledge(escalated, "bob", "looking") is None
    assert len(route.calls) == 3


async def test_the_watchdog_acting_on_its_own_does_not_acknowledge_a_page(
    mocked: respx.MockRouter, paged_run: PagedRun
) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    await paged_run.escalated("exec-s3")
    outcome = await paged_run.remediation.run_manual(paged_run.by_hand("exec-s3", "watchdog"))
    await asyncio.wait_for(paged_run.jobs.wait_idle(), 10)
    assert outcome.status == "resolved"
    assert [body_of(route, i)["event_action"] for i in range(len(route.calls))] == ["trigger", "resolve"]


async def test_a_run_never_paged_has_nothing_to_acknowledge_or_resolve(
    mocked: respx.MockRouter, paged_run: PagedRun
) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    outcome = await paged_run.remediation.run_manual(paged_run.by_hand("exec-s4", "alice@example.com"))
    await asyncio.wait_for(paged_run.jobs.wait_idle(), 10)
    assert outcome.status == "resolved" and not route.calls


ORCH_URL = "http://orchestrator.test"


def _execution(execution_id: str, status: str) -> dict[str, Any]:
    return {"execution_id": execution_id, "dag_id": "d", "status": status}


class CountedOrchestrator:
    """The orchestrator's listing (`PagedOrchestrator`) behind a real client, each request recorded;
    `failing`, when set, is the answer to every request instead (status and JSON body)."""

    def __init__(self, clock: FakeClock) -> None:
        self.fake = PagedOrchestrator(clock.now)
        self.failing: tuple[int, dict[str, str]] | None = None
        transport = httpx.MockTransport(self.handler)
        self.client = OrchestratorClient(ORCH_URL, timeout=2, transport=transport)

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.failing is not None:
            self.fake.requests.append(dict(request.url.params))
            return httpx.Response(self.failing[0], json=self.failing[1])
        return self.fake.handler(request)

    def add(self, execution_id: str, status: str) -> None:
        self.fake.add(execution_id, started_at=self.fake.now(), timeout=None, status=status)


@pytest.fixture
async def counted(clock: FakeClock) -> AsyncIterator[CountedOrchestrator]:
    orchestrator = CountedOrchestrator(clock)
    try:
        yield orchestrator
    finally:
        await orchestrator.client.aclose()


def _resolved_keys(pd: respx.Route) -> list[str]:
    sent = [body_of(pd, i) for i in range(len(pd.calls))]
    return sorted(body["dedup_key"] for body in sent if body["event_action"] == "resolve")


@contextlib.contextmanager
def _audit_reads(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements reading the audit log while the block runs."""
    reads: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM audit_log" in statement:
            reads.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", note)
    try:
        yield reads
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", note)


async def test_resolving_the_ended_runs_of_many_open_pages_is_one_orchestrator_call(
    mocked: respx.MockRouter, paged_run: PagedRun, counted: CountedOrchestrator
) -> None:
    pd = mocked.post(PD_URL).respond(202, json={"status": "success"})
    ended = {}
    for index, status in enumerate(["completed", "failed", "cancelled"] * 4):
        counted.add(f"exec-ended-{index}", status)
        ended[f"exec-ended-{index}"] = await paged_run.escalated(f"exec-ended-{index}")
    for index in range(12):  # still running, or unknown to the orchestrator: their pages stay open
        counted.add(f"exec-running-{index}", "running")
        await paged_run.escalated(f"exec-running-{index}")
        await paged_run.escalated(f"exec-unknown-{index}")
    with _audit_reads(paged_run.store.engine) as reads:
        results = await paged_run.pages.resolve_ended_runs(counted.client)
    assert len(results) == len(ended) and all(result.ok for result in results)
    [asked] = counted.fake.requests
    assert asked["status"] == "cancelled,completed,failed"
    assert len(asked["execution_id"].split(",")) == 36
    assert reads == []  # the open pages are read from their rows, the audit is only written
    assert _resolved_keys(pd) == sorted(dedup_key(i, execution) for execution, i in ended.items())
    assert await paged_run.pages.resolve_ended_runs(counted.client) == []  # resolved once only
    assert len(counted.fake.requests[1]["execution_id"].split(",")) == 24  # only the open pages


async def test_every_open_page_is_looked_at_in_chunks_down_to_the_oldest(
    mocked: respx.MockRouter, paged_run: PagedRun, counted: CountedOrchestrator
) -> None:
    pd = mocked.post(PD_URL).respond(202, json={"status": "success"})
    executions = [f"exec-{index}" for index in range(450)]
    ids = await paged_run.paged_as_recorded(executions)  # the chunks: ids[449:249], [249:49], [49::-1]
    ended = {}
    for index, (execution_id, incident_id) in enumerate(zip(executions, ids, strict=True)):
        run_ended = index % 50 == 0 or index == 449  # spread over every chunk, the oldest included
        counted.add(execution_id, "failed" if run_ended else "running")
        if run_ended:
            ended[execution_id] = incident_id
    with _audit_reads(paged_run.store.engine) as reads:
        results = await paged_run.pages.resolve_ended_runs(counted.client)
    assert len(results) == len(ended) == 10 and all(result.ok for result in results)
    assert ended["exec-0"] == min(ids)  # the oldest escalated incident's page was resolved too
    assert len(counted.fake.requests) == math.ceil(450 / notify_router.ENDED_RUNS_CHUNK) == 3
    asked = [len(request["execution_id"].split(",")) for request in counted.fake.requests]
    assert asked == [200, 200, 50]
    assert reads == []  # one read of open pages per chunk, from the rows
    assert _resolved_keys(pd) == sorted(dedup_key(i, execution) for execution, i in ended.items())


async def test_page_open_follows_the_trigger_a_failed_resolve_the_resolve_and_a_new_escalation(
    mocked: respx.MockRouter, paged_run: PagedRun
) -> None:
    """The row's `page_open` moves with the page entries, in their transactions: a delivered
    escalation opens, a failed resolve leaves open, a resolve the pagers took closes, an escalation
    delivered again reopens; an escalation no pager took opens nothing."""
    mocked.post(PD_URL).mock(
        side_effect=[
            httpx.Response(202, json={"status": "success"}),
            httpx.Response(503, text="busy"),
            httpx.Response(202, json={"status": "success"}),
            httpx.Response(202, json={"status": "success"}),
            httpx.Response(503, text="busy"),
        ]
    )

    async def page_open(incident_id: int) -> bool:
        incident = await paged_run.store.get_incident(incident_id)
        assert incident is not None
        return incident.page_open

    escalated = await paged_run.escalated("exec-p1")
    assert await page_open(escalated)
    [failed] = await paged_run.pages.resolve_run("exec-p1", "the run ended")
    assert not failed.ok and await page_open(escalated)
    [resolved] = await paged_run.pages.resolve_run("exec-p1", "the run ended")
    assert resolved.ok and not await page_open(escalated)
    message = EscalationMessage(incident_id=escalated, execution_id="exec-p1", reason="escalated again")
    again = await paged_run.remediation.closing.notify(
        escalated, "escalation_notified", paged_run.notifier.escalated(message)
    )
    assert again.sent and await page_open(escalated)
    not_taken = await paged_run.escalated("exec-p2")  # PagerDuty answered 503: no page
    assert not await page_open(not_taken)


class _ListedIncidents:
    """How many incident rows the store's listings hand back while the block runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        for name in ("list_incidents", "list_open_pages"):
            monkeypatch.setattr(Tx, name, self._counted(getattr(Tx, name)))

    def _counted(self, listing: Any) -> Any:
        async def counted(tx: Tx, **query: Any) -> list[Incident]:
            found: list[Incident] = await listing(tx, **query)
            self.rows += len(found)
            return found

        return counted


async def test_the_sweep_reads_only_the_escalated_incidents_whose_page_is_open(
    mocked: respx.MockRouter,
    paged_run: PagedRun,
    counted: CountedOrchestrator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Of 1,000 escalated incidents, 10 have an open page: the sweep lists those 10 rows, asks the
    orchestrator about their 10 runs and reads no audit, however many pages were resolved before."""
    pd = mocked.post(PD_URL).respond(202, json={"status": "success"})
    executions = [f"exec-{index}" for index in range(1000)]
    ids = await paged_run.paged_as_recorded(executions)
    still_open = {executions[index]: ids[index] for index in range(0, 1000, 100)}
    async with paged_run.store.transaction() as tx:  # the others' pages were resolved long ago
        closed = incidents.c.id.not_in(list(still_open.values()))
        await tx.conn.execute(sa.update(incidents).where(closed).values(page_open=False))
    for index, execution_id in enumerate(still_open):
        counted.add(execution_id, "completed" if index % 3 == 0 else "running")
    listed = _ListedIncidents(monkeypatch)
    with _audit_reads(paged_run.store.engine) as reads:
        results = await paged_run.pages.resolve_ended_runs(counted.client)
    assert listed.rows == 10 and reads == []
    [asked] = counted.fake.requests
    assert sorted(asked["execution_id"].split(",")) == sorted(still_open)
    assert len(results) == 4 and all(result.ok for result in results)
    ended = {e: i for index, (e, i) in enumerate(still_open.items()) if index % 3 == 0}
    assert _resolved_keys(pd) == sorted(dedup_key(i, execution) for execution, i in ended.items())
    await paged_run.pages.resolve_ended_runs(counted.client)
    assert len(counted.fake.requests[1]["execution_id"].split(",")) == 6  # the resolved left out


@pytest.mark.parametrize(
    "failing",
    [
        (503, {"error": "unavailable", "detail": "db down"}),
        # An orchestrator from before the filter (its query model forbids unknown parameters).
        (400, {"error": "bad_request", "detail": "execution_id: is not a known parameter"}),
    ],
    ids=["unavailable", "without-the-filter"],
)
async def test_when_the_orchestrator_cannot_tell_the_pages_wait_for_the_next_sweep(
    mocked: respx.MockRouter,
    paged_run: PagedRun,
    counted: CountedOrchestrator,
    failing: tuple[int, dict[str, str]],
) -> None:
    pd = mocked.post(PD_URL).respond(202, json={"status": "success"})
    counted.add("exec-done", "failed")
    done = await paged_run.escalated("exec-done")
    counted.failing = failing
    assert await paged_run.pages.resolve_ended_runs(counted.client) == []
    assert (await paged_run.incidents.detail(done)).incident.page_open
    counted.failing = None
    [result] = await paged_run.pages.resolve_ended_runs(counted.client)
    assert result.ok and _resolved_keys(pd) == [dedup_key(done, "exec-done")]
    assert len(counted.fake.requests) == 2


async def test_with_no_open_page_the_orchestrator_is_not_asked(
    mocked: respx.MockRouter, paged_run: PagedRun, counted: CountedOrchestrator
) -> None:
    mocked.post(PD_URL).respond(202, json={"status": "success"})
    await paged_run.escalated("exec-r")
    await paged_run.pages.resolve_run("exec-r", "another incident of the run resolved")
    assert await paged_run.pages.resolve_ended_runs(counted.client) == []
    assert counted.fake.requests == []


# -- escalation targets per policy rule ---------------------------------------------------------------

RULED_POLICY = """\
version: 1
playbooks:
  restart_agent:
    risk: medium
rules:
  - name: agent-down
    when:
      likely_cause: [agent_unresponsive]
    playbook: restart_agent
    escalate_to: [pagerduty, email]
  - name: anything-else
    when:
      likely_cause: [unknown]
    playbook: null
"""


def test_a_rules_escalation_target_must_be_configured_and_the_error_names_its_line() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy_text(RULED_POLICY, "p.yaml", targets={"chat", "email"})
    assert str(caught.value) == (
        "p.yaml: invalid policy: rules.0.escalate_to.0: escalation target 'pagerduty' is not configured "
        "(configured: chat, email) [line 10, rule 'agent-down']"
    )
    configured = {"chat", "pagerduty", "email"}
    policy = parse_policy_text(RULED_POLICY, "p.yaml", targets=configured)
    assert policy.escalation_targets() == {"agent-down": ["pagerduty", "email"]}


def test_an_unknown_escalation_target_is_refused_at_load() -> None:
    text = RULED_POLICY.replace("[pagerduty, email]", "[sms]")
    with pytest.raises(PolicyError, match=r"rules\.0\.escalate_to\.0: .*'chat', 'pagerduty', 'opsgenie'"):
        parse_policy_text(text, "p.yaml")


def test_the_configured_targets_are_those_with_their_credentials() -> None:
    assert configured_targets(WatchdogSettings()) == {"chat"}
    settings = WatchdogSettings(
        pagerduty_routing_key=ROUTING_KEY, smtp_host="smtp.test", email_to=["oncall@example.com"]
    )
    assert configured_targets(settings) == {"chat", "pagerduty", "email"}


async def test_an_incident_planned_by_a_rule_with_escalate_to_pages_its_targets_only(
    mocked: respx.MockRouter, database_url: str, clock: FakeClock
) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    store = await WatchdogStore.open(database_url, clock=clock)
    routing = {"default_targets": ["chat"], "rule_targets": {"agent-down": ["pagerduty"]}}
    run = PagedRun(store, clock, **routing)
    try:
        ruled = await run.escalated_by_rule("exec-r1", "agent-down")
        assert [body_of(route, i)["event_action"] for i in range(len(route.calls))] == ["trigger"]
        assert run.chat.sent == []  # the rule's targets replace the default, chat included
        other = await run.escalated("exec-r2")  # no rule: the settings' escalation_targets (chat)
        assert run.chat.sent == ["escalation"] and len(route.calls) == 1
        assert await run.pages.resolve(other, "the run ended") is None  # it paged nobody
        assert "page_resolved" not in [entry.kind for entry in (await run.incidents.detail(other)).audit]
        assert (await run.pages.resolve(ruled, "the run ended")) is not None
        assert body_of(route, 1)["event_action"] == "resolve"
    finally:
        await run.orchestrator.aclose()
        await store.close()


async def test_an_escalation_to_chat_only_leaves_the_sweeps_open_pages_after_one_look(
    mocked: respx.MockRouter, database_url: str, clock: FakeClock, counted: CountedOrchestrator
) -> None:
    """An escalation that went to chat only (its rule pages nobody) is recorded as sent, which opens
    a page by the audit's rule; the first sweep takes it out of the open pages, so later sweeps
    neither read its row nor ask the orchestrator about its run, while a real page stays followed."""
    mocked.post(PD_URL).respond(202, json={"status": "success"})
    store = await WatchdogStore.open(database_url, clock=clock)
    run = PagedRun(store, clock, default_targets=["chat"], rule_targets={"agent-down": ["pagerduty"]})
    orchestrator = counted
    try:
        chat_only = await run.escalated("exec-chat")  # no rule: the default targets, chat
        paged = await run.escalated_by_rule("exec-paged", "agent-down")
        assert (await store.get_incident(chat_only)).page_open  # as the audit's rule has it
        orchestrator.add("exec-chat", "completed")
        orchestrator.add("exec-paged", "running")
        assert await run.pages.resolve_ended_runs(orchestrator.client) == []
        assert [r["execution_id"] for r in orchestrator.fake.requests] == ["exec-paged"]
        assert not (await store.get_incident(chat_only)).page_open
        assert (await store.get_incident(paged)).page_open
        await run.pages.resolve_ended_runs(orchestrator.client)
        assert [r["execution_id"] for r in orchestrator.fake.requests] == ["exec-paged"] * 2
    finally:
        await run.orchestrator.aclose()
        await store.close()


async def test_a_person_approving_a_remediation_of_the_run_acknowledges_its_page(
    mocked: respx.MockRouter, database_url: str, clock: FakeClock
) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    store = await WatchdogStore.open(database_url, clock=clock)
    run = PagedRun(store, clock, mode=Mode.RECOMMEND)
    try:
        escalated = await run.escalated("exec-a1")
        await run.decided_by_alice("exec-a1", Decision.APPROVE, "resolved")
        await asyncio.wait_for(run.jobs.wait_idle(), 10)
        sent = [body_of(route, i) for i in range(len(route.calls))]
        assert [body["event_action"] for body in sent] == ["trigger", "acknowledge", "resolve"]
        assert {body["dedup_key"] for body in sent} == {dedup_key(escalated, "exec-a1")}
    finally:
        await run.orchestrator.aclose()
        await store.close()


async def test_a_person_denying_a_remediation_of_the_run_acknowledges_its_page_and_the_denial_pages(
    mocked: respx.MockRouter, database_url: str, clock: FakeClock
) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    metrics = WatchdogMetrics()
    store = await WatchdogStore.open(database_url, clock=clock)
    run = PagedRun(store, clock, mode=Mode.RECOMMEND, metrics=metrics)
    try:
        escalated = await run.escalated("exec-d1")
        again = await run.decided_by_alice("exec-d1", Decision.DENY, "escalated")
        await asyncio.wait_for(run.jobs.wait_idle(), 10)
        sent = [body_of(route, i) for i in range(len(route.calls))]
        by_page: dict[str, list[str]] = {}
        for body in sent:
            by_page.setdefault(body["dedup_key"], []).append(body["event_action"])
        # the earlier page is acknowledged for alice; the denial's own escalation pages on-call
        assert by_page == {
            dedup_key(escalated, "exec-d1"): ["trigger", "acknowledge"],
            dedup_key(again, "exec-d1"): ["trigger"],
        }
        detail = await run.incidents.detail(escalated)
        [acknowledged] = [e for e in detail.audit if e.kind == "page_acknowledged" and e.phase == "after"]
        assert acknowledged.data["ok"] is True
        assert detail.incident.page_open
        assert (await store.get_incident(again)).page_open
        acks = {"target": "pagerduty", "kind": "acknowledge", "result": "ok"}
        assert metrics.registry.get_sample_value("gl_watchdog_notifications_total", acks) == 1
    finally:
        await run.orchestrator.aclose()
        await store.close()


async def test_a_sweep_of_the_real_watchdog_resolves_the_page_of_an_ended_run(
    _no_pending_tasks: None, mocked: respx.MockRouter, database_url: str
) -> None:
    pd = mocked.post(PD_URL).respond(202, json={"status": "success"})
    runs = f"{ORCH_URL}/api/v1/orchestrator/executions"

    def listing(request: httpx.Request) -> httpx.Response:
        asked = request.url.params.get("execution_id", "").split(",")
        items = [_execution("exec-ended", "failed")] if "exec-ended" in asked else []
        return httpx.Response(200, json={"items": items, "next_cursor": None, "total": len(items)})

    mocked.get(runs).mock(side_effect=listing)
    settings = WatchdogSettings(
        database_url=database_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=ORCH_URL,
        orchestrator_timeout_seconds=1.0,
        stuck_run_detection=False,
        escalation_targets=["pagerduty"],
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_url=PD_URL,
    )
    wd = await build_watchdog(settings, diagnose=ScriptedDiagnose(), respond=False)
    try:
        opened = await wd.incidents.open_or_join(
            "exec-ended", dag_id="d", source="sweep", detection_source="api"
        )
        await wd.remediation.closing.escalate(opened.incident.id, "on-call must look")
        report = await wd.sweeper.sweep_once()
        assert report.leader, report
    finally:
        await wd.aclose()
    assert [body_of(pd, i)["event_action"] for i in range(len(pd.calls))] == ["trigger", "resolve"]
