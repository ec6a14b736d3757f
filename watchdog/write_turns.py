"""Whose write transaction goes next, in this process: on SQLite one at a time, the intake first.

Where it sits: `watchdog.store.WatchdogStore.transaction()` takes a turn here before it opens a write
transaction; the intake asks for an urgent one (`urgent=True`), every other writer (diagnoses, the
responder, sweeps, the reconciler, the API) for an ordinary one. Reads take no turn.

Why: SQLite has one write lock per file. Writers of one process that race for it through
`BEGIN IMMEDIATE` on several pooled connections wait in SQLite's busy handler, which sleeps in steps
of up to 100 ms, so a delivery could sit idle behind a diagnosis' write for tens of milliseconds while
the lock was free (issue 11: 73% of the intake's samples sat there, 16 distinct deliveries/s). Taking
turns in the event loop first hands the lock over at once, in an order we choose: waiting deliveries
before waiting diagnoses, so a burst of new incidents' diagnoses never starves the intake. So that the
intake under sustained load does not starve the others either, at most `urgent_streak` urgent turns
run in a row while an ordinary writer waits; then one ordinary writer goes.

On PostgreSQL (`serialize=False`) writers run concurrently and a turn is free.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

DEFAULT_URGENT_STREAK: Final = 8


class NoTurn(Exception):
    """No turn came within the wait (the writers before it took too long)."""


class WriteTurns:
    """One writer at a time when `serialize`; urgent waiters first, ordinary ones every
    `urgent_streak + 1`-th turn at the latest."""

    def __init__(self, *, serialize: bool, urgent_streak: int = DEFAULT_URGENT_STREAK) -> None:
        self.serialize = serialize
        self.urgent_streak = urgent_streak
        self._held = False
        self._streak = 0  # urgent turns given in a row while an ordinary writer waited
        self._waiting: dict[bool, deque[asyncio.Future[None]]] = {True: deque(), False: deque()}

    async def acquire(self, *, urgent: bool = False, wait_seconds: float) -> None:
        """Take the turn (at once when free, or when not serialising); `NoTurn` when none came within
        `wait_seconds`. Give it back with `release()`."""
        if not self.serialize:
            return
        try:
            async with asyncio.timeout(wait_seconds):
                await self._acquire(urgent)
        except TimeoutError:
            raise NoTurn(f"no write turn within {wait_seconds:g}s") from None

    def release(self) -> None:
        """Hand the turn to the next waiter (it stays held), or free it."""
        if not self.serialize:
            return
        nxt = self._next()
        if nxt is None:
            self._held = False
            return
        nxt.set_result(None)

    def waiting(self, *, urgent: bool) -> int:
        """Writers of that kind waiting for a turn."""
        return sum(1 for future in self._waiting[urgent] if not future.done())

    async def _acquire(self, urgent: bool) -> None:
        if not self._held:  # free: nobody waits either (a release hands the turn to a waiter)
            self._held = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[urgent].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed the turn just as it was cancelled
                self.release()
            elif future in self._waiting[urgent]:
                self._waiting[urgent].remove(future)
            raise

    def _next(self) -> asyncio.Future[None] | None:
        urgent, ordinary = self._waiting[True], self._waiting[False]
        for queue in (urgent, ordinary):
            while queue and queue[0].done():  # cancelled while waiting
                queue.popleft()
        if urgent and (not ordinary or self._streak < self.urgent_streak):
            self._streak = self._streak + 1 if ordinary else 0
            return urgent.popleft()
        self._streak = 0
        return ordinary.popleft() if ordinary else None
