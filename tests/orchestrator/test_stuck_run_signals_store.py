"""The stuck-run signals in the store (issue 16), on SQLite and PostgreSQL: the node-duration history
outlives a restart and is shared by replicas; running nodes of every replica page by keyset at a few
thousand rows with exact totals, and rows of runs no longer running under their token are ignored and
pruned; progress taken by a replica that does not run the node reaches the owner's row."""

from __future__ import annotations

from datetime import datetime, timedelta

from orchestrator_core.engine import Engine
from orchestrator_core.node_history import NodeHistory
from orchestrator_core.settings import OrchestratorSettings
from orchestrator_core.store import Store
from orchestrator_core.store.schema import executions
from orchestrator_core.store.signals import ProgressDelta, RunningFilter
from tests.orchestrator.conftest import Calls, make_registry
from tests.orchestrator.foreign_runs import T0, running_row, running_runs

DAG = {
    "dag_id": "hist",
    "nodes": {"a": {"agent_id": "builtin.echo"}, "b": {"agent_id": "builtin.echo", "depends_on": ["a"]}},
}


async def _engine(database_url: str) -> Engine:
    settings = OrchestratorSettings(database_url=database_url, db_timeout_seconds=5)
    return await Engine.open(settings, registry=make_registry(Calls()))


async def test_the_node_duration_history_survives_a_restart(database_url: str) -> None:
    engine = await _engine(database_url)
    try:
        await engine.register_dag(DAG)
        for _ in range(4):
            record = await engine.execute("hist")
            assert (await engine.wait(record.execution_id)).status == "completed"
        assert engine.signals.history.pending == 2  # in memory until a tick (or the close) merges it
        assert engine.signals.tracked_nodes == 0  # the ended runs' nodes are forgotten, ticks or not
    finally:
        await engine.close()  # the last flush
    reopened = await _engine(database_url)
    try:
        history = await reopened.signals.history.of_dag("hist")
        assert {key: sketch.count for key, sketch in history.items()} == {
            ("hist", "a", "builtin.echo"): 4,
            ("hist", "b", "builtin.echo"): 4,
        }
    finally:
        await reopened.close()


async def test_replicas_share_one_history_through_the_store(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        one, two = NodeHistory(store.signals), NodeHistory(store.signals)
        key = ("d", "n", "agent")
        for seconds in (1.0, 2.0, 3.0):
            one.add(key, seconds)
        await one.flush()
        two.add(key, 100.0)
        assert (await two.sketches([key]))[key].count == 4  # stored 3 + its own 1 not merged yet
        await two.flush()
        await one.flush()  # nothing pending: changes nothing
        merged = (await one.sketches([key]))[key]
        assert merged.count == 4
        assert merged.quantile(1.0) is not None and 95 < merged.quantile(1.0) < 105  # type: ignore[operator]
        assert merged.quantile(0.0) is not None and 0.95 < merged.quantile(0.0) < 1.05  # type: ignore[operator]
    finally:
        await store.close()


async def test_running_nodes_page_by_keyset_at_thousands_of_rows_with_exact_totals(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        ids = await running_runs(store, 3000)
        stale = running_row(ids[0], 0, token=2)  # written under an earlier claim: not answered
        await store.signals.sync_running([running_row(e, i) for i, e in enumerate(ids[1:], 1)], [], [])
        seen: list[tuple[datetime, str]] = []
        after = None
        pages = 0
        while True:
            page = await store.signals.page_running(RunningFilter(), after=after, limit=700)
            assert page.total == 2999
            seen += [(node.started_at, node.execution_id) for node in page.nodes]
            pages += 1
            if page.next is None:
                break
            after = page.next
        assert pages == 5 and len(seen) == 2999 and len(set(seen)) == 2999
        assert seen == sorted(seen)
        before = T0 + timedelta(seconds=10)
        early = await store.signals.page_running(RunningFilter(started_before=before), after=None, limit=5000)
        assert early.total == len(early.nodes) == sum(1 for i in range(1, 3000) if i % 500 < 10)
        other = await store.signals.page_running(RunningFilter(dag_id="other"), after=None, limit=10)
        assert other.total == 0

        await store.signals.sync_running([stale], [], [])
        assert (await store.signals.running_of(ids[0])) == []  # its token is not the run's
        assert await store.signals.prune_running() == 1
        async with store.db.transaction("finish one") as conn:
            await conn.execute(
                executions.update().where(executions.c.execution_id == ids[1]).values(status="failed")
            )
        assert (await store.signals.page_running(RunningFilter(), after=None, limit=1)).total == 2998
        assert await store.signals.prune_running() == 1
    finally:
        await store.close()


async def test_progress_deltas_of_several_replicas_add_up_on_the_ownersrunning_row(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        [run] = await running_runs(store, 1)
        early = ProgressDelta(run, "x", 2, T0 + timedelta(seconds=5), "late message?", 0.2)
        waiting = await store.signals.sync_running([], [], [early])
        assert waiting == [early]  # no row yet: it waits for the owner's
        await store.signals.sync_running([running_row(run, 0)], [], [])
        later = ProgressDelta(run, "x", 3, T0 + timedelta(seconds=9), "rows 300", 0.3)
        assert await store.signals.sync_running([], [], [later, early]) == []
        [node] = await store.signals.running_of(run)
        assert node.started_at == T0 and node.started_at.tzinfo is not None
        assert node.progress_reports == 5
        assert (node.last_progress_at, node.progress_message, node.progress_fraction) == (
            T0 + timedelta(seconds=9),
            "rows 300",
            0.3,
        )
        bare = ProgressDelta(run, "x", 1, T0 + timedelta(seconds=10), None, None)  # a report without detail
        assert await store.signals.sync_running([], [], [bare]) == []
        [node] = await store.signals.running_of(run)
        assert (node.progress_reports, node.progress_message, node.progress_fraction) == (6, None, None)
        # A new claim of the run (resume, takeover) starts the node's progress afresh.
        async with store.db.transaction("claim again") as conn:
            await conn.execute(
                executions.update().where(executions.c.execution_id == run).values(fencing_token=4)
            )
        await store.signals.sync_running([running_row(run, 0, token=4)], [], [])
        [node] = await store.signals.running_of(run)
        assert (node.progress_reports, node.last_progress_at) == (0, None)
        assert await store.signals.sync_running([], [(run, "x")], []) == []
        assert await store.signals.running_of(run) == []
    finally:
        await store.close()
