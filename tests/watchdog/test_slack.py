"""Slack that acts and updates, on the real app (SQLite and PostgreSQL) with Slack's Web API faked by
an aiohttp server on loopback that checks each request against Slack's documented shapes
(`tests.watchdog.slack_fake`): the alert's links reach the bot's prompt (chat.postMessage), a signed
block_actions click approves as the mapped Slack user, the message is updated through approved →
resolved (chat.update), and unsigned, wrong, stale or replayed requests are refused with 401. A
click's `response_url` (https://hooks.slack.com only) is faked with respx."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
import respx
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN, FakeClock, ScriptedDiagnose, make_diagnosis
from tests.watchdog.identity_app import IdentityApp
from tests.watchdog.recording_playbook import POLICY, RecordingPlaybook
from tests.watchdog.slack_fake import FakeSlack, SlackCall
from tests.watchdog.waits import Waits
from tests.watchdog.webhook import alert, payload
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.policy import parse_policy
from watchdog.rate_limit import RATE_LIMIT_RETRIES, RATE_LIMIT_WAIT_SECONDS
from watchdog.settings import WatchdogSettings
from watchdog.slack import WHAT_COUNTS, SlackRefused, SlackSignature
from watchdog.slack_bot import SlackApi
from watchdog_sdk.registry import Registry

SECRET = "slack-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-test-bot-token"
CHANNEL = "C0WATCHDOG"
TS = "1772366400.000100"
RESPONSE_URL = "https://hooks.slack.com/actions/T0/1/abc"
RUNBOOK = "https://runbooks.example.com/stuck-run"
GENERATOR = "https://prometheus.example.com/graph?g0.expr=up"


@dataclass
class SlackApp:
    wd: Watchdog
    client: TestClient[Any, Any]
    slack: FakeSlack
    hooks: respx.MockRouter  # a click's response_url
    clock: FakeClock

    def sign(self, body: bytes, *, at: int | None = None, secret: str = SECRET) -> dict[str, str]:
        timestamp = str(int(self.clock.now().timestamp()) if at is None else at)
        digest = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
        return {
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded",
        }

    async def click(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        response = await self.client.post("/api/v1/slack/interactions", data=body, headers=headers)
        return response.status, await response.json()

    def calls(self, method: str) -> list[SlackCall]:
        return self.slack.sent(method)


def click_body(
    approval_id: str, action: str = "approve", user: str = "U0ALICE", name: str = "alice"
) -> bytes:
    """A block_actions payload as Slack posts it (form-encoded `payload` JSON)."""
    interaction = {
        "type": "block_actions",
        "user": {"id": user, "username": name, "team_id": "T0"},
        "channel": {"id": CHANNEL},
        "message": {"ts": TS},
        "response_url": RESPONSE_URL,
        "actions": [{"action_id": action, "block_id": "b", "value": approval_id, "type": "button"}],
    }
    return urlencode({"payload": json.dumps(interaction)}).encode()


@contextlib.asynccontextmanager
async def serving(database_url: str, approval: dict[str, Any] | None = None) -> AsyncIterator[SlackApp]:
    """The app with the bot configured; restart_agent needs approval (under `approval`'s rule)."""
    clock = FakeClock()
    slack = FakeSlack(BOT_TOKEN, frozenset({CHANNEL}))
    await slack.start()
    restart = {"risk": "medium", "requires_approval": True, **({"approval": approval} if approval else {})}
    policy = {**POLICY, "playbooks": {"restart_agent": restart}}
    settings = WatchdogSettings(
        database_url=database_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        orchestrator_timeout_seconds=0.5,
        approval_signing_key="k" * 32,
        public_url="https://watchdog.example.com",
        grafana_url="https://grafana.example.com/d/runs",
        trace_url_template="https://tempo.example.com/search?execution={execution_id}",
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SECRET,
        slack_channel=CHANNEL,
        slack_api_url=slack.api_url,
        slack_role_map={"U0ALICE": "approver"},
        notifier_timeout_seconds=2,
    )
    wd = await build_watchdog(
        settings,
        clock=clock,
        diagnose=ScriptedDiagnose(),
        respond=False,
        policy=parse_policy(policy),
        registry=Registry([RecordingPlaybook()]),
    )
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(wd), host="127.0.0.1"))
    await client.start_server()
    with respx.mock(assert_all_called=False) as hooks:
        hooks.route(host="127.0.0.1").pass_through()  # the fake Slack API
        hooks.post(RESPONSE_URL).respond(200, text="ok")
        try:
            yield SlackApp(wd, client, slack, hooks, clock)
        finally:
            await client.close()
            await wd.aclose(grace_seconds=2)
            await slack.close()


