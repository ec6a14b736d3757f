"""Admission: which queued runs this replica starts, which it resumes, which orphaned runs it adopts.

Where it sits: `service.OrchestratorService` owns one `Admission` and calls it from `submit`, `resume`,
the runs maintenance loop (`pump_once`, `takeover_once`), a live limit change and the end of every
owned run; shutdown calls `stop`. It reads the store's queue and running-run indexes through the
`engine.Engine`, takes each run's lock through `ownership.Ownership.with_lock` and asks the
`locks.LockBackend` whether an owner is alive.

Admission (FIFO): the queue is the store, shared by every replica; `pump_once` starts the oldest queued
runs (by `created_at`) while this replica owns fewer than `max_concurrent` runs. Takeover: `takeover_once`
resumes the `running` runs of owners whose heartbeat is gone once their lock is free. One pass at a
time (`lock`), so that shutdown can wait for the pass under way and then admit nothing more.

`pump_soon` (a submit, a run's end) needs only a pass that reads the queue after its run was recorded:
it joins the pass waiting for the lock, if one has not read the queue yet, instead of queueing one
more behind it, so that 32 submits at once cost a pass or two, not 32.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from orchestrator_core.engine import Engine
from orchestrator_core.errors import InvalidState, OrchestratorError
from orchestrator_core.locks import Lease, LockBackend
from orchestrator_core.logs import RunLog
from orchestrator_core.ownership import Ownership
from orchestrator_core.records import ExecutionRecord, ResumeResult
from orchestrator_core.store.executions import RunHead

# Admission reads the queue a page at a time (at most the room here), and at most this many pages per
# pass: runs that other replicas are starting at the same moment are skipped, not waited for.
ADMISSION_PAGE = 500
ADMISSION_PAGES = 4


class Admission:
    """Admission and takeover for one replica (see the module docstring)."""

    def __init__(
        self,
        replica_id: str,
        *,
        engine: Engine,
        locks: LockBackend,
        ownership: Ownership,
        run_log: RunLog,
        max_concurrent: int,
    ) -> None:
        self.replica_id = replica_id
        self.engine = engine
        self.locks = locks
        self.ownership = ownership
        self.run_log = run_log
        self.max_concurrent = max_concurrent
        self.lock = asyncio.Lock()
        self.accepting = True
        self.queued = 0  # the queue's length as last counted
        # The `pump_soon` pass waiting for the lock, until it reads the queue; its outcome (the error
        # it raised, or None) when it ends.
        self._opening: asyncio.Future[OrchestratorError | None] | None = None

    def room(self) -> int:
        return self.max_concurrent - len(self.ownership)

    async def stop(self) -> None:
        """Admit nothing more; a pass under way (a run being started) ends first, so that its run is
        owned when shutdown looks at the owned runs."""
        self.accepting = False
        async with self.lock:
            pass

    async def count_queued(self) -> int:
        self.queued = await self.engine.store.executions.count_status("queued")
        return self.queued

    async def pump_once(self) -> list[str]:
        """Start the oldest queued runs while there is room here. Returns the ids started.

        The queue is read with a query of its own, oldest first, a page the size of the room at a time
        (a run another replica is starting meanwhile is skipped and the next page read), and counted:
        however many runs are queued, the oldest are admitted first and `queued_executions` is the
        queue's length (a `COUNT` unless the pass read the queue to its end: then the runs it left).
        """
        return await self._pass(None)

    async def pump_soon(self) -> None:
        """A pass that reads the queue after now: the one waiting to start, if any, else a new one."""
        opening = self._opening
        if opening is not None:
            error = await asyncio.shield(opening)
            if error is not None:
                raise error
            return
        self._opening = opening = asyncio.get_running_loop().create_future()
        outcome: OrchestratorError | None = None
        try:
            await self._pass(opening)
        except OrchestratorError as exc:
            outcome = exc
            raise
        finally:
            if self._opening is opening:
                self._opening = None
            opening.set_result(outcome)

    async def _pass(self, opening: asyncio.Future[OrchestratorError | None] | None) -> list[str]:
        started: list[str] = []
        async with self.lock:
            if opening is not None and self._opening is opening:
                self._opening = None  # reading now: a run recorded from here on needs the next pass
            if not self.accepting:
                return started
            after: tuple[datetime, str] | None = None
            left = 0  # runs read and not started here (being started by another replica)
            for _ in range(ADMISSION_PAGES):
                limit = min(self.room(), ADMISSION_PAGE)
                if limit <= 0 or not self.accepting:
                    break
                page = await self.engine.store.executions.oldest_queued(limit, after=after)
                before = len(started)
                for head in page:
                    if not self.accepting or self.room() <= 0:
                        break
                    if await self._start(head):
                        started.append(head.execution_id)
                left += len(page) - (len(started) - before)
                if len(page) < limit:
                    self.queued = left  # the queue's end was read: nothing else waits
                    return started
                after = (page[-1].created_at, page[-1].execution_id)
            await self.count_queued()
        return started

    async def resume(self, execution_id: str) -> ResumeResult:
        """Resume a stopped run here from its checkpoints, or queue it when there is no room here."""
        async with self.lock:
            record = await self.engine.get_execution(execution_id)
            if record.status == "running":
                raise InvalidState(f"execution {execution_id} is running; only a stopped run can be resumed")
            if self.room() <= 0:
                queued = await self.engine.queue_resume(execution_id)
                self.queued += 1
                self.run_log.info(
                    f"resume queued: {len(self.ownership)} of {self.max_concurrent} runs going here",
                    execution_id=execution_id,
                    dag_id=record.dag_id,
                )
                return queued
            result = await self.ownership.with_lock(
                execution_id,
                lambda lease: self.engine.resume(
                    execution_id, owner=self.replica_id, fencing_token=lease.token
                ),
                after=record.fencing_token,
            )
            if result is None:
                holder = await self.locks.holder(execution_id)
                owner = holder.owner if holder is not None else "another replica"
                raise InvalidState(f"execution {execution_id} is locked by {owner}")
        return result

    async def takeover_once(self) -> list[str]:
        """Resume `running` runs whose owner is gone (lock expired). Returns the ids taken over.

        Candidates, read from the store's index of running runs by owner: the runs of owners whose
        heartbeat is gone, and this replica's own runs that it does not run (a restarted process with
        the same replica id, or a run it lost track of). A live owner's runs are its own to keep or to
        fence. Each candidate is taken over only once its lock is free (the old owner's TTL passed).
        """
        adopted: list[str] = []
        async with self.lock:
            if not self.accepting or self.room() <= 0:
                return adopted
            orphaned = await self._orphaned_owners()
            if not orphaned:
                return adopted
            local = set(self.engine.local_executions()) | set(self.ownership.ids())
            candidates = await self.engine.store.executions.running_of(orphaned, self.room() + len(local))
            for record in candidates:
                if record.execution_id in local:
                    continue
                if self.room() <= 0:
                    break
                if await self._adopt(record):
                    adopted.append(record.execution_id)
        return adopted

    async def _orphaned_owners(self) -> list[str | None]:
        """Owners of running runs that nobody runs: gone (no heartbeat), or this replica's runs that it
        does not hold (more in the store than owned here)."""
        orphaned: list[str | None] = []
        for owner, count in (await self.engine.store.executions.running_owners()).items():
            if owner == self.replica_id:
                if count > len(self.ownership):
                    orphaned.append(owner)
            elif owner is None or not await self.locks.is_alive(owner):
                orphaned.append(owner)
        return orphaned

    async def _adopt(self, record: RunHead) -> bool:
        """Take over one orphaned run once its lock is free; whether it now runs here."""
        if await self.locks.holder(record.execution_id) is not None:
            return False
        result = await self.ownership.with_lock(
            record.execution_id,
            lambda lease: self.engine.resume(
                record.execution_id, owner=self.replica_id, fencing_token=lease.token, takeover=True
            ),
            after=record.fencing_token,
            declined="takeover",
        )
        if result is None:
            return False
        self.run_log.warning(
            f"took over execution from {record.owner or 'unknown owner'} (lock expired)",
            execution_id=record.execution_id,
            dag_id=record.dag_id,
            previous_owner=record.owner,
            nodes_skipped=result.nodes_skipped,
            nodes_remaining=result.nodes_remaining,
        )
        return True

    async def _start(self, head: RunHead) -> bool:
        async def start(lease: Lease) -> ExecutionRecord | None:
            if not self.accepting:  # shutdown began meanwhile: leave the run queued for another replica
                return None
            return await self.engine.start_execution(
                head.execution_id, owner=self.replica_id, fencing_token=lease.token
            )

        return (
            await self.ownership.with_lock(
                head.execution_id, start, after=head.fencing_token, declined="start"
            )
            is not None
        )
