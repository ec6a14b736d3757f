"""Paging on escalation: PagerDuty Events API v2 and Opsgenie, as their public docs shape the requests.

The services are faked at the HTTP level with respx (what goes on the wire is what is checked); the
routing of prompts and escalations, the delivery counter and the page resolved when an escalated
incident's alert resolves run through the real watchdog (store, intake, remediation state machine).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import respx
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.conftest import free_port
from tests.watchdog.conftest import (
    WATCHDOG_TOKEN,
    FakeClock,
    RecordingRemediate,
    ScriptedDiagnose,
    make_diagnosis,
)
from tests.watchdog.messages import PROMPT
from tests.watchdog.recording_playbook import POLICY, RecordingPlaybook
from tests.watchdog.webhook import alert, payload
from watchdog.approvals import ApprovalService, Decision
from watchdog.assembly import Watchdog, build_responder, build_watchdog, create_app
from watchdog.errors import PolicyError
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import EscalationMessage, NotifyResult, PromptMessage
from watchdog.notify_router import (
    PageResolver,
    RoutedNotifier,
    configured_targets,
    notifier_from_settings,
    page_state,
)
from watchdog.paging import OpsgeniePager, PagerDutyPager, ResolvedMessage, dedup_key
from watchdog.plan import Plan
from watchdog.policy import parse_policy, parse_policy_text
from watchdog.remediation_setup import ManualRun
from watchdog.settings import Mode, WatchdogSettings, load_settings
from watchdog.store import WatchdogStore
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.errors import ConfigError
from watchdog_sdk.registry import Registry

PD_URL = "https://events.pagerduty.test/v2/enqueue"
OG_URL = "https://api.opsgenie.test"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefabcdef"
GENIE_KEY = "eb243592-faa2-4ba2-a551q-1afdf565c889"
ESCALATION = EscalationMessage(
    incident_id=7,
    execution_id="exec-1",
    reason="restart_agent applied but verification failed: node still stuck",
    diagnosis_summary="likely cause agent_unresponsive (agent calc)",
    plan_headline="run restart_agent(agent_id=calc) [risk medium]",
)
RESOLVED = ResolvedMessage(incident_id=7, execution_id="exec-1", reason="the alert resolved")
AUTH = {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}


def _sent(route: respx.Route, index: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls[index].request.content)
    return body


def _routed(wd: Watchdog) -> RoutedNotifier:
    """The watchdog's own notifier (its remediation's), with its PagerDuty pager and its metrics."""
    notifier = wd.remediation.notifier
    assert isinstance(notifier, RoutedNotifier)
    return notifier


def _count(metrics: WatchdogMetrics, target: str, kind: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "gl_watchdog_notifications_total", {"target": target, "kind": kind, "result": result}
    )
    return value or 0.0


@pytest.fixture
def mocked() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        yield router


# -- PagerDuty ----------------------------------------------------------------------------------------


async def test_pagerduty_trigger_and_resolve_share_one_dedup_key(mocked: respx.MockRouter) -> None:
    route = mocked.post(PD_URL).respond(
        202, json={"status": "success", "message": "Event processed", "dedup_key": "x"}
    )
    pager = PagerDutyPager(SecretStr(ROUTING_KEY), PD_URL, "critical", timeout=2)
    triggered = await pager.trigger(ESCALATION)
    resolved = await pager.resolve(RESOLVED)
    assert triggered.ok and triggered.sent and triggered.status == 202
    assert resolved.ok
    trigger, resolve = _sent(route, 0), _sent(route, 1)
    assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == resolve["dedup_key"] == dedup_key(7, "exec-1")
    assert resolve == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": dedup_key(7, "exec-1"),
        "client": "gl-watchdog",
    }
    payload_ = trigger["payload"]
    assert payload_["severity"] == "critical" and payload_["source"] == "gl-watchdog"
    assert "incident 7" in payload_["summary"] and "verification failed" in payload_["summary"]
    assert payload_["custom_details"]["execution_id"] == "exec-1"
    assert payload_["custom_details"]["plan"] == ESCALATION.plan_headline


async def test_pagerduty_summary_is_clipped_to_its_documented_limit(mocked: respx.MockRouter) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    long = EscalationMessage(incident_id=8, execution_id="exec-2", reason="x" * 5000)
    await PagerDutyPager(SecretStr(ROUTING_KEY), PD_URL, timeout=2).trigger(long)
    assert len(_sent(route)["payload"]["summary"]) == 1024


async def test_pagerduty_refusal_is_reported_without_the_routing_key(mocked: respx.MockRouter) -> None:
    mocked.post(PD_URL).respond(
        400, json={"status": "invalid event", "message": "Event object is invalid", "errors": ["bad"]}
    )
    result = await PagerDutyPager(SecretStr(ROUTING_KEY), PD_URL, timeout=2).trigger(ESCALATION)
    assert not result.ok and result.status == 400
    assert "PagerDuty trigger answered 400" in result.detail
    assert ROUTING_KEY not in result.detail and ROUTING_KEY not in repr(result)


async def test_pagerduty_timeout_is_reported(mocked: respx.MockRouter) -> None:
    mocked.post(PD_URL).mock(side_effect=httpx.ReadTimeout("slow"))
    result = await PagerDutyPager(SecretStr(ROUTING_KEY), PD_URL, timeout=0.5).trigger(ESCALATION)
    assert not result.ok and result.detail == "PagerDuty trigger timed out after 0.5s"


# -- Opsgenie -----------------------------------------------------------------------------------------


async def test_opsgenie_creates_an_alert_with_an_alias_and_closes_it_by_that_alias(
    mocked: respx.MockRouter,
) -> None:
    accepted = {"result": "Request will be processed", "took": 0.01, "requestId": "43a29c5c"}
    create = mocked.post(f"{OG_URL}/v2/alerts").respond(202, json=accepted)
    alias = dedup_key(7, "exec-1")
    close = mocked.post(
        f"{OG_URL}/v2/alerts/{alias.replace('/', '%2F')}/close", params={"identifierType": "alias"}
    ).respond(202, json=accepted)
    pager = OpsgeniePager(SecretStr(GENIE_KEY), OG_URL + "/", priority="P1", timeout=2)
    assert (await pager.trigger(ESCALATION)).ok
    assert (await pager.resolve(RESOLVED)).ok
    sent = create.calls[0].request
    assert sent.headers["Authorization"] == f"GenieKey {GENIE_KEY}"
    body = _sent(create)
    assert body["alias"] == alias and body["priority"] == "P1" and body["entity"] == "exec-1"
    assert len(body["message"]) <= 130 and "incident 7" in body["message"]
    assert "verification failed" in body["description"]
    assert all(isinstance(value, str) for value in body["details"].values())
    assert close.calls[0].request.headers["Authorization"] == f"GenieKey {GENIE_KEY}"
    assert _sent(close) == {"source": "gl-watchdog", "note": "the alert resolved"}


async def test_opsgenie_unreachable_is_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await OpsgeniePager(SecretStr(GENIE_KEY), url, timeout=2).trigger(ESCALATION)
    assert not result.ok and result.detail.startswith("Opsgenie create unreachable")
    assert GENIE_KEY not in result.detail


# -- routing and counting ------------------------------------------------------------------------------


class RecordingChat:
    """A chat notifier that records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        self.sent.append("prompt")
        return NotifyResult(ok=True, sent=True, detail="delivered (200)", status=200)

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        self.sent.append("escalation")
        return NotifyResult(ok=True, sent=True, detail="delivered (200)", status=200)