@pytest.fixture
async def slack_app(_no_pending_tasks: None, database_url: str) -> AsyncIterator[SlackApp]:
    async with serving(database_url) as app:
        yield app


async def prompted(app: SlackApp) -> str:
    """An alert with a runbook and a source opens an incident; its diagnosis asks for approval, which
    the bot posts. The approval's id."""
    sent = alert("exec-slack", fingerprint="fp-slack")
    sent["annotations"] = {"runbook_url": RUNBOOK, "summary": "exec-slack is stuck", "description": "over 1h"}
    sent["generatorURL"] = GENERATOR
    answer = await app.client.post(
        "/api/v1/alerts", json=payload(sent), headers={"Authorization": f"Bearer {WATCHDOG_TOKEN}"}
    )
    [outcome] = (await answer.json())["alerts"]
    await app.wd.jobs.wait_idle()
    diagnosis = make_diagnosis("exec-slack", cause="agent_unresponsive")
    result = await app.wd.responder.handle_diagnosed(outcome["incident_id"], diagnosis)
    assert result.status == "awaiting_approval", result
    pending = await app.wd.approvals.pending_of(outcome["incident_id"])
    assert pending is not None
    return pending.id


async def test_the_bot_posts_the_prompt_with_interactive_buttons_and_the_alerts_links(
    slack_app: SlackApp,
) -> None:
    approval_id = await prompted(slack_app)
    [posted] = slack_app.calls("chat.postMessage")
    assert posted.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    assert posted.headers["Content-Type"].startswith("application/json")
    assert slack_app.slack.refusals == []
    body = posted.body
    assert body["channel"] == CHANNEL and "approval needed for incident" in body["text"]
    buttons = body["blocks"][-1]["elements"]
    assert [(b["action_id"], b["value"], "url" in b) for b in buttons] == [
        ("approve", approval_id, False),
        ("deny", approval_id, False),
    ]
    [context] = [block for block in body["blocks"] if block["type"] == "context"]
    links = context["elements"][0]["text"]
    assert f"<{RUNBOOK}|Runbook>" in links and "exec-slack is stuck" in links
    assert "<https://grafana.example.com/d/runs?var-execution_id=exec-slack&amp;" in links
    assert "<https://tempo.example.com/search?execution=exec-slack|Trace>" in links
    assert f"<{GENERATOR.replace('&', '&amp;')}|Alert source>" in links
    stored = await slack_app.wd.approvals.get(approval_id)
    assert (stored.slack_channel, stored.slack_ts) == (CHANNEL, TS)


async def test_a_signed_click_approves_as_the_slack_user_and_the_message_follows_to_resolved(
    slack_app: SlackApp,
) -> None:
    approval_id = await prompted(slack_app)
    body = click_body(approval_id)
    status, answer = await slack_app.click(body, slack_app.sign(body))
    assert (status, answer["ok"], answer["state"]) == (200, True, "approved")
    await slack_app.wd.jobs.wait_idle()
    approval = await slack_app.wd.approvals.get(approval_id)
    assert approval.decided_by == "slack:U0ALICE"
    async with slack_app.wd.store.read() as tx:
        audit = await tx.list_audit(approval.incident_id)
    decided = [(e.actor, e.data["reason"]) for e in audit if e.kind == "approval_decided"]
    assert decided == [("slack:U0ALICE", "clicked in Slack by @alice")]
    updates = [call.body for call in slack_app.calls("chat.update")]
    assert slack_app.slack.refusals == []  # every update named a message the bot had posted
    assert [(u["channel"], u["ts"]) for u in updates] == [(CHANNEL, TS), (CHANNEL, TS)]
    headers = [u["blocks"][0]["text"]["text"] for u in updates]
    assert headers[0].startswith("Approved: incident") and headers[1].startswith("Resolved: incident")
    assert "approved by slack:U0ALICE; acting" in updates[0]["text"]
    assert all(block["type"] != "actions" for u in updates for block in u["blocks"])  # nothing left to click
    assert [e.data["state"] for e in audit if e.kind == "prompt_updated"] == ["Approved", "Resolved"]


