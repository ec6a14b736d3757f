"""A batch of new firing alerts is written in a few statements, with the rows one-by-one would write."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.watchdog.conftest import WATCHDOG_TOKEN, ScriptedDiagnose
from tests.watchdog.webhook import STARTS, alert, payload
from watchdog.assembly import Watchdog
from watchdog.intake import BATCHES_AT_ONCE
from watchdog.migrations import alert_deliveries, audit_log, incidents
from watchdog.webhook import parse_payload

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}


async def _post(client: Client, body: Any) -> list[dict[str, Any]]:
    response = await client.post("/api/v1/alerts", json=body, headers=AUTH)
    assert response.status == 200, await response.text()
    answer: list[dict[str, Any]] = (await response.json())["alerts"]
    return answer


async def _rows(wd: Watchdog) -> tuple[dict[str, int | None], list[tuple[int | None, str, dict[str, Any]]]]:
    async with wd.store.read() as tx:
        deliveries = await tx.conn.execute(
            sa.select(alert_deliveries.c.fingerprint, alert_deliveries.c.incident_id)
        )
        audit = await tx.conn.execute(
            sa.select(audit_log.c.incident_id, audit_log.c.kind, audit_log.c.data).order_by(audit_log.c.id)
        )
        return dict(deliveries.all()), [tuple(row) for row in audit.all()]  # type: ignore[misc]


async def _incidents(wd: Watchdog) -> dict[str, dict[str, Any]]:
    """The columns of each incident that only its opening writes, by execution id (the diagnosis
    started meanwhile writes status and summary)."""
    columns = [incidents.c[name] for name in ("dag_id", "source", "detection_source", "alert_links")]
    async with wd.store.read() as tx:
        rows = await tx.conn.execute(sa.select(incidents.c.execution_id, *columns))
        return {row.execution_id: dict(row._mapping) | {"execution_id": None} for row in rows}


@pytest.mark.parametrize("size", [1, 2, 7])
async def test_a_delivery_of_new_alerts_opens_each_incident_with_the_rows_one_by_one_writes(
    api_client: Client, watchdog_app: Watchdog, diagnose_fn: ScriptedDiagnose, size: int
) -> None:
    # Two episodes of one execution are applied one by one (their order matters): opened, then joined.
    solo, _ = await _post(
        api_client,
        payload(alert("run-solo", fingerprint="fp-solo"), alert("run-solo", fingerprint="fp-solo-b")),
    )
    outcomes = await _post(
        api_client, payload(*(alert(f"run-{i}", fingerprint=f"fp-{i}") for i in range(size)))
    )
    assert [o["outcome"] for o in outcomes] == ["opened"] * size
    assert [o["execution_id"] for o in outcomes] == [f"run-{i}" for i in range(size)]
    links, audit = await _rows(watchdog_app)
    by_execution = {o["execution_id"]: o["incident_id"] for o in outcomes}
    solo_links = {"fp-solo": solo["incident_id"], "fp-solo-b": solo["incident_id"]}
    assert links == solo_links | {f"fp-{i}": by_execution[f"run-{i}"] for i in range(size)}
    opened = {
        data["execution_id"]: (incident_id, data)
        for incident_id, kind, data in audit
        if kind == "incident_opened"
    }
    solo_data = opened["run-solo"][1]
    rows = await _incidents(watchdog_app)
    for i in range(size):  # the same entry and incident as one by one writes, about its own alert
        expected = solo_data | {"execution_id": f"run-{i}", "fingerprint": f"fp-{i}"}
        assert opened[f"run-{i}"] == (by_execution[f"run-{i}"], expected)
        assert rows[f"run-{i}"] == rows["run-solo"]
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    assert sorted(diagnose_fn.calls) == sorted(["run-solo", *(f"run-{i}" for i in range(size))])


async def test_a_batch_joins_open_incidents_and_counts_duplicates_as_one_by_one_would(
    api_client: Client, watchdog_app: Watchdog
) -> None:
    [first] = await _post(api_client, payload(alert("run-open", fingerprint="fp-open")))
    alerts = [
        alert("run-open", fingerprint="fp-open", starts_at="2026-03-01T13:00:00Z"),  # a new episode: joins
        alert("run-new", fingerprint="fp-new"),
        alert("run-twice", fingerprint="fp-twice-a"),  # two alerts of one execution: opened, then joined
        alert("run-twice", fingerprint="fp-twice-b"),
        alert("run-open", fingerprint="fp-open", starts_at=STARTS),  # recorded before: a duplicate
    ]
    outcomes = await _post(api_client, payload(*alerts))
    assert [o["outcome"] for o in outcomes] == ["joined", "opened", "opened", "joined", "duplicate"]
    assert outcomes[0]["incident_id"] == outcomes[4]["incident_id"] == first["incident_id"]
    assert outcomes[2]["incident_id"] == outcomes[3]["incident_id"]
    links, audit = await _rows(watchdog_app)
    assert links["fp-twice-b"] == links["fp-twice-a"] == outcomes[2]["incident_id"]
    assert [kind for _, kind, _ in audit].count("incident_joined") == 2


async def test_concurrent_deliveries_of_distinct_alerts_share_transactions(
    watchdog_app: Watchdog, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, opened = watchdog_app.store.transaction, []

    def counted(what: str = "", **kwargs: Any) -> Any:
        opened.append(what)
        return real(what, **kwargs)

    monkeypatch.setattr(watchdog_app.store, "transaction", counted)
    deliveries = [
        parse_payload(json.dumps(payload(alert(f"run-{i}", fingerprint=f"fp-{i}"))).encode()).payload
        for i in range(20)
    ]
    results = await asyncio.gather(*(watchdog_app.intake.handle(delivery) for delivery in deliveries))
    assert sorted(o.outcome for [o] in results) == ["opened"] * 20
    assert len({o.incident_id for [o] in results}) == 20
    together = opened.count("alert intake")
    assert together <= BATCHES_AT_ONCE < len(deliveries)  # grouped: not one transaction per delivery
    # The control: deliveries that arrive one after another each take a transaction of their own, so
    # the count above measures the grouping (it would be 20 without it).
    for i in range(3):
        late = json.dumps(payload(alert(f"late-{i}", fingerprint=f"fp-late-{i}"))).encode()
        [alone] = await watchdog_app.intake.handle(parse_payload(late).payload)
        assert alone.outcome == "opened"
    assert opened.count("alert intake") == together + 3
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)


async def test_on_postgresql_a_batch_of_new_alerts_is_written_in_two_statements(
    api_client: Client, watchdog_app: Watchdog
) -> None:
    if watchdog_app.store.dialect != "postgresql":
        pytest.skip("SQLite writes the batch one table at a time")
    writes: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "WITH")):
            writes.append(statement)

    engine = watchdog_app.store.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        outcomes = await _post(
            api_client, payload(*(alert(f"run-{i}", fingerprint=f"fp-{i}") for i in range(5)))
        )
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    assert [o["outcome"] for o in outcomes] == ["opened"] * 5
    [recorded, linked] = writes  # episodes, incidents and audit entries in one; the links in the other
    assert all(f"INSERT INTO {table}" in recorded for table in ("alert_deliveries", "incidents", "audit_log"))
    assert linked.startswith("UPDATE alert_deliveries")
