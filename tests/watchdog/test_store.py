"""The watchdog store on SQLite and PostgreSQL: migrations, the one-open-incident constraint, dedup keys."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gl_common.db import Database, PoolSettings
from gl_common.migrations import AddColumn, CreateTable, bookkeeping, upgrade
from tests.conftest import close_during_a_transaction
from tests.watchdog.conftest import FakeClock, make_plan
from watchdog.errors import StoreError, StoreUnavailable
from watchdog.migrations import SCHEMA, metadata
from watchdog.store import WatchdogStore

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _versions() -> sa.Select[tuple[int]]:
    return (
        sa.select(bookkeeping.c.version)
        .where(bookkeeping.c.component == SCHEMA.component)
        .order_by(bookkeeping.c.version)
    )


async def test_open_runs_migrations_once(database_url: str) -> None:
    clock = FakeClock(START)
    store = await WatchdogStore.open(database_url, clock=clock)
    await store.close()
    store = await WatchdogStore.open(database_url, clock=clock)  # second start: nothing to apply
    try:
        async with store.transaction() as tx:
            versions = [r[0] for r in await tx.conn.execute(_versions())]
        assert versions == list(range(1, SCHEMA.head + 1))
    finally:
        await store.close()


async def test_a_closed_store_refuses_work_instead_of_opening_a_new_pool(database_url: str) -> None:
    store = await WatchdogStore.open(database_url, clock=FakeClock(START))
    await store.close()
    with pytest.raises(StoreUnavailable, match="the store is closed"):
        await store.ping()
    assert store.engine.sync_engine.pool.checkedin() == 0


async def test_close_lets_a_transaction_under_way_end_first(database_url: str) -> None:
    store = await WatchdogStore.open(database_url, clock=FakeClock(START))

    async def transaction(inside: asyncio.Event, finish: asyncio.Event) -> None:
        async with store.transaction() as tx:
            inside.set()
            await finish.wait()
            await tx.insert_incident(execution_id="e1", dag_id="d", source="alert", detection_source="api")

    assert await close_during_a_transaction(store.close, transaction) == ["committed", "closed"]
    reopened = await WatchdogStore.open(database_url, clock=FakeClock(START))
    try:
        assert [i.execution_id for i in await reopened.list_incidents()] == ["e1"]
    finally:
        await reopened.close()


async def test_a_transaction_cancelled_while_closing_still_returns_its_connection(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled (a timeout, a shutdown) just as its connection is being closed: the close still ends,
    so the connection goes back to the pool instead of staying checked out and never closed."""
    store = await WatchdogStore.open(sqlite_url, clock=FakeClock(START))
    closing, go_on = asyncio.Event(), asyncio.Event()
    held: list[AsyncConnection] = []
    close = AsyncConnection.close

    async def slow_close(self: AsyncConnection) -> None:
        if self in held:
            closing.set()
            await go_on.wait()
        await close(self)

    monkeypatch.setattr(AsyncConnection, "close", slow_close)

    async def transaction() -> None:
        async with store.transaction() as tx:
            held.append(tx.conn)
            await tx.conn.execute(sa.text("SELECT 1"))

    task = asyncio.create_task(transaction())
    try:
        await closing.wait()
        task.cancel()  # lands while the close is pending, before go_on lets the close go on
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        pool = store.engine.sync_engine.pool
        assert pool.checkedout() == 0 and pool.checkedin() == 1
    finally:
        await store.close()


async def test_concurrent_starts_migrate_once(database_url: str) -> None:
    stores = await asyncio.gather(*(WatchdogStore.open(database_url) for _ in range(3)))
    try:
        async with stores[0].transaction() as tx:
            versions = [r[0] for r in await tx.conn.execute(_versions())]
        assert versions == list(range(1, SCHEMA.head + 1))
    finally:
        for store in stores:
            await store.close()


async def test_one_open_incident_per_execution(database_url: str) -> None:
    store = await WatchdogStore.open(database_url, clock=FakeClock(START))
    try:
        async with store.transaction() as tx:
            first = await tx.insert_incident(
                execution_id="e1", dag_id="d", source="alert", detection_source="prometheus"
            )
            second = await tx.insert_incident(
                execution_id="e1", dag_id="d", source="sweep", detection_source="api"
            )
            other = await tx.insert_incident(
                execution_id="e2", dag_id="d", source="sweep", detection_source="api"
            )
        assert first is not None and first.status == "open" and first.opened_at == START
        assert second is None
        assert other is not None
        async with store.transaction() as tx:
            closed = await tx.update_incident(first.id, expected_status=["open"], status="closed")
            assert closed is not None and not closed.is_open
            again = await tx.insert_incident(
                execution_id="e1", dag_id="d", source="alert", detection_source="api"
            )
        assert again is not None and again.id != first.id
        assert [i.id for i in await store.list_incidents(statuses=["open"])] == [again.id, other.id]
    finally:
        await store.close()


