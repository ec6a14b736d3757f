"""A real orchestrator service and app on loopback, run in a thread of its own with its own event loop,
for synchronous tests driven by hypothesis and schemathesis (which call the API with blocking HTTP
clients). (Holds no tests of its own.)"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa

from orchestrator_core.settings import OrchestratorSettings
from orchestrator_core.store.schema import dags, executions, limit_overrides
from tests.orchestrator.service_harness import TOKEN, Harness, make_settings, running_service

T = TypeVar("T")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Served:
    """The harness of `running_service`, its loop in a background thread."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="served-orchestrator", daemon=True
        )
        self._context: Any = None
        self.harness: Harness | None = None

    @property
    def base_url(self) -> str:
        assert self.harness is not None
        return self.harness.base_url

    def run(self, coroutine: Awaitable[T], timeout: float = 30.0) -> T:
        """Run `coroutine` on the service's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> None:
        self._thread.start()
        self._context = running_service(self._settings)
        self.harness = self.run(self._context.__aenter__())

    def stop(self) -> None:
        try:
            self.run(self._context.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def snapshot(self) -> dict[str, int]:
        """Row counts of the tables a request could write (what a refused request must leave alone)."""
        assert self.harness is not None
        engine = self.harness.service.engine.store.engine

        async def count() -> dict[str, int]:
            async with engine.connect() as conn:
                return {
                    table.name: int(
                        (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
                    )
                    for table in (dags, executions, limit_overrides)
                }

        return self.run(count())


@contextlib.contextmanager
def served(settings: OrchestratorSettings) -> Iterator[Served]:
    server = Served(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def served_with_a_run(database_url: str) -> Iterator[Served]:
    """`served`, with the DAG `known` (one node `n1`, `builtin.echo`) registered and run once."""
    with served(make_settings(database_url, max_body_bytes=64 * 1024)) as running:
        with httpx.Client(base_url=running.base_url, headers=AUTH, timeout=10) as client:
            dag = {"dag_id": "known", "nodes": {"n1": {"agent_id": "builtin.echo"}}}
            assert client.post("/api/v1/orchestrator/dags", json=dag).status_code == 201
            assert client.post("/api/v1/orchestrator/dags/known/execute", json={}).status_code == 202
        yield running
