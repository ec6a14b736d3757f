"""Ownership: the runs this replica owns, each under its Redis (or in-process) lock and a supervisor.

Where it sits: `service.OrchestratorService` owns one `Ownership`. Admission, resume and takeover
start a run through `with_lock` (take the lock, hand its fencing token to the engine, own the run);
the maintenance tick calls `renew_once`; shutdown calls `stop_all`. It uses the `engine.Engine` to
wait for, interrupt and detach runs and the `locks.LockBackend` for leases.

- When an owned run's task ends, the engine tells `run_ended` (`Engine.on_run_end`, wired by the
  service), which starts a short task that releases the lock and then calls `after_run` (the service
  admits the next queued run there). Nothing waits, and no callback is kept, per run that goes on: at
  10,000 held runs a waiting task per run was ~1.5 KB of memory each.
- `renew_once` extends the owned locks `RENEW_BATCH` at a time, one round trip each
  (`LockBackend.renew_many`), and lets the event loop serve requests between two batches: at 10,000
  held runs one pass over all of them held the loop ~100 ms, and the API's reads waited behind it
  (issue 11). A lock found
  expired that nobody took since is set again unchanged (`retake_many`): the replica was late, the run
  is still its own. When a lock is held by someone else, or cannot be renewed before it could expire
  (the backend unreachable for a TTL less one tick), the replica self-fences: it stops the run and
  records it `interrupted` (resumable), or only detaches when another owner already claimed it —
  before another replica can take the run over, so it never runs twice at once.
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

# Leases renewed per round trip; the event loop serves other work between two of them.
RENEW_BATCH = 1000


_WHY = {"lost": "lost", "unrenewable": "could not be renewed"}


@dataclass(slots=True)
class _Owned:
    lease: Lease
    last_renewed: float


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
        on_fenced: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.locks = locks
        self.run_log = run_log
        self._monotonic = monotonic
        self._tick_interval = tick_interval
        self._after_run = after_run
        self._on_fenced = on_fenced
        self.owned: dict[str, _Owned] = {}
        # The tasks that let go of an ended run, until they return: one may still be admitting the
        # next queued run, and shutdown must wait for it before closing the store.
        self._leaving: set[asyncio.Task[None]] = set()
        self._stopped = False

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
        """Renew every owned lock, `RENEW_BATCH` per round trip; self-fence the runs whose lock is lost
        or could not be renewed before it could expire. Returns the fenced ids.

        A lock the renewal finds gone (it expired: this replica was too slow, not refused) is set
        again unchanged when nobody took it meanwhile (`retake_many`, one more round trip for all of
        them): the run's token is still the newest in the store, since a replica that took the run over
        would hold the lock. Only a lock held by someone else, or not renewed for a TTL less one tick,
        stops its run here.
        """
        entries = list(self.owned.items())
        gone: list[tuple[str, _Owned]] = []
        doomed: list[tuple[str, str]] = []
        for first in range(0, len(entries), RENEW_BATCH):
            if first:
                await asyncio.sleep(0)  # the API's requests go between two batches
            await self._renew_batch(entries[first : first + RENEW_BATCH], gone, doomed)
        if gone:
            doomed += await self._retake(gone, self.settings.lock_ttl_seconds)
        fenced = []
        for execution_id, reason in doomed:
            if execution_id in self.owned:
                fenced.append(execution_id)
                await self._self_fence(execution_id, reason)
        return fenced

    async def _renew_batch(
        self, entries: list[tuple[str, _Owned]], gone: list[tuple[str, _Owned]], doomed: list[tuple[str, str]]
    ) -> None:
        """Renew `entries` in one round trip; add to `gone` the locks found expired, to `doomed` the runs
        whose lock could not be renewed and could expire before the next tick."""
        ttl = self.settings.lock_ttl_seconds
        sent = self._monotonic()  # Redis extends from when it gets the request: this or later
        try:
            answers: list[bool] | None = await self.locks.renew_many([o.lease for _, o in entries], ttl)
        except LockBackendUnavailable as exc:
            log.warning("cannot renew %d ownership locks: %s", len(entries), exc)
            answers = None
        now = self._monotonic()
        for index, (execution_id, owned) in enumerate(entries):
            if self.owned.get(execution_id) is not owned:
                continue  # ended, and its lock released, while the renewal was under way
            if answers is None:
                if now - owned.last_renewed >= ttl - self._tick_interval():
                    # It could expire (and another replica take the run over) before the next
                    # attempt: the run stops now rather than run twice at once.
                    doomed.append((execution_id, "unrenewable"))
                continue  # transient: the lock is still ours, and the next tick comes before it ends
            if answers[index]:
                owned.last_renewed = sent
            else:
                gone.append((execution_id, owned))

    async def _retake(self, gone: list[tuple[str, _Owned]], ttl: float) -> list[tuple[str, str]]:
        """Set again the expired locks nobody took; the (id, reason) of the runs that must stop."""
        sent = self._monotonic()
        try:
            taken = await self.locks.retake_many([owned.lease for _, owned in gone], ttl)
        except LockBackendUnavailable as exc:
            log.warning("cannot retake %d expired ownership locks: %s", len(gone), exc)
            return [(execution_id, "lost") for execution_id, _ in gone]
        doomed = []
        for (execution_id, owned), again in zip(gone, taken, strict=True):
            if again:
                owned.last_renewed = sent
                log.warning("ownership lock of %s had expired; nobody took it: set again", execution_id)
            else:
                doomed.append((execution_id, "lost"))
        return doomed

    def _run_tasks(self) -> list[asyncio.Task[object]]:
        """The tasks of the owned runs that still go on here."""
        tasks: list[asyncio.Task[object]] = []
        for execution_id in self.owned:
            executor = self.engine.executor(execution_id)
            if executor is not None and executor.task is not None and not executor.task.done():
                tasks.append(executor.task)
        return tasks

    async def stop_all(self, grace: float) -> list[str]:
        """Shutdown: give the owned runs `grace` seconds, interrupt what is left (resumable), release
        every lock, and wait for the runs let go of. Returns the ids left `interrupted`."""
        running = self._run_tasks()
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
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
        remaining = self._run_tasks()
        if remaining:
            await asyncio.wait(remaining, timeout=max(5.0, self.settings.lock_ttl_seconds))
        await asyncio.sleep(0)  # the done-callbacks of the runs that just ended start their leaving
        self._stopped = True  # a run ending from now on is not let go of by a task: done below
        for owned in list(self.owned.values()):
            await self.release(owned.lease)
        self.owned.clear()
        if self._leaving:  # runs that ended just before: their admission pass is a store write
            await asyncio.wait(self._leaving, timeout=self.settings.db_timeout_seconds)
            for task in self._leaving:
                task.cancel()
            await asyncio.gather(*self._leaving, return_exceptions=True)
        return interrupted

    async def release(self, lease: Lease) -> None:
        try:
            await self.locks.release(lease)
        except LockBackendUnavailable as exc:  # the TTL frees it anyway
            log.warning("could not release lock of %s: %s", lease.execution_id, exc)

    def _own(self, lease: Lease) -> None:
        """Own a run that `start` launched; `run_ended` lets go of it once its task ends."""
        self.owned[lease.execution_id] = _Owned(lease, self._monotonic())
        executor = self.engine.executor(lease.execution_id)
        if executor is None or executor.task is None or executor.task.done():
            self.run_ended(lease.execution_id)  # it ended already: the engine told nobody

    def run_ended(self, execution_id: str) -> None:
        """A local run's task ended: release its lock and admit, in a task of its own."""
        if self._stopped:
            return  # shutdown releases every lock itself
        task = asyncio.get_running_loop().create_task(
            self._leave(execution_id, self.owned.get(execution_id)), name=f"leave-{execution_id}"
        )
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _leave(self, execution_id: str, owned: _Owned | None) -> None:
        if owned is not None and self.owned.get(execution_id) is owned:
            del self.owned[execution_id]
            await self.release(owned.lease)
        await self._after_run(execution_id)

    async def _self_fence(self, execution_id: str, reason: str) -> None:
        self.owned.pop(execution_id, None)
        why = _WHY[reason]
        self._on_fenced(reason)
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