async def test_an_unmapped_slack_user_is_told_and_decides_nothing(slack_app: SlackApp) -> None:
    approval_id = await prompted(slack_app)
    body = click_body(approval_id, user="U0MALLORY", name="U0ALICE")  # a username is no credential
    status, answer = await slack_app.click(body, slack_app.sign(body))
    assert (status, answer["ok"]) == (200, False)
    assert "slack:U0MALLORY may not approve: role viewer" in answer["detail"]
    assert answer["detail"].endswith(WHAT_COUNTS)  # and what would let them
    [told] = [call.request for call in slack_app.hooks.calls if str(call.request.url) == RESPONSE_URL]
    assert json.loads(told.content)["response_type"] == "ephemeral"
    assert (await slack_app.wd.approvals.get(approval_id)).state == "pending"


@pytest.mark.parametrize(
    "tamper",
    ["unsigned", "wrong_secret", "altered_body", "stale"],
)
async def test_a_request_without_slacks_valid_signature_is_refused(slack_app: SlackApp, tamper: str) -> None:
    approval_id = await prompted(slack_app)
    body = click_body(approval_id)
    now = int(slack_app.clock.now().timestamp())
    headers = {
        "unsigned": {"Content-Type": "application/x-www-form-urlencoded"},
        "wrong_secret": slack_app.sign(body, secret="not-the-secret"),
        "altered_body": slack_app.sign(click_body(approval_id, action="deny")),
        "stale": slack_app.sign(body, at=now - 301),
    }[tamper]
    status, answer = await slack_app.click(body, headers)
    assert status == 401 and answer["error"] == "unauthorized"
    assert (await slack_app.wd.approvals.get(approval_id)).state == "pending"


async def test_a_replayed_click_is_refused(slack_app: SlackApp) -> None:
    approval_id = await prompted(slack_app)
    body = click_body(approval_id, action="deny")
    headers = slack_app.sign(body)
    first, _ = await slack_app.click(body, headers)
    again, answer = await slack_app.click(body, headers)
    assert (first, again) == (200, 401)
    assert "replay" in answer["detail"]


def test_signature_check_names_each_refusal() -> None:
    clock = FakeClock()
    check = SlackSignature(SECRET, clock)
    now = str(int(clock.now().timestamp()))
    body = b"payload=%7B%7D"
    check.verify(now, check.sign(now, body), body)
    refusals = {
        "missing_signature": (now, None, body),
        "malformed_signature": ("soon", "v0=00", body),
        "stale_signature": (str(int(now) + 301), check.sign(str(int(now) + 301), body), body),
        "invalid_signature": (now, check.sign(now, body + b"x"), body),
        "replayed_signature": (now, check.sign(now, body), body),
    }
    for reason, (timestamp, signature, sent) in refusals.items():
        with pytest.raises(SlackRefused) as refused:
            check.verify(timestamp, signature, sent)
        assert refused.value.reason == reason


