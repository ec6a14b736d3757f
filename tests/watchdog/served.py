"""The real watchdog app on loopback, run in a thread of its own with its own event loop, for the
synchronous tests driven by hypothesis and schemathesis (which call the API with blocking HTTP
clients). Seeded with an open incident, a pending approval prompt and a decided one. (Holds no tests
of its own.)"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from aiohttp import web

from tests.conftest import free_port
from tests.watchdog.conftest import ScriptedDiagnose, make_plan
from watchdog.approvals import Decision
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.migrations import actions, alert_deliveries, approvals, audit_log, incidents
from watchdog.settings import WatchdogSettings

T = TypeVar("T")
TOKEN = "served-watchdog-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Seeded:
    incident_id: int
    pending_approval: str
    decided_approval: str
    link_token: str  # the pending prompt's


class ServedWatchdog:
    """A watchdog built and served on a loop in a background thread."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="served-watchdog", daemon=True)
        self._runner: web.AppRunner | None = None
        self.wd: Watchdog | None = None
        self.base_url = ""
        self.seeded: Seeded | None = None

    def run(self, coroutine: Awaitable[T], timeout: float = 30.0) -> T:
        """Run `coroutine` on the watchdog's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)  # type: ignore[arg-type]

    async def _start(self) -> None:
        settings = WatchdogSettings(
            database_url=self._database_url,
            api_tokens=[TOKEN],
            orchestrator_url=f"http://127.0.0.1:{free_port()}",
            orchestrator_timeout_seconds=0.5,
            approval_signing_key="k" * 32,
            max_body_bytes=64 * 1024,
        )
        self.wd = await build_watchdog(settings, diagnose=ScriptedDiagnose(), respond=False)
        self._runner = web.AppRunner(create_app(self.wd), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.base_url = f"http://127.0.0.1:{port}"
        self.seeded = await self._seed(self.wd)

    @staticmethod
    async def _seed(wd: Watchdog) -> Seeded:
        prompts = []
        for execution_id in ("exec-1", "exec-2"):
            opened = await wd.incidents.open_or_join(
                execution_id, dag_id="dag-1", source="manual", detection_source="api"
            )
            async with wd.store.transaction() as tx:
                prompts.append(
                    await wd.approvals.create_in(
                        tx, incident_id=opened.incident.id, plan=make_plan(execution_id), summary="hung node"
                    )
                )
        await wd.approvals.decide(prompts[1].id, Decision.DENY, actor="seed", authenticated=True)
        return Seeded(
            prompts[0].incident_id, prompts[0].id, prompts[1].id, wd.approvals.token_for(prompts[0])
        )

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.wd is not None:
            await self.wd.aclose(grace_seconds=2)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    def stop(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def snapshot(self) -> dict[str, Any]:
        """What a request could write: row counts, and the incidents' and prompts' states, once the
        background jobs that earlier requests started (diagnoses, remediations) have ended."""
        assert self.wd is not None
        wd = self.wd

        async def read() -> dict[str, Any]:
            async with asyncio.timeout(20):
                await wd.jobs.wait_idle()
            async with wd.store.transaction() as tx:
                counts = {
                    table.name: int(
                        (await tx.conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
                    )
                    for table in (incidents, alert_deliveries, audit_log, approvals, actions)
                }
                states = (await tx.conn.execute(sa.select(incidents.c.id, incidents.c.status))).all()
                prompts = (await tx.conn.execute(sa.select(approvals.c.id, approvals.c.state))).all()
            return {**counts, "incident_states": sorted(states), "prompt_states": sorted(prompts)}

        return self.run(read())


@contextlib.contextmanager
def served_watchdog(database_url: str) -> Iterator[ServedWatchdog]:
    server = ServedWatchdog(database_url)
    server.start()
    try:
        yield server
    finally:
        server.stop()