async def test_update_incident_is_compare_and_set(database_url: str) -> None:
    store = await WatchdogStore.open(database_url)
    try:
        async with store.transaction() as tx:
            inc = await tx.insert_incident(
                execution_id="e1", dag_id=None, source="manual", detection_source="api"
            )
            assert inc is not None
            assert await tx.update_incident(inc.id, expected_status=["diagnosing"], status="open") is None
            moved = await tx.update_incident(
                inc.id, expected_status=["open"], status="diagnosing", summary="x"
            )
        assert moved is not None and moved.status == "diagnosing" and moved.summary == "x"
    finally:
        await store.close()


async def test_the_audits_of_several_incidents_are_read_together_by_incident_and_kind(
    database_url: str,
) -> None:
    store = await WatchdogStore.open(database_url)
    try:
        async with store.transaction() as tx:
            made = [
                await tx.insert_incident(
                    execution_id=f"e{n}", dag_id=None, source="sweep", detection_source="api"
                )
                for n in range(3)
            ]
            first, second, silent = (incident.id for incident in made if incident is not None)
            for incident_id, kind in [(second, "opened"), (first, "paged"), (second, "paged"), (first, "x")]:
                await tx.add_audit(incident_id, kind, data={"n": incident_id})
            every = await tx.list_audits([first, second, silent])
            paged = await tx.list_audits([second, first], kinds=["paged"])
            assert await tx.list_audits([]) == {}
            one_by_one = await tx.list_audit(first)
        assert {key: [e.kind for e in entries] for key, entries in every.items()} == {
            first: ["paged", "x"],
            second: ["opened", "paged"],
        }
        assert every[first] == one_by_one
        assert {key: [e.kind for e in entries] for key, entries in paged.items()} == {
            first: ["paged"],
            second: ["paged"],
        }
    finally:
        await store.close()


async def test_delivery_episode_is_recorded_once(database_url: str) -> None:
    store = await WatchdogStore.open(database_url)
    starts = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    try:
        async with store.transaction() as tx:
            first = await tx.insert_delivery(
                fingerprint="abc", starts_at=starts, alertname="A", execution_id="e1", status="firing"
            )
            dup = await tx.insert_delivery(
                fingerprint="abc", starts_at=starts, alertname="A", execution_id="e1", status="firing"
            )
            new_episode = await tx.insert_delivery(
                fingerprint="abc",
                starts_at=starts + timedelta(hours=1),
                alertname="A",
                execution_id="e1",
                status="firing",
            )
        assert first is not None and dup is None and new_episode is not None
        assert first.starts_at == starts
    finally:
        await store.close()


async def test_action_idempotency_key_is_unique(database_url: str) -> None:
    store = await WatchdogStore.open(database_url)
    try:
        async with store.transaction() as tx:
            inc = await tx.insert_incident(
                execution_id="e1", dag_id=None, source="manual", detection_source="api"
            )
            assert inc is not None
            act = await tx.insert_action(
                incident_id=inc.id, playbook="cancel", step="cancel", idempotency_key="k1"
            )
            dup = await tx.insert_action(
                incident_id=inc.id, playbook="cancel", step="cancel", idempotency_key="k1"
            )
            assert act is not None and dup is None
            done = await tx.finish_action(act.id, "succeeded", {"ok": True})
            assert done is not None and done.result == {"ok": True}
            assert await tx.finish_action(act.id, "failed") is None
    finally:
        await store.close()


async def test_approval_compare_and_set_and_rate_events(database_url: str) -> None:
    clock = FakeClock(START)
    store = await WatchdogStore.open(database_url, clock=clock)
    try:
        async with store.transaction() as tx:
            inc = await tx.insert_incident(
                execution_id="e1", dag_id=None, source="manual", detection_source="api"
            )
            assert inc is not None
            appr = await tx.insert_approval(
                approval_id="ap1",
                incident_id=inc.id,
                plan=make_plan(playbook="cancel"),
                summary="s",
                token_nonce="n",
                expires_at=clock.now() + timedelta(minutes=15),
            )
            assert appr.state == "pending"
            ok = await tx.update_approval(
                "ap1", expected_state=["pending"], state="approved", decided_by="me"
            )
            assert ok is not None and ok.decided_by == "me"
            assert await tx.update_approval("ap1", expected_state=["pending"], state="denied") is None
            await tx.add_rate_event("restart_agent", "a1", clock.now() - timedelta(hours=2))
            await tx.add_rate_event("restart_agent", "a1")
            assert await tx.count_rate_events("restart_agent", "a1", clock.now() - timedelta(hours=1)) == 1
            assert await tx.prune_rate_events(clock.now() - timedelta(hours=1)) == 1
    finally:
        await store.close()