async def test_escalation_pages_every_target_and_one_failure_fails_the_delivery(
    mocked: respx.MockRouter,
) -> None:
    mocked.post(PD_URL).respond(202, json={"status": "success"})
    mocked.post(f"{OG_URL}/v2/alerts").respond(503, text="unavailable")
    metrics = WatchdogMetrics()
    chat = RecordingChat()
    routed = RoutedNotifier(
        chat,
        "slack",
        pagers=[
            PagerDutyPager(SecretStr(ROUTING_KEY), PD_URL, timeout=2),
            OpsgeniePager(SecretStr(GENIE_KEY), OG_URL, timeout=2),
        ],
        metrics=metrics,
    )
    result = await routed.escalated(ESCALATION)
    assert chat.sent == ["escalation"]
    assert not result.ok and result.sent
    assert "slack: delivered (200)" in result.detail and "pagerduty: delivered (202)" in result.detail
    assert "opsgenie: Opsgenie create answered 503: unavailable" in result.detail
    assert _count(metrics, "slack", "escalation", "ok") == 1
    assert _count(metrics, "pagerduty", "escalation", "ok") == 1
    assert _count(metrics, "opsgenie", "escalation", "failed") == 1


async def test_prompts_stay_on_chat_while_escalations_only_page(mocked: respx.MockRouter) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    chat = RecordingChat()
    metrics = WatchdogMetrics()
    pager = PagerDutyPager(SecretStr(ROUTING_KEY), PD_URL, timeout=2)
    routed = RoutedNotifier(chat, "slack", pagers=[pager], escalate_to_chat=False, metrics=metrics)
    assert (await routed.approval_requested(PROMPT)).ok
    escalated = await routed.escalated(ESCALATION)
    assert chat.sent == ["prompt"]
    assert escalated.ok and escalated.status == 202 and len(route.calls) == 1
    assert _count(metrics, "slack", "prompt", "ok") == 1
    assert _count(metrics, "pagerduty", "escalation", "ok") == 1


