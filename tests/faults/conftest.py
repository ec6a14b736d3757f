"""Fixtures of the fault-injection suite: a watchdog on real PostgreSQL and Redis whose store can be made
to fail at its boundary or have its PostgreSQL connections killed, with a scripted diagnosis and a
recording playbook, driven one step at a time (jobs awaited, `reconcile_once()`, an injected clock).

`Rig` is the watchdog with its levers:

- `faults` (`StoreFaults`): `down` makes every `store.transaction()` raise `StoreUnavailable` as a
  pool timeout does; `kill_next` makes the next transaction's own PostgreSQL backend be terminated
  (`pg_terminate_backend(pg_backend_pid())`) as soon as it begins, a real connection kill;
- `diagnose` (`ScriptedDiagnose`): the diagnosis callable, with a hook run just before it returns;
- `playbook` (`RecordingPlaybook`, tests/watchdog/recording_playbook.py) with hooks after its apply
  and its verify, so a test can fail the store exactly while a job saves what it did;
- `clock`: a settable clock (leases, backoffs and the bound are in its time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import free_port
from tests.watchdog.conftest import FakeClock, make_diagnosis
from tests.watchdog.recording_playbook import POLICY, RecordingNotifier, RecordingPlaybook
from watchdog.assembly import Watchdog, build_watchdog
from watchdog.errors import StoreUnavailable
from watchdog.policy import parse_policy
from watchdog.records import AuditEntry, Incident
from watchdog.settings import Mode, WatchdogSettings
from watchdog.store import Tx, WatchdogStore
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.outcomes import ApplyResult, VerifyResult
from watchdog_sdk.playbook import PlaybookContext
from watchdog_sdk.registry import Registry

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Hook = Callable[[], Awaitable[None]]


class StoreFaults:
    """Failures of the watchdog's store, injected at `store.transaction()` (its one way in)."""

    def __init__(self, store: WatchdogStore) -> None:
        self.store = store
        self.real = store.transaction
        self.down = False
        self.kill_next = 0
        self.refused = 0
        self.killed = 0

    def transaction(self, *args: Any, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[Tx]:
        if self.down:
            self.refused += 1
            return _unreachable()
        if self.kill_next:
            self.kill_next -= 1
            self.killed += 1
            return self._killed(*args, **kwargs)
        return self.real(*args, **kwargs)

    @contextlib.asynccontextmanager
    async def _killed(self, *args: Any, **kwargs: Any) -> AsyncIterator[Tx]:
        async with self.real(*args, **kwargs) as tx:
            await tx.conn.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))
            yield tx


@contextlib.asynccontextmanager
async def _unreachable() -> AsyncIterator[Tx]:
    raise StoreUnavailable("database not reachable: TimeoutError (injected)")
    yield  # pragma: no cover - never reached


class ScriptedDiagnose:
    """The watchdog's `diagnose`: an `agent_unresponsive` diagnosis, after an optional hook."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.before_return: Hook | None = None
        self.entered = asyncio.Event()  # set by the first call

    async def __call__(self, execution_id: str) -> Diagnosis:
        self.calls.append(execution_id)
        self.entered.set()
        if self.before_return is not None:
            hook, self.before_return = self.before_return, None
            await hook()
        return make_diagnosis(execution_id, cause="agent_unresponsive")


class HookedPlaybook(RecordingPlaybook):
    """The recording playbook, with one-shot hooks after apply and after verify."""

    def __init__(self) -> None:
        super().__init__()
        self.after_apply: Hook | None = None
        self.after_verify: Hook | None = None
        self.verified = 0

    async def apply(self, ctx: PlaybookContext, params: Any) -> ApplyResult:
        result = await super().apply(ctx, params)
        if self.after_apply is not None:
            hook, self.after_apply = self.after_apply, None
            await hook()
        return result

    async def verify(self, ctx: PlaybookContext, params: Any) -> VerifyResult:
        self.verified += 1
        result = await super().verify(ctx, params)
        if self.after_verify is not None:
            hook, self.after_verify = self.after_verify, None
            await hook()
        return result


@dataclass
class Rig:
    """A watchdog (auto mode) with its fault levers; see the module docstring."""

    wd: Watchdog
    clock: FakeClock
    faults: StoreFaults
    diagnose: ScriptedDiagnose
    playbook: HookedPlaybook
    notifier: RecordingNotifier
    started: datetime = field(default_factory=lambda: T0)

    async def settle(self) -> None:
        """Wait (bounded) until no job of the watchdog runs."""
        async with asyncio.timeout(60):
            await self.wd.jobs.wait_idle()

    async def open_and_diagnose(self, execution_id: str = "run-1") -> Incident:
        opened = await self.wd.incidents.open_or_join(
            execution_id, dag_id="dag-1", source="alert", detection_source="prometheus"
        )
        assert self.wd.diagnosis.start(opened.incident) is not None
        return opened.incident

    async def incident(self, incident_id: int) -> Incident:
        return await self.wd.incidents.get(incident_id)

    async def audit(self, incident_id: int) -> list[AuditEntry]:
        return (await self.wd.incidents.detail(incident_id)).audit

    def elapsed(self) -> float:
        return (self.clock.now() - self.started).total_seconds()

    async def until_final(
        self, incident_id: int, *, step_seconds: float = 31.0, rounds: int = 40
    ) -> Incident:
        """Let fake time pass a lease at a time, reconciling after each step, until the incident is
        final or escalated; the incident then."""
        for _ in range(rounds):
            await self.settle()
            incident = await self.incident(incident_id)
            if not incident.is_open:
                return incident
            self.clock.advance(step_seconds)
            await self.wd.reconciler.reconcile_once()
        raise AssertionError(f"incident {incident_id} still {incident.status} after {self.elapsed():.0f}s")


def fault_settings(database_url: str, redis_url: str | None, **overrides: Any) -> WatchdogSettings:
    """A watchdog in auto mode with the documented defaults for leases, attempts and backoff."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "orchestrator_url": f"http://127.0.0.1:{free_port()}",
        "orchestrator_timeout_seconds": 1.0,
        "mode": Mode.AUTO,
        "api_tokens": ["fault-test-token-0123456789"],
        "approval_signing_key": "f" * 32,
        **overrides,
    }
    return WatchdogSettings(**values)


@contextlib.asynccontextmanager
async def open_rig(
    settings: WatchdogSettings, monkeypatch: pytest.MonkeyPatch, clock: FakeClock | None = None
) -> AsyncIterator[Rig]:
    """A `Rig` over `settings` (closed on exit); replicas of one test share a `clock`."""
    clock = clock or FakeClock(T0)
    diagnose = ScriptedDiagnose()
    playbook = HookedPlaybook()
    notifier = RecordingNotifier()
    wd = await build_watchdog(
        settings,
        clock=clock,
        diagnose=diagnose,
        notifier=notifier,
        policy=parse_policy(POLICY),
        registry=Registry([playbook]),
    )
    faults = StoreFaults(wd.store)
    monkeypatch.setattr(wd.store, "transaction", faults.transaction)
    try:
        yield Rig(wd, clock, faults, diagnose, playbook, notifier)
    finally:
        faults.down = False
        await wd.aclose(grace_seconds=5)


@pytest.fixture
async def rig(
    _no_pending_tasks: None, postgres_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """The production set-up: PostgreSQL and Redis (the reconciler trusts other replicas' leases)."""
    async with open_rig(fault_settings(postgres_url, redis_url), monkeypatch) as made:
        yield made
