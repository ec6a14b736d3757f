"""`GET /api/v1/incidents` on SQLite and PostgreSQL: keyset pages newest first with an exact total,
server-side filters (status, dag_id, execution_id, cause, opened time), and cursors bound to their
filters — nothing silently truncated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN, FakeClock, ScriptedDiagnose, make_plan
from watchdog.approvals import Decision
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.settings import WatchdogSettings

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}


@pytest.fixture
async def listed(
    _no_pending_tasks: None, database_url: str, clock: FakeClock
) -> AsyncIterator[tuple[Watchdog, Client, FakeClock]]:
    settings = WatchdogSettings(
        database_url=database_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
    )
    wd = await build_watchdog(settings, clock=clock, diagnose=ScriptedDiagnose(), respond=False)
    client: Client = TestClient(TestServer(create_app(wd), host="127.0.0.1"))
    await client.start_server()
    try:
        yield wd, client, clock
    finally:
        await client.close()
        await wd.aclose()


async def _incident(
    wd: Watchdog, execution_id: str, *, dag_id: str = "dag-a", status: str = "open", cause: str | None = None
) -> int:
    async with wd.store.transaction() as tx:
        incident = await tx.insert_incident(
            execution_id=execution_id, dag_id=dag_id, source="manual", detection_source="api"
        )
        assert incident is not None
        values: dict[str, Any] = {}
        if status != "open":
            values["status"] = status
        if cause is not None:
            values["diagnosis"] = {"likely_cause": cause, "findings": []}
        if values:
            await tx.update_incident(incident.id, **values)
        return incident.id


async def _get(client: Client, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/v1/incidents", params=params, headers=AUTH)
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


async def test_pages_follow_next_cursor_newest_first_and_see_every_incident_once(
    listed: tuple[Watchdog, Client, FakeClock],
) -> None:
    wd, client, _ = listed
    ids = [await _incident(wd, f"exec-{n}") for n in range(7)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = await _get(client, **params)
        assert page["total"] == 7
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True) and pages == 3


async def test_an_incident_opened_while_paging_is_not_slipped_into_a_later_page(
    listed: tuple[Watchdog, Client, FakeClock],
) -> None:
    wd, client, _ = listed
    for n in range(4):
        await _incident(wd, f"exec-{n}")
    first = await _get(client, limit=2)
    await _incident(wd, "exec-late")
    second = await _get(client, limit=2, cursor=first["next_cursor"])
    assert [i["execution_id"] for i in second["items"]] == ["exec-1", "exec-0"]
    assert second["next_cursor"] is None and second["total"] == 5


async def test_the_default_page_holds_up_to_500_and_says_when_there_is_more(
    listed: tuple[Watchdog, Client, FakeClock],
) -> None:
    wd, client, _ = listed
    async with wd.store.transaction() as tx:
        for n in range(501):
            await tx.insert_incident(
                execution_id=f"exec-{n}", dag_id=None, source="sweep", detection_source="api"
            )
    page = await _get(client)
    assert len(page["items"]) == 500 and page["total"] == 501 and page["next_cursor"] is not None
    rest = await _get(client, cursor=page["next_cursor"])
    assert [i["execution_id"] for i in rest["items"]] == ["exec-0"]


async def test_filters_combine_and_the_total_counts_the_matches(
    listed: tuple[Watchdog, Client, FakeClock],
) -> None:
    wd, client, clock = listed
    await _incident(wd, "e-old", dag_id="dag-a", status="resolved", cause="hung_node")
    clock.advance(3600)
    noon = clock.now()
    await _incident(wd, "e-hung", dag_id="dag-a", cause="hung_node")
    await _incident(wd, "e-lock", dag_id="dag-b", cause="stuck_lock")
    await _incident(wd, "e-new", dag_id="dag-a", status="escalated")

    def names(page: dict[str, Any]) -> list[str]:
        return [item["execution_id"] for item in page["items"]]

    assert names(await _get(client, status="open")) == ["e-lock", "e-hung"]
    assert names(await _get(client, status="resolved,escalated")) == ["e-new", "e-old"]
    assert names(await _get(client, dag_id="dag-a", cause="hung_node")) == ["e-hung", "e-old"]
    assert names(await _get(client, cause="stuck_lock")) == ["e-lock"]
    assert names(await _get(client, execution_id="e-old")) == ["e-old"]
    after = noon.isoformat()
    assert names(await _get(client, opened_after=after)) == ["e-new", "e-lock", "e-hung"]
    assert names(await _get(client, opened_before=after)) == ["e-old"]
    both = await _get(client, opened_after=after, dag_id="dag-a", status="open")
    assert names(both) == ["e-hung"] and both["total"] == 1
    assert (await _get(client, cause="no_such_cause")) == {"items": [], "next_cursor": None, "total": 0}


async def test_a_cursor_is_refused_with_other_filters_or_when_altered(
    listed: tuple[Watchdog, Client, FakeClock],
) -> None:
    wd, client, _ = listed
    for n in range(3):
        await _incident(wd, f"exec-{n}")
    cursor = (await _get(client, limit=1, status="open"))["next_cursor"]
    other = await client.get("/api/v1/incidents", params={"cursor": cursor, "status": "closed"}, headers=AUTH)
    assert other.status == 400 and "other filters" in (await other.json())["detail"]
    altered = await client.get("/api/v1/incidents", params={"cursor": "x" + cursor}, headers=AUTH)
    assert altered.status == 400 and (await altered.json())["field"] == "cursor"
    same = await client.get(
        "/api/v1/incidents", params={"cursor": cursor, "status": "open", "limit": 5}, headers=AUTH
    )
    assert same.status == 200 and len((await same.json())["items"]) == 2


async def test_items_are_the_documented_shape_without_the_documents(
    listed: tuple[Watchdog, Client, FakeClock],
) -> None:
    wd, client, clock = listed
    await _incident(wd, "exec-1", cause="hung_node")
    [item] = (await _get(client))["items"]
    assert set(item) == {
        "id",
        "execution_id",
        "dag_id",
        "status",
        "source",
        "detection_source",
        "opened_at",
        "updated_at",
        "closed_at",
        "summary",
        "likely_cause",
        "is_open",
        "held",
        "suppressed_by",
        "pending_approval",
    }
    assert item["likely_cause"] == "hung_node" and item["is_open"] is True
    assert item["held"] is False and item["suppressed_by"] is None and item["pending_approval"] is None
    assert item["opened_at"] == clock.now().isoformat().replace("+00:00", "Z")


async def test_items_awaiting_approval_carry_their_pending_prompt_and_the_others_null(
    listed: tuple[Watchdog, Client, FakeClock],
) -> None:
    wd, client, _ = listed
    waiting = [await _incident(wd, f"e-wait-{n}", status="awaiting_approval") for n in range(3)]
    denied = await _incident(wd, "e-denied", status="escalated")
    await _incident(wd, "e-plain")
    async with wd.store.transaction() as tx:
        prompts = {
            incident_id: (
                await wd.approvals.create_in(tx, incident_id=incident_id, plan=make_plan(), summary="s")
            ).id
            for incident_id in [*waiting, denied]
        }
    await wd.approvals.decide(prompts[denied], Decision.DENY, actor="test", authenticated=True)

    page = await _get(client, limit=4)  # the pending prompts of the page's incidents only
    pending = {item["execution_id"]: item["pending_approval"] for item in page["items"]}
    assert pending == {
        "e-plain": None,
        "e-denied": None,
        "e-wait-2": prompts[waiting[2]],
        "e-wait-1": prompts[waiting[1]],
    }
    [oldest] = (await _get(client, cursor=page["next_cursor"], limit=4))["items"]
    assert oldest["pending_approval"] == prompts[waiting[0]]


async def test_held_filters_on_what_holds_an_open_incident_and_a_bad_value_is_a_400(
    listed: tuple[Watchdog, Client, FakeClock],
) -> None:
    wd, client, _ = listed
    held = await _incident(wd, "e-held")
    diagnosing = await _incident(wd, "e-rediagnosed", status="diagnosing")  # held before: not now
    await _incident(wd, "e-free")
    window = [{"kind": "maintenance", "name": "nightly", "ends_at": "2026-12-06T10:00:00+00:00"}]
    async with wd.store.transaction() as tx:
        await tx.hold_incident(held, "maintenance", window)
        await tx.hold_incident(diagnosing, "maintenance", window)

    page = await _get(client, held="true")
    [item] = page["items"]
    assert page["total"] == 1 and item["id"] == held
    assert item["held"] is True and item["suppressed_by"] == window
    others = await _get(client, held="false")
    assert [i["execution_id"] for i in others["items"]] == ["e-free", "e-rediagnosed"]
    assert not any(i["held"] for i in others["items"]) and others["total"] == 2
    assert (await _get(client, held="true", status="diagnosing"))["total"] == 0

    bad = await client.get("/api/v1/incidents", params={"held": "maybe"}, headers=AUTH)
    body = await bad.json()
    assert bad.status == 400 and body["field"] == "held", body
    assert "maybe" in body["detail"], body


async def test_a_listing_reads_a_snapshot_without_waiting_for_a_writer_of_the_process(
    listed: tuple[Watchdog, Client, FakeClock],
) -> None:
    """A writer (the intake, say) holds its transaction open: the listing answers at once, from what
    was committed, instead of queueing behind it (on SQLite: for the write lock)."""
    wd, client, _ = listed
    await _incident(wd, "e-committed")
    inside, finish = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with wd.store.transaction() as tx:
            await tx.insert_incident(
                execution_id="e-uncommitted", dag_id="d", source="sweep", detection_source="api"
            )
            inside.set()
            await finish.wait()

    writing = asyncio.create_task(writer())
    try:
        await inside.wait()
        page = await asyncio.wait_for(_get(client), 5)
        assert [i["execution_id"] for i in page["items"]] == ["e-committed"] and page["total"] == 1
    finally:
        finish.set()
        await writing