# -- settings -------------------------------------------------------------------------------------------


def test_a_paging_target_without_its_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="escalation_targets has pagerduty but no pagerduty_routing_key"):
        load_settings(escalation_targets=["chat", "pagerduty"])
    with pytest.raises(ConfigError, match="escalation_targets"):
        load_settings(escalation_targets=["sms"])


def test_paging_keys_come_from_secret_files_and_never_show_in_reprs(tmp_path: Path) -> None:
    (tmp_path / "pd").write_text(ROUTING_KEY + "\n", encoding="utf-8")
    (tmp_path / "og").write_text(GENIE_KEY, encoding="utf-8")
    settings = load_settings(
        escalation_targets=["pagerduty", "opsgenie"],
        pagerduty_routing_key_file=tmp_path / "pd",
        opsgenie_api_key_file=tmp_path / "og",
    )
    assert settings.pagerduty_routing_key is not None
    assert settings.pagerduty_routing_key.get_secret_value() == ROUTING_KEY
    assert ROUTING_KEY not in repr(settings) and GENIE_KEY not in repr(settings)
    routed = notifier_from_settings(settings)
    assert [pager.target for pager in routed.pagers] == ["pagerduty", "opsgenie"]
    assert not routed.escalate_to_chat and routed.chat_target == "none"


# -- through the real watchdog: escalate, then the alert resolves ---------------------------------------


@pytest.fixture
async def paging_watchdog(
    _no_pending_tasks: None,
    database_url: str,
    diagnose_fn: ScriptedDiagnose,
    remediate_fn: RecordingRemediate,
) -> AsyncIterator[Watchdog]:
    settings = WatchdogSettings(
        database_url=database_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        orchestrator_timeout_seconds=1.0,
        escalation_targets=["pagerduty"],
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_url=PD_URL,
    )
    wd = await build_watchdog(settings, diagnose=diagnose_fn, on_diagnosed=remediate_fn)
    try:
        yield wd
    finally:
        await wd.aclose()


async def test_an_escalated_incident_pages_and_its_resolved_alert_resolves_the_page(
    mocked: respx.MockRouter, paging_watchdog: Watchdog
) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    client = TestClient(TestServer(create_app(paging_watchdog), host="127.0.0.1"))
    await client.start_server()
    try:
        opened = await client.post("/api/v1/alerts", json=payload(alert()), headers=AUTH)
        [outcome] = (await opened.json())["alerts"]
        await asyncio.wait_for(paging_watchdog.jobs.wait_idle(), 10)
        closing = paging_watchdog.remediation.closing
        escalated = await closing.escalate(outcome["incident_id"], "on-call must look")
        assert escalated.status == "escalated"
        resolved = await client.post(
            "/api/v1/alerts", json=payload(alert(status="resolved"), status="resolved"), headers=AUTH
        )
        assert [a["outcome"] for a in (await resolved.json())["alerts"]] == ["escalated"]
        await asyncio.wait_for(paging_watchdog.jobs.wait_idle(), 10)
    finally:
        await client.close()
    actions = [_sent(route, i)["event_action"] for i in range(len(route.calls))]
    keys = {_sent(route, i)["dedup_key"] for i in range(len(route.calls))}
    assert actions == ["trigger", "resolve"]
    assert keys == {dedup_key(outcome["incident_id"], "exec-1")}
    detail = await paging_watchdog.incidents.detail(outcome["incident_id"])
    audit = [(entry.kind, entry.phase, entry.data.get("ok")) for entry in detail.audit]
    assert ("escalation_notified", "after", True) in audit
    assert ("page_resolved", "after", True) in audit
    metrics = paging_watchdog.metrics
    assert _count(metrics, "pagerduty", "escalation", "ok") == 1
    assert _count(metrics, "pagerduty", "resolve", "ok") == 1


