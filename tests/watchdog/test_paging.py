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
from urllib.parse import quote

import httpx
import pytest
import respx
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.conftest import free_port
from tests.watchdog.conftest import (
    WATCHDOG_TOKEN,
    RecordingRemediate,
    ScriptedDiagnose,
)
from tests.watchdog.messages import PROMPT
from tests.watchdog.paging_wire import (
    GENIE_KEY,
    OG_URL,
    PD_URL,
    ROUTING_KEY,
    RecordingChat,
    body_of,
    paging_wire,
)
from tests.watchdog.webhook import alert, payload
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import EscalationMessage
from watchdog.notify_router import (
    PageResolver,
    RoutedNotifier,
    notifier_from_settings,
)
from watchdog.paging import OpsgeniePager, PagerDutyPager, ResolvedMessage, dedup_key
from watchdog.settings import WatchdogSettings, load_settings
from watchdog_sdk.errors import ConfigError

ESCALATION = EscalationMessage(
    incident_id=7,
    execution_id="exec-1",
    reason="restart_agent applied but verification failed: node still stuck",
    diagnosis_summary="likely cause agent_unresponsive (agent calc)",
    plan_headline="run restart_agent(agent_id=calc) [risk medium]",
)
RESOLVED = ResolvedMessage(incident_id=7, execution_id="exec-1", reason="the alert resolved")
AUTH = {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}


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
    with paging_wire() as router:
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
    trigger, resolve = body_of(route, 0), body_of(route, 1)
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
    assert len(body_of(route)["payload"]["summary"]) == 1024


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
    body = body_of(create)
    assert body["alias"] == alias and body["priority"] == "P1" and body["entity"] == "exec-1"
    assert len(body["message"]) <= 130 and "incident 7" in body["message"]
    assert "verification failed" in body["description"]
    assert all(isinstance(value, str) for value in body["details"].values())
    assert close.calls[0].request.headers["Authorization"] == f"GenieKey {GENIE_KEY}"
    assert body_of(close) == {"source": "gl-watchdog", "note": "the alert resolved"}


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


async def test_opsgenie_unreachable_is_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await OpsgeniePager(SecretStr(GENIE_KEY), url, timeout=2).trigger(ESCALATION)
    assert not result.ok and result.detail.startswith("Opsgenie create unreachable")
    assert GENIE_KEY not in result.detail


# -- routing and counting ------------------------------------------------------------------------------


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
    actions = [body_of(route, i)["event_action"] for i in range(len(route.calls))]
    keys = {body_of(route, i)["dedup_key"] for i in range(len(route.calls))}
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
