"""The incident console over HTTP (real PostgreSQL): who may see it, the list's filters and pages, an
incident's page, the approval form (roles, Origin, the audit's name), live versions, static files."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from tests.conftest import POSTGRES_ADMIN_DSN
from tests.watchdog.console_stack import (
    GRAFANA,
    PROXY,
    Console,
    console_settings,
    running_console,
    signed_in,
)
from watchdog.console.signin import SignIn
from watchdog_sdk.errors import ConfigError
from watchdog_sdk.outcomes import Risk

LOCAL_APPROVER = {"console_local_mode": True, "console_local_user": "alice", "console_local_role": "approver"}


@pytest.fixture
async def console(_no_pending_tasks: None, postgres_url: str) -> AsyncIterator[Console]:
    """The console in local mode, signed in as alice, an approver."""
    async with running_console(console_settings(postgres_url, **LOCAL_APPROVER)) as served:
        yield served


@pytest.fixture
async def viewer_console(_no_pending_tasks: None, postgres_url: str) -> AsyncIterator[Console]:
    """The console in local mode with the default role: viewer."""
    async with running_console(console_settings(postgres_url, console_local_mode=True)) as served:
        yield served


async def test_without_a_signed_in_user_the_console_answers_401_and_shows_nothing(
    _no_pending_tasks: None, postgres_url: str
) -> None:
    async with running_console(console_settings(postgres_url)) as served:
        await served.incident("exec-secret")
        for path in (
            "/console/incidents",
            "/console/incidents/1",
            "/console/incidents/1/version",
            "/console/incidents/1/events",
        ):
            answer = await served.http.get(path)
            assert answer.status_code == 401, path
            assert "exec-secret" not in answer.text
        assert "signed in through the proxy" in (await served.http.get("/console/incidents")).text


async def test_the_console_root_leads_to_the_list(console: Console) -> None:
    answer = await console.http.get("/console/")
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/console/incidents"


async def test_the_list_shows_incidents_newest_first_with_who_is_signed_in(console: Console) -> None:
    first, _ = await console.incident("exec-a")
    second, _ = await console.incident("exec-b", cause="stuck_lock")
    answer = await console.http.get("/console/incidents")
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    page = answer.text
    assert page.index(f"Incident {second.id}") < page.index(f"Incident {first.id}")
    assert "stuck_lock" in page and "2 incidents match" in page
    assert "Signed in as <strong>alice</strong> (approver, via local)" in page


async def test_the_list_filters_by_status_dag_cause_and_time(console: Console) -> None:
    await console.incident("exec-a", dag_id="dag-a")
    await console.incident("exec-b", dag_id="dag-b", cause="stuck_lock")
    settled, _ = await console.incident("exec-c", dag_id="dag-b", prompt=False)
    await console.wd.incidents.transition(settled.id, "escalated", actor="test", reason="test")

    async def shown(query: str) -> set[str]:
        answer = await console.http.get(f"/console/incidents?{query}")
        assert answer.status_code == 200, answer.text
        return {e for e in ("exec-a", "exec-b", "exec-c") if f"<code>{e}</code>" in answer.text}

    assert await shown("dag_id=dag-b") == {"exec-b", "exec-c"}
    assert await shown("cause=stuck_lock") == {"exec-b"}
    assert await shown("status=escalated") == {"exec-c"}
    assert await shown("status=live&dag_id=dag-b") == {"exec-b"}
    # the form sends every field, empty ones too, and datetime-local values without an offset (UTC)
    everything = {"exec-a", "exec-b", "exec-c"}
    assert await shown("status=&dag_id=&cause=&opened_after=&opened_before=") == everything
    assert await shown("opened_after=2000-01-01T00:00&opened_before=2000-01-02T00:00") == set()
    assert await shown("opened_after=2000-01-01T00:00") == everything


async def test_the_list_pages_with_a_cursor_bound_to_its_filters(console: Console) -> None:
    for n in range(5):
        await console.incident(f"exec-{n}")
    seen: list[str] = []
    url: str | None = "/console/incidents?limit=2&dag_id=dag-1"
    while url is not None:
        answer = await console.http.get(url)
        assert answer.status_code == 200
        assert "5 incidents match" in answer.text
        seen += sorted(
            (f"exec-{n}" for n in range(5) if f"<code>exec-{n}</code>" in answer.text),
            key=lambda execution: answer.text.index(f"<code>{execution}</code>"),
        )
        url = _next_page(answer.text)
    assert seen == [f"exec-{n}" for n in reversed(range(5))]
    second = _next_page((await console.http.get("/console/incidents?limit=2&dag_id=dag-1")).text)
    assert second is not None
    cursor = parse_qs(urlsplit(second).query)["cursor"][0]
    other = await console.http.get("/console/incidents", params={"limit": "2", "cursor": cursor})
    assert other.status_code == 400
    assert "cursor: not a cursor of this listing" in other.text


def _next_page(page: str) -> str | None:
    marker = 'id="next-page" rel="next" href="'
    if marker not in page:
        return None
    return page.split(marker, 1)[1].split('"', 1)[0].replace("&amp;", "&")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=sleeping", "status"),
        ("limit=0", "limit"),
        ("opened_after=yesterday", "opened_after"),
        ("cause=Not%20A%20Cause", "cause"),
        ("dag_id=a&dag_id=b", "dag_id"),
        ("colour=red", "colour"),
    ],
)
async def test_a_bad_filter_answers_400_naming_the_field(console: Console, query: str, field: str) -> None:
    answer = await console.http.get(f"/console/incidents?{query}")
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("text/html")
    assert f"{field}: " in answer.text


async def test_the_incident_page_shows_diagnosis_plan_dry_run_timeline_and_links(console: Console) -> None:
    incident, approval = await console.incident("exec-page")
    assert approval is not None
    page = (await console.http.get(f"/console/incidents/{incident.id}")).text
    assert '<html lang="en">' in page
    for step in (1, 2, 3):
        assert f'id="step-{step}"' in page
    assert "stuck-node on builtin.hang over its timeout" in page  # step 3's summary
    assert "<dt>agent_id</dt><dd><code>builtin.hang</code></dd>" in page  # and its evidence
    assert "node stuck-node (agent builtin.hang) has run past its timeout" in page
    assert "restart the in-process agent worker" in page  # the dry run
    assert 'id="approval-progress">0 of 1' in page
    assert 'id="approve"' in page and 'name="approval_id" value="' + approval.id in page
    assert "approval_requested" in page and "diagnosed" in page  # the timeline
    assert "https://orchestrator.example.com/api/v1/orchestrator/executions/exec-page/trace" in page
    assert "https://orchestrator.example.com/api/v1/orchestrator/executions/exec-page/provenance" in page
    assert "https://runbooks.greenlang.io/orchestrator/dag-execution-stuck" in page
    grafana = page.split('id="grafana-link">', 1)[0].rsplit('href="', 1)[1].split('"', 1)[0]
    assert grafana.startswith(GRAFANA + "?")
    variables = parse_qs(urlsplit(grafana.replace("&amp;", "&")).query)
    assert variables["var-execution_id"] == ["exec-page"] and variables["var-dag_id"] == ["dag-1"]
    assert int(variables["from"][0]) == int(incident.opened_at.timestamp() * 1000) - 15 * 60 * 1000
    assert "<script>" not in page and "style=" not in page  # the CSP forbids inline script and style


async def test_the_incident_page_escapes_what_it_shows(console: Console) -> None:
    incident, _ = await console.incident("exec-x")
    await console.wd.incidents.record(incident.id, "note", actor="<script>alert(1)</script>")
    page = (await console.http.get(f"/console/incidents/{incident.id}")).text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize(
    ("path", "status"), [("/console/incidents/999", 404), ("/console/incidents/abc", 400)]
)
async def test_an_unknown_or_malformed_incident_id_answers_a_page_saying_so(
    console: Console, path: str, status: int
) -> None:
    answer = await console.http.get(path)
    assert answer.status_code == status
    assert answer.headers["Content-Type"].startswith("text/html")
    expected = "no incident 999" if status == 404 else "incident_id: 'abc' is not an incident id"
    assert expected in html.unescape(answer.text)


async def test_an_approver_approves_and_the_audit_names_them(console: Console) -> None:
    incident, approval = await console.incident("exec-ok")
    assert approval is not None
    path = f"/console/incidents/{incident.id}"
    before = (await console.http.get(f"{path}/version")).json()
    answer = await console.form(f"{path}/decision", {"approval_id": approval.id, "decision": "approve"})
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"{path}?notice=approved"
    decided = await console.wd.approvals.get(approval.id)
    assert (decided.state, decided.decided_by) in {("approved", "local:alice"), ("used", "local:alice")}
    audit = (await console.wd.incidents.detail(incident.id)).audit
    assert any(e.kind == "approval_decided" and e.actor == "local:alice" for e in audit)
    after = (await console.http.get(f"{path}/version")).json()
    assert after["version"] != before["version"]
    await console.wd.jobs.wait_idle()
    page = (await console.http.get(f"{path}?notice=approved")).text
    assert "Your approval is recorded." in page and "local:alice" in page


async def test_a_second_decision_on_a_settled_prompt_changes_nothing(console: Console) -> None:
    incident, approval = await console.incident("exec-twice")
    assert approval is not None
    path = f"/console/incidents/{incident.id}/decision"
    await console.form(path, {"approval_id": approval.id, "decision": "deny"})
    again = await console.form(path, {"approval_id": approval.id, "decision": "approve"})
    assert again.headers["Location"].endswith("?notice=closed")
    assert (await console.wd.approvals.get(approval.id)).state == "denied"
    await console.wd.jobs.wait_idle()


async def test_a_viewer_is_refused_the_decision_with_the_role_needed(viewer_console: Console) -> None:
    incident, approval = await viewer_console.incident("exec-view")
    assert approval is not None
    page = (await viewer_console.http.get(f"/console/incidents/{incident.id}")).text
    assert 'id="approve"' not in page
    assert "Role viewer cannot approve: approver or higher needed" in page
    answer = await viewer_console.form(
        f"/console/incidents/{incident.id}/decision", {"approval_id": approval.id, "decision": "approve"}
    )
    assert answer.status_code == 403
    assert "role viewer cannot approve: approver or higher needed" in answer.text
    assert (await viewer_console.wd.approvals.get(approval.id)).state == "pending"


@pytest.mark.parametrize("origin", ["https://evil.example.com", None])
async def test_a_form_post_from_another_origin_or_none_is_refused(
    console: Console, origin: str | None
) -> None:
    incident, approval = await console.incident("exec-csrf")
    assert approval is not None
    answer = await console.form(
        f"/console/incidents/{incident.id}/decision",
        {"approval_id": approval.id, "decision": "approve"},
        origin=origin,
    )
    assert answer.status_code == 403
    said = html.unescape(answer.text)
    assert "from another site is refused" in said or "must be sent from the console's own page" in said
    assert (await console.wd.approvals.get(approval.id)).state == "pending"


async def test_a_decision_for_another_incidents_prompt_is_refused(console: Console) -> None:
    first, _ = await console.incident("exec-1")
    _, other = await console.incident("exec-2")
    assert other is not None
    answer = await console.form(
        f"/console/incidents/{first.id}/decision", {"approval_id": other.id, "decision": "approve"}
    )
    assert answer.status_code == 404
    assert (await console.wd.approvals.get(other.id)).state == "pending"


@pytest.mark.parametrize(
    ("form", "problem"),
    [
        ({"approval_id": "x", "decision": "maybe"}, "decision: "),
        ({"decision": "approve"}, "approval_id: "),
    ],
)
async def test_a_bad_form_answers_400_naming_the_field(
    console: Console, form: dict[str, str], problem: str
) -> None:
    incident, _ = await console.incident("exec-form")
    answer = await console.form(f"/console/incidents/{incident.id}/decision", form)
    assert answer.status_code == 400
    assert problem in answer.text


async def test_the_version_says_whether_the_incident_is_live(console: Console) -> None:
    incident, _ = await console.incident("exec-live", prompt=False)
    path = f"/console/incidents/{incident.id}/version"
    live = (await console.http.get(path)).json()
    assert live["live"] is True
    await console.wd.incidents.transition(incident.id, "escalated", actor="test", reason="test")
    settled = (await console.http.get(path)).json()
    assert settled["live"] is False and settled["version"] != live["version"]


async def test_static_files_are_cached_under_a_digest_of_their_contents(console: Console) -> None:
    page = (await console.http.get("/console/incidents")).text
    href = page.split('rel="stylesheet" href="', 1)[1].split('"', 1)[0]
    assert href.startswith("/console/static/console.css?v=")
    answer = await console.http.get(href)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/css")
    assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert answer.headers["ETag"].strip('"') == href.rsplit("=", 1)[1]
    assert (await console.http.get("/console/static/..%2Fpages.py")).status_code == 404


async def test_the_console_is_not_served_when_disabled(_no_pending_tasks: None, postgres_url: str) -> None:
    async with running_console(console_settings(postgres_url, console_enabled=False)) as served:
        assert (await served.http.get("/console/incidents")).status_code == 404


async def test_without_its_database_the_console_answers_a_503_page(console: Console) -> None:
    name = console.wd.store.engine.url.database
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    answer = await console.http.get("/console/incidents")
    assert answer.status_code == 503
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "database does not answer" in html.unescape(answer.text)


# -- behind the authenticating proxy ------------------------------------------------------------------


@pytest.fixture
async def proxied(_no_pending_tasks: None, postgres_url: str) -> AsyncIterator[Console]:
    """The console behind a proxy on 127.0.0.1; the group oncall approves, everyone else views."""
    async with running_console(console_settings(postgres_url, **PROXY)) as served:
        yield served


async def test_behind_the_trusted_proxy_its_user_approves_under_their_name(proxied: Console) -> None:
    incident, approval = await proxied.incident("exec-proxy")
    assert approval is not None
    path = f"/console/incidents/{incident.id}"
    page = await proxied.http.get(path, headers=signed_in("alice"))
    assert "Signed in as <strong>alice@example.com</strong> (approver, via proxy)" in page.text
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    answer = await proxied.form(
        f"{path}/decision", {"approval_id": approval.id, "decision": "approve"}, headers=signed_in("alice")
    )
    assert answer.headers["Location"] == f"{path}?notice=approved"
    audit = (await proxied.wd.incidents.detail(incident.id)).audit
    assert any(e.kind == "approval_decided" and e.actor == "proxy:alice@example.com" for e in audit)
    await proxied.wd.jobs.wait_idle()


async def test_a_proxy_user_outside_the_role_map_only_views(proxied: Console) -> None:
    incident, approval = await proxied.incident("exec-guest")
    assert approval is not None
    path = f"/console/incidents/{incident.id}"
    page = (await proxied.http.get(path, headers=signed_in("guest", groups="visitors"))).text
    assert "Role viewer cannot approve: approver or higher needed" in page
    answer = await proxied.form(
        f"{path}/decision",
        {"approval_id": approval.id, "decision": "approve"},
        headers=signed_in("guest", "x"),
    )
    assert answer.status_code == 403
    assert (await proxied.wd.approvals.get(approval.id)).state == "pending"


async def test_a_proxy_header_from_an_untrusted_address_is_ignored(
    _no_pending_tasks: None, postgres_url: str
) -> None:
    settings = console_settings(postgres_url, **{**PROXY, "trusted_proxies": ["10.0.0.0/8"]})
    async with running_console(settings) as served:
        incident, approval = await served.incident("exec-forged")
        assert approval is not None
        path = f"/console/incidents/{incident.id}"
        page = await served.http.get(path, headers=signed_in("mallory"))
        assert page.status_code == 401
        assert "exec-forged" not in page.text and "mallory" not in page.text
        answer = await served.form(
            f"{path}/decision",
            {"approval_id": approval.id, "decision": "approve"},
            headers=signed_in("mallory"),
        )
        assert answer.status_code == 401
        assert (await served.wd.approvals.get(approval.id)).state == "pending"


async def test_a_high_risk_plan_needs_two_distinct_approvers(proxied: Console) -> None:
    incident, approval = await proxied.incident("exec-two", risk=Risk.HIGH)
    assert approval is not None
    path = f"/console/incidents/{incident.id}"
    form = {"approval_id": approval.id, "decision": "approve"}
    progress = 'id="approval-progress">'
    assert f"{progress}0 of 2" in (await proxied.http.get(path, headers=signed_in("alice"))).text

    first = await proxied.form(f"{path}/decision", form, headers=signed_in("alice"))
    assert first.headers["Location"] == f"{path}?notice=vote"
    page = (await proxied.http.get(f"{path}?notice=vote", headers=signed_in("alice"))).text
    assert f"{progress}1 of 2: proxy:alice@example.com" in page
    assert "needs a second, different approver" in page
    assert (await proxied.wd.approvals.get(approval.id)).state == "pending"

    again = await proxied.form(f"{path}/decision", form, headers=signed_in("alice"))
    assert again.headers["Location"] == f"{path}?notice=same_approver"
    assert (await proxied.wd.approvals.get(approval.id)).state == "pending"

    second = await proxied.form(f"{path}/decision", form, headers=signed_in("bob"))
    assert second.headers["Location"] == f"{path}?notice=approved"
    decided = await proxied.wd.approvals.get(approval.id)
    assert decided.state in ("approved", "used") and decided.votes == [
        "proxy:alice@example.com",
        "proxy:bob@example.com",
    ]
    await proxied.wd.jobs.wait_idle()
    page = (await proxied.http.get(path, headers=signed_in("bob"))).text
    assert f"{progress}2 of 2: proxy:alice@example.com, proxy:bob@example.com" in page


def test_local_mode_and_proxy_auth_together_are_refused() -> None:
    settings = console_settings("sqlite+aiosqlite:///unused.db", console_local_mode=True, **PROXY)
    with pytest.raises(ConfigError, match="console_local_mode and proxy_auth_enabled exclude each other"):
        SignIn.from_settings(settings)


async def test_the_incident_page_says_which_silence_holds_the_incident(console: Console) -> None:
    incident, _ = await console.incident("exec-held", prompt=False)
    silence = {
        "kind": "silence",
        "id": "8c1f",
        "matchers": ['execution_id="exec-held"'],
        "ends_at": "2026-12-06T12:00:00+00:00",
        "created_by": "bob",
        "comment": "<b>db migration</b>",
    }
    await console.hold(incident.id, [silence])
    page = (await console.http.get(f"/console/incidents/{incident.id}")).text
    held = page.split('id="held-by">', 1)[1].split("</dd>", 1)[0]
    assert (
        "Alertmanager silence 8c1f (execution_id=&#34;exec-held&#34;) by bob until 2026-12-06T12:00" in held
    )
    assert "&lt;b&gt;db migration&lt;/b&gt;" in held
    other, _ = await console.incident("exec-free", prompt=False)
    assert 'id="held-by"' not in (await console.http.get(f"/console/incidents/{other.id}")).text


async def test_the_incident_page_reads_what_holds_it_from_its_row(console: Console) -> None:
    incident, _ = await console.incident("exec-held", prompt=False)
    window = {"kind": "maintenance", "name": "nightly", "ends_at": "2026-12-06T12:00:00+00:00"}
    async with console.wd.store.transaction() as tx:  # the row only: no `suppressed` audit entry
        await tx.hold_incident(incident.id, "maintenance", [window])
    page = (await console.http.get(f"/console/incidents/{incident.id}")).text
    held = page.split('id="held-by">', 1)[1].split("</dd>", 1)[0]
    assert "maintenance window nightly until 2026-12-06T12:00:00+00:00" in held


def _rows(page: str) -> dict[str, str]:
    """The list's rows by execution id: each row's HTML."""
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = body.split("<tr>")[1:]
    return {row.split("<code>", 1)[1].split("</code>", 1)[0]: row for row in rows}


async def test_the_list_marks_held_incidents_and_filters_on_them(console: Console) -> None:
    held, _ = await console.incident("exec-held", prompt=False)
    await console.incident("exec-free", prompt=False)
    silence = {"kind": "silence", "id": "8c1f", "matchers": ['dag_id="dag-1"'], "ends_at": "2026-12-06T12:00"}
    await console.hold(held.id, [silence])

    rows = _rows((await console.http.get("/console/incidents")).text)
    assert 'class="held"' in rows["exec-held"] and "Alertmanager silence 8c1f" in rows["exec-held"]
    assert 'class="held"' not in rows["exec-free"]

    only_held = (await console.http.get("/console/incidents?held=true")).text
    assert set(_rows(only_held)) == {"exec-held"} and "1 incident matches" in only_held
    assert '<option value="true" selected>' in only_held
    assert set(_rows((await console.http.get("/console/incidents?held=false")).text)) == {"exec-free"}
    assert len(_rows((await console.http.get("/console/incidents?held=")).text)) == 2  # the form's "any"

    bad = await console.http.get("/console/incidents?held=maybe")
    assert bad.status_code == 400 and "held: " in bad.text