async def test_a_page_that_cannot_be_resolved_is_audited_and_counted(
    mocked: respx.MockRouter, paging_watchdog: Watchdog
) -> None:
    mocked.post(PD_URL).mock(
        side_effect=[httpx.Response(202, json={"status": "success"}), httpx.Response(500, text="oops")]
    )
    opened = await paging_watchdog.incidents.open_or_join(
        "exec-9", dag_id="d", source="sweep", detection_source="api"
    )
    await paging_watchdog.remediation.closing.escalate(opened.incident.id, "on-call must look")
    resolver = PageResolver(paging_watchdog.incidents, _routed(paging_watchdog), paging_watchdog.jobs)
    result = await resolver.resolve(opened.incident.id)
    assert result is not None and not result.ok and "PagerDuty resolve answered 500: oops" in result.detail
    detail = await paging_watchdog.incidents.detail(opened.incident.id)
    [after] = [e for e in detail.audit if e.kind == "page_resolved" and e.phase == "after"]
    assert after.data["ok"] is False
    assert _count(paging_watchdog.metrics, "pagerduty", "resolve", "failed") == 1


async def test_an_incident_not_escalated_has_no_page_to_resolve(
    mocked: respx.MockRouter, paging_watchdog: Watchdog
) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    opened = await paging_watchdog.incidents.open_or_join(
        "exec-8", dag_id="d", source="sweep", detection_source="api"
    )
    resolver = PageResolver(paging_watchdog.incidents, _routed(paging_watchdog), paging_watchdog.jobs)
    assert await resolver.resolve(opened.incident.id) is None
    assert not route.calls


# -- the pages of a run follow its incidents, whatever opened them --------------------------------------


class PagedRun:
    """A sweep-found incident escalated with a PagerDuty page, on the real store and remediation."""

    def __init__(
        self, store: WatchdogStore, clock: FakeClock, mode: Mode = Mode.AUTO, **routing: Any
    ) -> None:
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

    async def escalated(self, execution_id: str) -> int:
        opened = await self.incidents.open_or_join(
            execution_id, dag_id="d", source="sweep", detection_source="api"
        )
        outcome = await self.remediation.closing.escalate(opened.incident.id, "no playbook fits")
        assert outcome.status == "escalated"
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
    sent = [_sent(route, i) for i in range(len(route.calls))]
    assert [body["event_action"] for body in sent] == ["trigger", "acknowledge", "resolve"]
    assert {body["dedup_key"] for body in sent} == {dedup_key(escalated, "exec-s1")}
    # Events API v2: acknowledge and resolve carry the routing key and dedup key, no payload.
    assert all(set(body) == {"routing_key", "event_action", "dedup_key", "client"} for body in sent[1:])
    detail = await paged_run.incidents.detail(escalated)
    after = {(e.kind, e.data.get("ok")) for e in detail.audit if e.phase == "after"}
    assert ("page_acknowledged", True) in after and ("page_resolved", True) in after
    assert page_state(detail.audit) == "resolved"


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
    assert [_sent(route, i)["event_action"] for i in range(len(route.calls))] == ["trigger", "resolve"]


async def test_a_run_never_paged_has_nothing_to_acknowledge_or_resolve(
    mocked: respx.MockRouter, paged_run: PagedRun
) -> None:
    route = mocked.post(PD_URL).respond(202, json={"status": "success"})
    outcome = await paged_run.remediation.run_manual(paged_run.by_hand("exec-s4", "alice@example.com"))
    await asyncio.wait_for(paged_run.jobs.wait_idle(), 10)
    assert outcome.status == "resolved" and not route.calls


async def test_opsgenie_acknowledges_by_the_alias(mocked: respx.MockRouter) -> None:
    alias = quote(dedup_key(7, "exec-1"), safe="")
    route = mocked.post(f"{OG_URL}/v2/alerts/{alias}/acknowledge").respond(
        202, json={"result": "Request will be processed", "took": 0.1, "requestId": "r-1"}
    )
    taken = ResolvedMessage(incident_id=7, execution_id="exec-1", reason="alice took it")
    result = await OpsgeniePager(SecretStr(GENIE_KEY), OG_URL, timeout=2).acknowledge(taken)
    assert result.ok and result.status == 202
    request = route.calls[0].request
    assert request.url.params["identifierType"] == "alias"
    assert request.headers["Authorization"] == f"GenieKey {GENIE_KEY}"
    assert json.loads(request.content) == {"source": "gl-watchdog", "note": "alice took it"}


ORCH_URL = "http://orchestrator.test"


def _execution(execution_id: str, status: str) -> dict[str, Any]:
    return {"execution_id": execution_id, "dag_id": "d", "status": status}


