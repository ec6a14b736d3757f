"""`GET /executions`: keyset pages oldest first, each server-side filter, exact totals, the cursor's
checks, the effective timeout of each item, and the indexes that answer the listing — on SQLite and
PostgreSQL, through the real app (runs are inserted into the real store with chosen timestamps)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator_core.api_models import MAX_EXECUTION_IDS
from orchestrator_core.records import ExecutionOptions, ExecutionRecord
from orchestrator_core.settings import OrchestratorSettings
from orchestrator_core.store.listing import ORDER_KEY
from orchestrator_core.store.schema import executions
from tests.orchestrator.service_harness import Harness, make_settings, running_service

pytestmark = pytest.mark.usefixtures("_no_pending_tasks")

NOW = datetime.now(UTC)


@pytest.fixture
def service_settings(database_url: str) -> OrchestratorSettings:
    return make_settings(database_url, default_execution_timeout_seconds=3600)


async def add(
    h: Harness,
    execution_id: str,
    *,
    started: float | None,
    status: str = "running",
    dag_id: str = "d",
    owner: str | None = "replica-a",
    own_timeout: float | None = None,
    created: float | None = None,
) -> None:
    """A run started `started` seconds ago (None: not started; created `created` seconds ago)."""
    created_ago = created if created is not None else (started or 0.0) + 1
    record = ExecutionRecord(
        execution_id=execution_id,
        dag_id=dag_id,
        dag_version=1,
        status=status,
        input_data={"n": execution_id},
        options=ExecutionOptions(),
        created_at=NOW - timedelta(seconds=created_ago),
        started_at=None if started is None else NOW - timedelta(seconds=started),
        timeout_seconds=own_timeout,
        owner=owner,
    )
    await h.service.engine.store.executions.create(record)


async def listing(h: Harness, **params: Any) -> dict[str, Any]:
    response = await h.api("GET", "/executions", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def every_page(h: Harness, **params: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = await listing(h, **params, **({"cursor": cursor} if cursor else {}))
        ids += [item["execution_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


def ids(page: dict[str, Any]) -> list[str]:
    return [item["execution_id"] for item in page["items"]]


# -- pages ------------------------------------------------------------------------------------------


async def test_pages_list_every_run_once_oldest_first(h: Harness) -> None:
    for index in range(7):
        await add(h, f"e{index}", started=1000 - index * 10)
    first = await listing(h, limit=3)
    assert ids(first) == ["e0", "e1", "e2"] and first["total"] == 7 and first["next_cursor"]
    assert await every_page(h, limit=3) == [f"e{index}" for index in range(7)]


async def test_runs_with_the_same_start_are_ordered_by_id_across_pages(h: Harness) -> None:
    for name in ("c", "a", "d", "b"):
        await add(h, name, started=50)
    assert await every_page(h, limit=1) == ["a", "b", "c", "d"]


async def test_a_last_page_that_is_full_has_no_next_cursor(h: Harness) -> None:
    for index in range(4):
        await add(h, f"e{index}", started=100 - index)
    second = await listing(h, limit=2, cursor=(await listing(h, limit=2))["next_cursor"])
    assert ids(second) == ["e2", "e3"] and second["next_cursor"] is None


async def test_runs_inserted_while_paging_are_reached_and_nothing_is_lost(h: Harness) -> None:
    for index in range(5):
        await add(h, f"old{index}", started=500 - index)
    first = await listing(h, limit=2)
    for index in range(3):  # submitted meanwhile: they start now, after everything listed
        await add(h, f"new{index}", started=0.5 - index * 0.1)
    seen = ids(first)
    cursor = first["next_cursor"]
    while cursor:
        page = await listing(h, limit=2, cursor=cursor)
        seen += ids(page)
        cursor = page["next_cursor"]
    assert seen == [f"old{i}" for i in range(5)] + [f"new{i}" for i in range(3)]


async def test_a_run_not_started_yet_is_ordered_by_its_submission(h: Harness) -> None:
    await add(h, "ran", started=30)
    await add(h, "waits", started=None, status="queued", created=60)
    assert ids(await listing(h)) == ["waits", "ran"]


async def test_total_is_the_exact_count_of_the_filter_on_every_page(h: Harness) -> None:
    for index in range(5):
        await add(h, f"r{index}", started=100 + index)
    await add(h, "done", started=10, status="completed")
    first = await listing(h, status="running", limit=2)
    last = await listing(
        h, status="running", limit=2, cursor=(await listing(h, status="running", limit=4))["next_cursor"]
    )
    assert first["total"] == last["total"] == 5
    assert (await listing(h, limit=1))["total"] == 6


# -- filters ----------------------------------------------------------------------------------------


@pytest.fixture
async def mixed(h: Harness) -> Harness:
    """Runs of every kind, oldest first: a..g."""
    await add(h, "a", started=7200, own_timeout=60)  # over its own timeout
    await add(h, "b", started=5000)  # over the default (3600)
    await add(h, "c", started=100, own_timeout=60, dag_id="other", owner="replica-b")  # over its own
    await add(h, "d", started=50, own_timeout=600)  # within its own
    await add(h, "e", started=20, status="completed", own_timeout=5)  # finished: never over
    await add(h, "f", started=10, status="interrupted", owner=None)
    await add(h, "g", started=None, status="queued", created=5)
    return h


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "running"}, ["a", "b", "c", "d"]),
        ({"status": ["interrupted", "queued"]}, ["f", "g"]),
        ({"status": "completed,interrupted"}, ["e", "f"]),
        ({"dag_id": "other"}, ["c"]),
        ({"owner": "replica-b"}, ["c"]),
        ({"started_before": "1000 s ago"}, ["a", "b"]),
        ({"started_after": "60 s ago"}, ["d", "e", "f"]),
        ({"over_timeout": "true"}, ["a", "b", "c"]),
        ({"over_timeout": "false"}, ["d", "e", "f", "g"]),
        ({"no_timeout": "true"}, ["b", "f", "g"]),
        ({"no_timeout": "false"}, ["a", "c", "d", "e"]),
        ({"status": "running", "dag_id": "d", "over_timeout": "true"}, ["a", "b"]),
        ({"execution_id": "g,a,unknown"}, ["a", "g"]),
        ({"execution_id": ["e", "c", "e"], "status": "running"}, ["c"]),
    ],
    ids=lambda value: str(value),
)
async def test_each_filter_selects_exactly_its_runs_and_counts_them(
    mixed: Harness, params: dict[str, Any], expected: list[str]
) -> None:
    for name, value in params.items():
        if isinstance(value, str) and value.endswith(" s ago"):
            params[name] = (NOW - timedelta(seconds=float(value.split()[0]))).isoformat()
    page = await listing(mixed, **params)
    assert ids(page) == expected
    assert page["total"] == len(expected)


async def test_without_a_default_timeout_a_run_without_its_own_is_never_over(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    async with running_service(make_settings(sqlite_url, default_execution_timeout_seconds=None)) as h:
        await add(h, "own", started=7200, own_timeout=60)
        await add(h, "none", started=7200)
        assert ids(await listing(h, over_timeout="true")) == ["own"]
        item = (await listing(h, no_timeout="true"))["items"][0]
        assert item["timeout_seconds"] is None and item["timeout_is_default"] is False


async def test_items_show_the_effective_timeout_and_whether_it_is_the_default(mixed: Harness) -> None:
    items = {item["execution_id"]: item for item in (await listing(mixed))["items"]}
    assert (items["a"]["timeout_seconds"], items["a"]["timeout_is_default"]) == (60, False)
    assert (items["b"]["timeout_seconds"], items["b"]["timeout_is_default"]) == (3600, True)
    one = (await mixed.api("GET", "/executions/b")).json()
    assert (one["timeout_seconds"], one["timeout_is_default"]) == (3600, True)


async def test_runs_asked_for_by_id_are_paged_with_their_exact_total(mixed: Harness) -> None:
    asked = {"execution_id": "f,b,d,a,zz", "limit": 2}
    first = await listing(mixed, **asked)
    assert ids(first) == ["a", "b"] and first["total"] == 4
    second = await listing(mixed, **asked, cursor=first["next_cursor"])
    assert ids(second) == ["d", "f"] and second["total"] == 4 and second["next_cursor"] is None


async def test_as_many_execution_ids_as_allowed_fit_one_request(h: Harness) -> None:
    """The most ids a listing takes, as UUIDs (the engine's ids) comma-separated, pass the server's
    request-line limit; one more is a 400 naming the parameter."""
    wanted = [uuid.uuid4().hex for _ in range(MAX_EXECUTION_IDS)]
    for execution_id in wanted[:3]:
        await add(h, execution_id, started=10, status="failed")
    page = await listing(h, execution_id=",".join(wanted))
    assert sorted(ids(page)) == sorted(wanted[:3]) and page["total"] == 3
    too_many = ",".join([*wanted, uuid.uuid4().hex])
    response = await h.api("GET", "/executions", params={"execution_id": too_many})
    assert response.status_code == 400 and response.json()["field"] == "execution_id"
    assert str(MAX_EXECUTION_IDS) in response.json()["detail"]


@pytest.mark.parametrize("bad", ["a/b", "-lead", "x" * 65, "a,,b", "ok,bad id"])
async def test_an_execution_id_that_is_not_one_is_400_naming_the_parameter(h: Harness, bad: str) -> None:
    response = await h.api("GET", "/executions", params={"execution_id": bad})
    assert response.status_code == 400 and response.json()["field"] == "execution_id", response.text


# -- the cursor -------------------------------------------------------------------------------------


def _tampered(cursor: str) -> list[str]:
    encoded, _, checksum = cursor.partition(".")
    payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    forged = base64.urlsafe_b64encode(payload.replace(b'"id":"e1"', b'"id":"e0"')).decode().rstrip("=")
    return [
        "not-a-cursor",
        encoded,  # no checksum
        f"{encoded}.{'0' * len(checksum)}",  # wrong checksum
        f"{forged}.{checksum}",  # another position under the old checksum
        f"{encoded[:-2]}.{checksum}",
        "%%%.abc",
    ]


async def test_a_tampered_cursor_is_400_naming_the_cursor(h: Harness) -> None:
    for index in range(3):
        await add(h, f"e{index}", started=100 - index)
    cursor = (await listing(h, limit=2))["next_cursor"]
    for bad in _tampered(cursor):
        response = await h.api("GET", "/executions", params={"limit": 2, "cursor": bad})
        assert response.status_code == 400, bad
        assert response.json()["field"] == "cursor"


async def test_a_cursor_of_other_filters_is_400(h: Harness) -> None:
    for index in range(3):
        await add(h, f"e{index}", started=100 - index)
    cursor = (await listing(h, status="running", limit=1))["next_cursor"]
    response = await h.api("GET", "/executions", params={"status": "queued", "limit": 1, "cursor": cursor})
    assert response.status_code == 400 and "other filters" in response.json()["detail"]
    # The page size may change between pages: it is not a filter.
    assert ids(await listing(h, status="running", limit=2, cursor=cursor)) == ["e1", "e2"]


@pytest.mark.parametrize("limit", ["0", "5001", "-1", "ten", "1.5"])
async def test_limit_out_of_its_bounds_is_400(h: Harness, limit: str) -> None:
    response = await h.api("GET", "/executions", params={"limit": limit})
    assert response.status_code == 400 and response.json()["field"] == "limit"


async def test_the_default_page_holds_500_runs(h: Harness) -> None:
    rows = [
        {
            "execution_id": f"e{index:04d}",
            "dag_id": "d",
            "dag_version": 1,
            "status": "completed",
            "input_data": "null",
            "options": "{}",
            "created_at": NOW - timedelta(seconds=1000 - index),
            "updated_at": NOW,
        }
        for index in range(501)
    ]
    async with h.service.engine.store.engine.begin() as conn:
        await conn.execute(executions.insert(), rows)
    page = await listing(h)
    assert len(page["items"]) == 500 and page["total"] == 501 and page["next_cursor"]


# -- indexes ----------------------------------------------------------------------------------------


async def test_sqlite_answers_the_listing_from_the_listing_indexes(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    async with running_service(make_settings(sqlite_url)) as h:
        engine = h.service.engine.store.engine
        plans = {}
        for name, condition in (
            ("status", executions.c.status == "running"),
            ("dag", executions.c.dag_id == "d"),
            ("all", sa.true()),
        ):
            query = (
                executions.select().where(condition).order_by(ORDER_KEY, executions.c.execution_id).limit(10)
            )
            compiled = query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True})
            async with engine.connect() as conn:
                rows = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")).all()
            plans[name] = " ".join(str(row[-1]) for row in rows)
    assert "ix_executions_status_order" in plans["status"]
    assert "ix_executions_dag_order" in plans["dag"]
    assert "ix_executions_order" in plans["all"]
    assert all("TEMP B-TREE" not in plan for plan in plans.values()), plans  # no sort: the index's order