async def test_an_expired_prompt_is_escalated_and_its_message_says_so(slack_app: SlackApp) -> None:
    approval_id = await prompted(slack_app)
    slack_app.clock.advance(slack_app.wd.settings.approval_ttl_seconds + 1)
    [outcome] = await slack_app.wd.responder.expire_approvals()
    assert outcome.status == "escalated"
    posted = [call.body for call in slack_app.calls("chat.postMessage")]
    assert posted[-1]["blocks"][0]["text"]["text"].startswith("Escalated: incident")
    [update] = [call.body for call in slack_app.calls("chat.update")]
    assert update["blocks"][0]["text"]["text"].startswith("Escalated: incident")
    assert f"approval {approval_id} expired" in update["text"]


async def test_a_failed_update_is_audited_and_counted(slack_app: SlackApp) -> None:
    approval_id = await prompted(slack_app)
    slack_app.slack.fail_next["chat.update"] = "message_not_found"
    body = click_body(approval_id, action="deny")
    status, _ = await slack_app.click(body, slack_app.sign(body))
    await slack_app.wd.jobs.wait_idle()
    assert status == 200
    incident_id = (await slack_app.wd.approvals.get(approval_id)).incident_id
    async with slack_app.wd.store.read() as tx:
        audit = await tx.list_audit(incident_id)
    notified = [e.data for e in audit if e.kind == "escalation_notified" and e.phase == "after"]
    assert notified and notified[-1]["ok"] is False
    assert "Slack chat.update answered 200: message_not_found" in notified[-1]["detail"]
    labels = {"target": "slack_bot", "kind": "update", "result": "failed"}
    assert slack_app.wd.metrics.registry.get_sample_value("gl_watchdog_notifications_total", labels) == 1


async def test_an_update_rate_limited_past_its_retries_is_audited_and_counted_once(
    slack_app: SlackApp,
) -> None:
    approval_id = await prompted(slack_app)
    slack_app.slack.rate_limit("chat.update", 10, retry_after="0")
    body = click_body(approval_id, action="deny")
    status, _ = await slack_app.click(body, slack_app.sign(body))
    await slack_app.wd.jobs.wait_idle()
    assert status == 200 and len(slack_app.calls("chat.update")) == 1 + RATE_LIMIT_RETRIES
    incident_id = (await slack_app.wd.approvals.get(approval_id)).incident_id
    async with slack_app.wd.store.read() as tx:
        audit = await tx.list_audit(incident_id)
    notified = [e.data for e in audit if e.kind == "escalation_notified" and e.phase == "after"]
    assert notified[-1]["ok"] is False
    assert (
        "Slack chat.update answered 429: ratelimited (rate limited; tried 3 times)" in notified[-1]["detail"]
    )
    labels = {"target": "slack_bot", "kind": "update", "result": "failed"}
    assert slack_app.wd.metrics.registry.get_sample_value("gl_watchdog_notifications_total", labels) == 1


async def test_the_prompt_of_a_plan_under_a_two_person_rule_says_who_must_approve(
    _no_pending_tasks: None, database_url: str
) -> None:
    async with serving(database_url, approval={"approvers_required": 2, "role": "operator"}) as app:
        await prompted(app)
        [posted] = app.calls("chat.postMessage")
        needs = "Needs 2 distinct approvers of role operator or higher: a click counts for a user"
        assert needs in posted.body["text"]
        section = posted.body["blocks"][1]["text"]["text"]
        assert (
            "*Needs* 2 distinct approvers of role operator or higher: a click counts for a user " in section
        )
        assert "`slack_default_role`) gives operator or higher (<https://watchdog.example.com/" in section


async def test_a_prompt_without_an_approval_rule_says_nothing_of_one(slack_app: SlackApp) -> None:
    await prompted(slack_app)
    [posted] = slack_app.calls("chat.postMessage")
    assert "Needs" not in posted.body["text"] and "*Needs*" not in posted.body["blocks"][1]["text"]["text"]