async def test_naive_datetime_is_refused(sqlite_url: str) -> None:
    store = await WatchdogStore.open(sqlite_url)
    try:
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.add_rate_event("k", "x", datetime(2026, 1, 1))
    finally:
        await store.close()


async def test_unsupported_url_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="async driver"):
        await WatchdogStore.open("sqlite:///x.db")
    with pytest.raises(StoreError, match="unsupported"):
        await WatchdogStore.open("mysql+aiomysql://u@h/db")


async def test_unreachable_postgres_is_store_unavailable() -> None:
    from tests.conftest import free_port

    with pytest.raises(StoreUnavailable):
        await WatchdogStore.open(
            f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x", pool=PoolSettings(timeout_seconds=2)
        )


# -- schema upgrades (gl_common.migrations with the watchdog's frozen migrations) --------------------

EARLIER = range(1, SCHEMA.head)
OLD_APPLIED_AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _read_columns(sync_conn: sa.Connection) -> dict[str, set[str]]:
    inspector = sa.inspect(sync_conn)
    return {name: {column["name"] for column in inspector.get_columns(name)} for name in metadata.tables}


EXPECTED_COLUMNS = {name: {c.name for c in table.columns} for name, table in metadata.tables.items()}


async def _seed_v1(conn: AsyncConnection) -> None:
    """An open incident and its firing episode, in the tables of version 1."""
    v1 = SCHEMA.metadata(1).tables
    await conn.execute(
        v1["incidents"]
        .insert()
        .values(
            id=1,
            execution_id="exec-1",
            dag_id="dag-1",
            status="open",
            source="alert",
            detection_source="prometheus",
            opened_at=START,
            updated_at=START,
        )
    )
    await conn.execute(
        v1["alert_deliveries"]
        .insert()
        .values(
            fingerprint="fp-1",
            starts_at=START,
            alertname="OrchestratorExecutionTimeout",
            execution_id="exec-1",
            status="firing",
            received_at=START,
            last_received_at=START,
            incident_id=1,
        )
    )


@contextlib.asynccontextmanager
async def _upgraded(
    database_url: str, prepare: Callable[[Database, AsyncConnection], Awaitable[None]]
) -> AsyncIterator[WatchdogStore]:
    """The store opened on a database that `prepare` left (then seeded with v1 data), once it has
    checked that every migration is recorded, every column exists and the data is still there."""
    database = Database.connect(database_url)
    try:
        async with database.transaction("prepare") as conn:
            await prepare(database, conn)
            await _seed_v1(conn)
    finally:
        await database.close()
    store = await WatchdogStore.open(database_url, clock=FakeClock(START))
    try:
        async with store.read() as tx:
            versions = [r[0] for r in await tx.conn.execute(_versions())]
            delivery = await tx.get_delivery("fp-1", START)
        assert versions == list(range(1, SCHEMA.head + 1))
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_read_columns) == EXPECTED_COLUMNS
        assert delivery is not None and delivery.incident_id == 1 and delivery.labels_digest is None
        [incident] = await store.list_incidents()
        assert incident.execution_id == "exec-1" and incident.is_open
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize("version", EARLIER)
async def test_a_database_at_an_earlier_version_upgrades_with_its_data(
    database_url: str, version: int
) -> None:
    async def at_version(database: Database, conn: AsyncConnection) -> None:
        await conn.run_sync(upgrade, SCHEMA, START, version)

    async with _upgraded(database_url, at_version):
        pass


@pytest.mark.parametrize("version", [1, 2])  # the versions the watchdog's own runner released
async def test_a_database_of_the_earlier_runner_is_adopted_and_upgraded(
    database_url: str, version: int
) -> None:
    """What the watchdog's own runner left: the tables at `version`, its versions in `schema_migrations`."""

    async def as_the_earlier_runner_left_it(database: Database, conn: AsyncConnection) -> None:
        applied_at = (
            OLD_APPLIED_AT if database.dialect == "postgresql" else OLD_APPLIED_AT.replace(tzinfo=None)
        )
        await conn.run_sync(SCHEMA.metadata(version).create_all)
        await conn.execute(
            sa.text(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                "description VARCHAR(200) NOT NULL, applied_at TIMESTAMP WITH TIME ZONE NOT NULL)"
            )
        )
        for migration in SCHEMA.migrations[:version]:
            await conn.execute(
                sa.text("INSERT INTO schema_migrations VALUES (:v, :d, :at)"),
                {"v": migration.version, "d": migration.description, "at": applied_at},
            )

    async with _upgraded(database_url, as_the_earlier_runner_left_it) as store, store.read() as tx:
        adopted = await tx.conn.execute(
            sa.select(bookkeeping.c.version, bookkeeping.c.applied_at).where(
                bookkeeping.c.component == "watchdog"
            )
        )
        legacy = await tx.conn.execute(sa.text("SELECT version FROM schema_migrations ORDER BY 1"))
        kept = sorted(v for v, at in adopted.all() if at == OLD_APPLIED_AT)
        assert kept == list(range(1, version + 1))  # adopted, not applied again
        assert [v for (v,) in legacy.all()] == kept  # the old table is left as it was


