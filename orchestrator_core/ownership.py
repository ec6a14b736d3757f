"""Ownership: the runs this replica owns, each under its Redis (or in-process) lock and a supervisor.

Where it sits: `service.OrchestratorService` owns one `Ownership`. Admission, resume and takeover
start a run through `with_lock` (take the lock, hand its fencing token to the engine, own the run);
the maintenance tick calls `renew_once`; shutdown calls `stop_all`. It uses the `engine.Engine` to
wait for, interrupt and detach runs and the `locks.LockBackend` for leases.

- Every owned run has a supervisor task that waits for the run to end, releases the lock, and then
  calls `after_run` (the service admits the next queued run there).
- `renew_once` extends every owned lock; when a lock is lost (renewal refused) or cannot be renewed
  before it could expire (the backend unreachable for a TTL less one tick), the replica self-fences:
  it stops the run and records it `interrupted` (resumable), or only detaches when another owner
  already claimed it — before another replica can take the run over, so it never runs twice at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from orchestrator_core.engine import Engine
from orchestrator_core.errors import (
    InvalidState,
    LockBackendUnavailable,
    NotFound,
    OrchestratorError,
    StaleFencingToken,
)
from orchestrator_core.locks import Lease, LockBackend
from orchestrator_core.logs import RunLog
from orchestrator_core.settings import OrchestratorSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Owned:
    lease: Lease
    last_renewed: float
    supervisor: asyncio.Task[None] | None = None


class Ownership:
    """The runs one replica owns (see the module docstring)."""

    def __init__(
        self,
        settings: OrchestratorSettings,
        *,
        engine: Engine,
        locks: LockBackend,
        run_log: RunLog,
        monotonic: Callable[[], float],
        tick_interval: Callable[[], float],
        after_run: Callable[[str], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.locks = locks
        self.run_log = run_log
        self._monotonic = monotonic
        self._tick_interval = tick_interval
        self._after_run = after_run
        self.owned: dict[str, _Owned] = {}
        # Every supervisor until it returns: one whose run ended has left `owned` but may still be
        # admitting the next queued run, and shutdown must wait for it before closing the store.
        self._supervisors: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.owned)

    def ids(self) -> list[str]:
        return sorted(self.owned)

    async def with_lock(
        self,
        execution_id: str,
        start: Callable[[Lease], Awaitable[T | None]],
        *,
        after: int,
        declined: str | None = None,
    ) -> T | None:
        """Take the run's ownership lock and `start` it with the lease's fencing token; then own it.

        `after` is the fencing token stored with the run (as last read): the lease's token is greater,
        so the claim succeeds on the first try after any restart of this process or of Redis.

        None, with the lock released, when another replica holds the lock, when `start` returns None,
        or (with `declined` naming the step, for the log) when the engine refuses the run as not
        startable here (finished, claimed with a newer token, gone). Any other failure releases the
        lock and propagates.
        """
        lease = await self.locks.acquire(execution_id, self.settings.lock_ttl_seconds, after=after)
        if lease is None:
            return None
        try:
            result = await start(lease)
        except (InvalidState, StaleFencingToken, NotFound) as exc:
            if declined is None:
                await self.release(lease)
                raise
            log.info("%s of %s declined: %s", declined, execution_id, exc)
            result = None
        except BaseException:
            await self.release(lease)
            raise
        if result is None:
            await self.release(lease)
            return None
        self._own(lease)
        return result

    async def renew_once(self) -> list[str]:
        """Renew every owned lock; self-fence the runs whose lock is lost. Returns the fenced ids."""
        ttl = self.settings.lock_ttl_seconds
        fenced: list[str] = []
        for execution_id, owned in list(self.owned.items()):
            try:
                renewed: bool | None = await self.locks.renew(owned.lease, ttl)
            except LockBackendUnavailable as exc:
                log.warning("cannot renew lock of %s: %s", execution_id, exc)
                renewed = None
            if renewed:
                owned.last_renewed = self._monotonic()
                continue
            if renewed is None and self._monotonic() - owned.last_renewed < ttl - self._tick_interval():
                # Transient: the lock is still ours, and the next tick comes before it can expire.
                # Past this point it could expire (and another replica take the run over) before
                # the next attempt, so the run stops now rather than run twice at once.
                continue
            fenced.append(execution_id)
            await self._self_fence(execution_id, "lost" if renewed is False else "could not be renewed")
        return fenced

    async def stop_all(self, grace: float) -> list[str]:
        """Shutdown: give the owned runs `grace` seconds, interrupt what is left (resumable), release
        every lock, and wait for the supervisors. Returns the ids left `interrupted`."""
        supervisors = [o.supervisor for o in self.owned.values() if o.supervisor is not None]
        if supervisors and grace > 0:
            await asyncio.wait(supervisors, timeout=grace)
        interrupted: list[str] = []
        for execution_id in list(self.owned):
            try:
                await self.engine.interrupt(execution_id, reason="orchestrator replica shutting down")
                interrupted.append(execution_id)
                self.run_log.warning("execution interrupted by shutdown", execution_id=execution_id)
            except StaleFencingToken:
                await self.engine.detach(execution_id)
            except (InvalidState, NotFound):
                pass  # finished meanwhile
            except OrchestratorError as exc:
                log.error("could not interrupt %s on shutdown: %s", execution_id, exc)
        remaining = [o.supervisor for o in self.owned.values() if o.supervisor is not None]
        if remaining:
            await asyncio.wait(remaining, timeout=max(5.0, self.settings.lock_ttl_seconds))
        for owned in list(self.owned.values()):  # supervisors that did not finish: release anyway
            if owned.supervisor is not None:
                owned.supervisor.cancel()
            await self.release(owned.lease)
        pending = [o.supervisor for o in self.owned.values() if o.supervisor is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self.owned.clear()
        if self._supervisors:  # runs that ended just before: their admission pass is a store write
            await asyncio.wait(self._supervisors, timeout=self.settings.db_timeout_seconds)
            for task in self._supervisors:
                task.cancel()
            await asyncio.gather(*self._supervisors, return_exceptions=True)
        return interrupted

    async def release(self, lease: Lease) -> None:
        try:
            await self.locks.release(lease)
        except LockBackendUnavailable as exc:  # the TTL frees it anyway
            log.warning("could not release lock of %s: %s", lease.execution_id, exc)

    def _own(self, lease: Lease) -> None:
        owned = _Owned(lease, self._monotonic())
        self.owned[lease.execution_id] = owned
        owned.supervisor = asyncio.create_task(
            self._supervise(lease.execution_id, owned), name=f"supervise-{lease.execution_id}"
        )
        self._supervisors.add(owned.supervisor)
        owned.supervisor.add_done_callback(self._supervisors.discard)

    async def _supervise(self, execution_id: str, owned: _Owned) -> None:
        try:
            await self.engine.wait(execution_id)
        except OrchestratorError as exc:
            log.error("waiting for %s failed: %s", execution_id, exc)
        finally:
            if self.owned.get(execution_id) is owned:
                del self.owned[execution_id]
                await self.release(owned.lease)
        await self._after_run(execution_id)

    async def _self_fence(self, execution_id: str, why: str) -> None:
        owned = self.owned.pop(execution_id, None)
        self.run_log.error(
            f"ownership lock {why}: stopping the run here (self-fencing)", execution_id=execution_id
        )
        try:
            await self.engine.interrupt(
                execution_id, reason=f"ownership lock {why} on {self.settings.replica_id}"
            )
        except StaleFencingToken:
            await self.engine.detach(execution_id)
        except (InvalidState, NotFound):
            pass
        if owned is not None and owned.supervisor is not None:
            await asyncio.gather(owned.supervisor, return_exceptions=True)