async def test_a_click_the_rules_group_refuses_tells_what_a_slack_click_lacks(
    _no_pending_tasks: None, database_url: str
) -> None:
    async with serving(database_url, approval={"groups": ["sre"]}) as app:
        approval_id = await prompted(app)
        [posted] = app.calls("chat.postMessage")
        assert (
            "*Needs* an approver of role approver or higher in sre: Slack user groups are not read"
            in (posted.body["blocks"][1]["text"]["text"])
        )
        body = click_body(approval_id)
        status, answer = await app.click(body, app.sign(body))
        assert (status, answer["ok"]) == (200, False)
        assert answer["detail"].startswith("slack:U0ALICE is not in sre: a member is needed")
        assert answer["detail"].endswith(WHAT_COUNTS)
        [told] = [call.request for call in app.hooks.calls if str(call.request.url) == RESPONSE_URL]
        assert WHAT_COUNTS in json.loads(told.content)["text"]
        assert (await app.wd.approvals.get(approval_id)).state == "pending"


async def test_a_first_vote_of_two_keeps_the_prompt_open_and_the_message_says_so(
    _no_pending_tasks: None, database_url: str
) -> None:
    async with serving(database_url, approval={"approvers_required": 2}) as app:
        approval_id = await prompted(app)
        body = click_body(approval_id)
        status, answer = await app.click(body, app.sign(body))
        await app.wd.jobs.wait_idle()
        assert (status, answer["state"]) == (200, "pending")
        incident = await app.wd.incidents.get((await app.wd.approvals.get(approval_id)).incident_id)
        assert incident.status == "awaiting_approval"  # a vote escalates nothing
        [update] = [call.body for call in app.calls("chat.update")]
        assert update["blocks"][0]["text"]["text"].startswith("Awaiting a second approver")
        assert "approved so far by slack:U0ALICE" in update["text"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "names"),
    [
        (b"payload=not-json", "application/x-www-form-urlencoded", 400, "JSON `payload`"),
        (b"other=1", "application/x-www-form-urlencoded", 400, "JSON `payload`"),
        (urlencode({"payload": '{"type": "view_submission"}'}).encode(), None, 400, "only block_actions"),
        (click_body("apr_x", action="explode"), None, 400, "'explode' is not approve or deny"),
        (b'{"payload": {}}', "application/json", 415, "Content-Type must be"),
    ],
)
async def test_a_signed_but_malformed_interaction_is_a_4xx_naming_the_problem(
    slack_app: SlackApp, body: bytes, content_type: str | None, status: int, names: str
) -> None:
    headers = slack_app.sign(body)
    if content_type is not None:
        headers["Content-Type"] = content_type
    answered, answer = await slack_app.click(body, headers)
    assert answered == status and names in answer["detail"]


async def test_without_a_signing_secret_the_route_says_slack_is_not_configured(
    identity_app: IdentityApp,
) -> None:
    async with identity_app.client(None) as anonymous:
        answer = await anonymous.post("/api/v1/slack/interactions", content=click_body("apr_x"))
    assert answer.status_code == 404 and "slack_signing_secret" in answer.json()["detail"]


async def test_a_prompt_whose_alert_resolves_first_says_resolved(slack_app: SlackApp) -> None:
    approval_id = await prompted(slack_app)
    resolved = alert("exec-slack", fingerprint="fp-slack", status="resolved")
    answer = await slack_app.client.post(
        "/api/v1/alerts",
        json=payload(resolved, status="resolved"),
        headers={"Authorization": f"Bearer {WATCHDOG_TOKEN}"},
    )
    assert [a["outcome"] for a in (await answer.json())["alerts"]] == ["closed"]
    await slack_app.wd.jobs.wait_idle()
    assert (await slack_app.wd.approvals.get(approval_id)).state == "expired"
    [update] = [call.body for call in slack_app.calls("chat.update")]
    assert update["blocks"][0]["text"]["text"].startswith("Resolved: incident")
    assert "the alert resolved before anything acted" in update["text"]