# SHA-256 of each released migration's DDL (PostgreSQL and SQLite). A migration is frozen once released:
# a schema change is a new migration, never an edit of these.
RELEASED_DDL = {
    1: "d598e3e46ebcfe74355e64387c7a2a9bdee0176306bc505fbaa98f1cb2ff7ea6",
    2: "c2bbaaa121f6fb0d7ab72f2a0e5138b6c8386cdaae6d29a9b373a4996f4e32cf",
    3: "fcecf472b4cd1ed843478f69ad53795da2aaec2ff1d1645457f11b3a6a8cf678",
    4: "f3ce30b02567fd029eeabdb217948c870262127c97110407be07fa89e08a24a2",
}


def _ddl(version: int) -> str:
    migration = SCHEMA.migrations[version - 1]
    scratch = SCHEMA.metadata(version)
    statements = []
    for dialect in (postgresql.dialect(), sqlite.dialect()):
        for operation in migration.operations:
            if isinstance(operation, AddColumn):
                column = scratch.tables[operation.table].c[operation.column().name]
                statements.append(
                    f"{operation.table}: {sa.schema.CreateColumn(column).compile(dialect=dialect)}"
                )
                continue
            assert isinstance(operation, CreateTable), "pin the DDL of other operations here too"
            table = scratch.tables[operation.name]
            statements.append(str(sa.schema.CreateTable(table).compile(dialect=dialect)))
            statements += sorted(
                str(sa.schema.CreateIndex(i).compile(dialect=dialect)) for i in table.indexes
            )
    return "\n".join(statements)


@pytest.mark.parametrize("version", sorted(RELEASED_DDL))
def test_released_migrations_never_change(version: int) -> None:
    assert hashlib.sha256(_ddl(version).encode()).hexdigest() == RELEASED_DDL[version], _ddl(version)


async def test_upgrading_to_version_6_marks_the_incidents_whose_last_decision_held_them(
    database_url: str,
) -> None:
    """The held incidents of an earlier release are marked from their audit log: the last `plan` or
    `suppressed` entry of each unfinished incident says whether, and what, holds it."""
    window = {"kind": "maintenance", "name": "nightly", "ends_at": "2026-01-01T13:00:00+00:00"}
    silence = {"kind": "silence", "id": "sil-1", "matchers": ['agent="calc"']}
    histories: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {
        "by-window": ("open", [("suppressed", {"suppressed_by": [window, silence], "check_error": None})]),
        "by-silence": (
            "open",
            [("plan", {}), ("suppressed", {"suppressed_by": [silence], "check_error": None})],
        ),
        "by-check": ("open", [("suppressed", {"suppressed_by": [], "check_error": "GET ... failed"})]),
        "planned-since": (
            "open",
            [("suppressed", {"suppressed_by": [window], "check_error": None}), ("plan", {})],
        ),
        "closed": ("closed", [("suppressed", {"suppressed_by": [window], "check_error": None})]),
    }
    database = Database.connect(database_url)
    try:
        async with database.transaction("prepare") as conn:
            await conn.run_sync(upgrade, SCHEMA, START, 5)
            v5 = SCHEMA.metadata(5).tables
            for execution_id, (status, entries) in histories.items():
                row = {"execution_id": execution_id, "status": status, "source": "sweep"}
                inserted = await conn.execute(
                    v5["incidents"]
                    .insert()
                    .values(**row, detection_source="api", opened_at=START, updated_at=START)
                    .returning(v5["incidents"].c.id)
                )
                incident_id = inserted.scalar_one()
                for kind, data in entries:
                    await conn.execute(
                        v5["audit_log"]
                        .insert()
                        .values(
                            incident_id=incident_id,
                            at=START,
                            kind=kind,
                            phase="after",
                            actor="watchdog",
                            data=data,
                        )
                    )
    finally:
        await database.close()
    store = await WatchdogStore.open(database_url, clock=FakeClock(START))
    try:
        marked = {i.execution_id: (i.held_kind, i.held_by) for i in await store.list_incidents()}
    finally:
        await store.close()
    assert marked == {
        "by-window": ("maintenance", [window, silence]),
        "by-silence": ("silence", [silence]),
        "by-check": ("check_failure", [{"kind": "silence_check_failed", "error": "GET ... failed"}]),
        "planned-since": (None, None),
        "closed": (None, None),
    }