async def test_the_sweep_resolves_the_page_of_a_run_that_ended_and_keeps_the_others(
    mocked: respx.MockRouter, paged_run: PagedRun
) -> None:
    pd = mocked.post(PD_URL).respond(202, json={"status": "success"})
    runs = f"{ORCH_URL}/api/v1/orchestrator/executions"
    mocked.get(f"{runs}/exec-done").respond(200, json=_execution("exec-done", "cancelled"))
    mocked.get(f"{runs}/exec-stuck").respond(200, json=_execution("exec-stuck", "running"))
    mocked.get(f"{runs}/exec-unknown").respond(503, json={"error": "unavailable", "detail": "db down"})
    done = await paged_run.escalated("exec-done")
    stuck = await paged_run.escalated("exec-stuck")
    await paged_run.escalated("exec-unknown")
    async with OrchestratorClient(ORCH_URL, timeout=2) as orchestrator:
        [result] = await paged_run.pages.resolve_ended_runs(orchestrator)
        assert result.ok
        assert await paged_run.pages.resolve_ended_runs(orchestrator) == []  # resolved once only
    resolves = [_sent(pd, i) for i in range(len(pd.calls)) if _sent(pd, i)["event_action"] == "resolve"]
    assert [body["dedup_key"] for body in resolves] == [dedup_key(done, "exec-done")]
    audit = (await paged_run.incidents.detail(done)).audit
    assert ("page_resolved", True) in [(e.kind, e.data.get("ok")) for e in audit if e.phase == "after"]
    assert page_state((await paged_run.incidents.detail(stuck)).audit) == "open"


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
        ruled = await run.incidents.open_or_join(
            "exec-r1", dag_id="d", source="sweep", detection_source="api"
        )
        plan = Plan(
            execution_id="exec-r1",
            likely_cause="agent_unresponsive",
            playbook="restart_agent",
            mode=Mode.RECOMMEND,
            rationale="the agent is not answering",
            rule="agent-down",
        )
        await run.incidents.update(ruled.incident.id, kind="planned", actor="watchdog", plan=plan)
        await run.remediation.closing.escalate(ruled.incident.id, "approval expired")
        assert [_sent(route, i)["event_action"] for i in range(len(route.calls))] == ["trigger"]
        assert run.chat.sent == []  # the rule's targets replace the default, chat included
        other = await run.escalated("exec-r2")  # no rule: the settings' escalation_targets (chat)
        assert run.chat.sent == ["escalation"] and len(route.calls) == 1
        assert await run.pages.resolve(other, "the run ended") is None  # it paged nobody
        assert "page_resolved" not in [entry.kind for entry in (await run.incidents.detail(other)).audit]
        assert (await run.pages.resolve(ruled.incident.id, "the run ended")) is not None
        assert _sent(route, 1)["event_action"] == "resolve"
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
        again = await run.incidents.open_or_join(
            "exec-a1", dag_id="d", source="manual", detection_source="api"
        )
        diagnosis = make_diagnosis("exec-a1", cause="agent_unresponsive")
        assert (
            await run.responder.handle_diagnosed(again.incident.id, diagnosis)
        ).status == "awaiting_approval"
        pending = await run.approvals.pending_of(again.incident.id)
        assert pending is not None
        approval = await run.approvals.decide(pending.id, Decision.APPROVE, actor="alice", authenticated=True)
        assert (await run.responder.on_decision(approval)).status == "resolved"
        await asyncio.wait_for(run.jobs.wait_idle(), 10)
        sent = [_sent(route, i) for i in range(len(route.calls))]
        assert [body["event_action"] for body in sent] == ["trigger", "acknowledge", "resolve"]
        assert {body["dedup_key"] for body in sent} == {dedup_key(escalated, "exec-a1")}
    finally:
        await run.orchestrator.aclose()
        await store.close()


async def test_a_sweep_of_the_real_watchdog_resolves_the_page_of_an_ended_run(
    _no_pending_tasks: None, mocked: respx.MockRouter, database_url: str
) -> None:
    pd = mocked.post(PD_URL).respond(202, json={"status": "success"})
    runs = f"{ORCH_URL}/api/v1/orchestrator/executions"
    mocked.get(runs).respond(200, json={"items": [], "next_cursor": None, "total": 0})
    mocked.get(f"{runs}/exec-ended").respond(200, json=_execution("exec-ended", "failed"))
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
    assert [_sent(pd, i)["event_action"] for i in range(len(pd.calls))] == ["trigger", "resolve"]