async def test_the_fake_slack_refuses_what_slack_would_and_the_bot_reports_slacks_error() -> None:
    slack = FakeSlack(BOT_TOKEN, frozenset({CHANNEL}))
    await slack.start()
    try:
        good, wrong = (
            SlackApi(BOT_TOKEN, slack.api_url, timeout=2),
            SlackApi("xoxb-other", slack.api_url, timeout=2),
        )
        message = {"channel": CHANNEL, "text": "hello"}
        cases = [
            (wrong, "chat.postMessage", message, "invalid_auth"),
            (good, "chat.postMessage", {"channel": "C0ELSEWHERE", "text": "hello"}, "channel_not_found"),
            (good, "chat.postMessage", {"channel": CHANNEL}, "no_text"),
            (good, "chat.postMessage", {**message, "blocks": [{"type": "banner"}]}, "invalid_blocks"),
            (good, "chat.update", {**message, "ts": "1.000001"}, "message_not_found"),
        ]
        for api, method, body, error in cases:
            result, _ = await api.call(method, body)
            assert not result.ok and error in result.detail, (method, error, result)
        posted, answer = await good.call("chat.postMessage", message)
        assert posted.ok and answer["ts"] == TS and answer["channel"] == CHANNEL
        updated, _ = await good.call("chat.update", {**message, "ts": TS, "text": "changed"})
        assert updated.ok and slack.messages[(CHANNEL, TS)]["text"] == "changed"
        assert slack.refusals == [error for *_, error in cases]
    finally:
        await slack.close()


# -- Slack's rate limit (HTTP 429 with Retry-After) ---------------------------------------------------


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    slack = FakeSlack(BOT_TOKEN, frozenset({CHANNEL}))
    await slack.start()
    try:
        yield slack
    finally:
        await slack.close()


MESSAGE = {"channel": CHANNEL, "text": "hello"}


@pytest.mark.parametrize(
    ("header", "waited"), [("3", 3.0), ("0.5", 0.5), (None, 1.0), ("soon", 1.0), ("-5", 0.0)]
)
async def test_a_rate_limited_call_is_sent_again_after_its_retry_after(
    fake_slack: FakeSlack, header: str | None, waited: float
) -> None:
    waits = Waits()
    api = SlackApi(BOT_TOKEN, fake_slack.api_url, timeout=2, sleep=waits)
    fake_slack.rate_limit("chat.postMessage", 1, retry_after=header)
    result, answer = await api.call("chat.postMessage", MESSAGE)
    assert result.ok and answer["ts"] == TS
    assert waits.seconds == [waited] and len(fake_slack.sent("chat.postMessage")) == 2


async def test_a_call_rate_limited_for_ever_fails_after_its_retries(fake_slack: FakeSlack) -> None:
    waits = Waits()
    api = SlackApi(BOT_TOKEN, fake_slack.api_url, timeout=2, sleep=waits)
    fake_slack.rate_limit("chat.postMessage", 1000, retry_after="2")
    result, answer = await api.call("chat.postMessage", MESSAGE)
    assert (result.ok, result.status, answer["error"]) == (False, 429, "ratelimited")
    assert result.detail == "Slack chat.postMessage answered 429: ratelimited (rate limited; tried 3 times)"
    assert waits.seconds == [2.0] * RATE_LIMIT_RETRIES
    assert len(fake_slack.sent("chat.postMessage")) == 1 + RATE_LIMIT_RETRIES


async def test_a_wait_past_the_allowed_total_is_not_begun(fake_slack: FakeSlack) -> None:
    waits = Waits()
    api = SlackApi(BOT_TOKEN, fake_slack.api_url, timeout=2, sleep=waits)
    fake_slack.rate_limit("chat.postMessage", 1, retry_after=str(RATE_LIMIT_WAIT_SECONDS + 1))
    once, _ = await api.call("chat.postMessage", MESSAGE)
    assert not once.ok and waits.seconds == [] and len(fake_slack.sent("chat.postMessage")) == 1
    assert once.detail.endswith("(rate limited; Retry-After 31s is past the 30s of waiting allowed)")
    fake_slack.rate_limit("chat.postMessage", 2, retry_after="20")  # 20 s, then 20 more would be 40
    twice, _ = await api.call("chat.postMessage", MESSAGE)
    assert not twice.ok and waits.seconds == [20.0] and len(fake_slack.sent("chat.postMessage")) == 3
