"""What the intake remembers between deliveries, and how many deliveries it lets at the store at once.

Where it sits: `watchdog.intake.AlertIntake` holds one of each (built by `watchdog.assembly` from the
settings); nothing else uses them.

- `KnownEpisodes`: the alert episodes (fingerprint + startsAt) this replica has seen recorded in the
  store, with what they are about and their incident: a bounded LRU. A repeat of a known episode
  (Alertmanager re-sends every repeat_interval; an HA pair delivers everything twice) is answered from
  it without touching the store. What it holds never goes stale: a recorded episode's execution, DAG
  and incident never change, and an episode, once resolved, stays resolved; a firing repeat is a
  duplicate whatever happened since, and a resolved alert is answered from memory only once the
  episode is known resolved.
- `RepeatCounts`: the repeats answered from memory, per delivery row, until they are written in one
  batch (`alert_deliveries.repeats`, `last_received_at`): counting a repeat is bookkeeping, so it
  costs no write of its own. Taken by the intake's next write, or flushed when due.
- `IntakeGate`: at most `limit` deliveries at the store at once; a delivery that cannot get in within
  `wait_seconds` is shed before anything of it is written (the API answers 503 with Retry-After).
- `GroupCommit`: the deliveries admitted while a transaction of the intake is under way are applied
  together in the next one (at most `max_size` alerts), so a burst of distinct alerts costs one
  transaction per batch instead of one per delivery (on SQLite, whose writers take turns, one
  delivery at a time was all the store could take).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Generic, TypeVar

# How long the intake must have been without deliveries for `IntakeGate.quiet()`: longer than the gap
# between one batch's answers and the next requests of a steady stream, short for anything else.
DEFAULT_SETTLE_SECONDS: Final = 0.05

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class KnownEpisode:
    """A recorded episode: its delivery row, what it is about, its incident, whether it is resolved."""

    delivery_id: int
    labels_digest: str | None
    execution_id: str | None
    incident_id: int | None
    resolved: bool


class KnownEpisodes:
    """A bounded LRU of recorded episodes, keyed by (fingerprint, startsAt)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._episodes: OrderedDict[tuple[str, datetime], KnownEpisode] = OrderedDict()

    def get(self, key: tuple[str, datetime]) -> KnownEpisode | None:
        episode = self._episodes.get(key)
        if episode is not None:
            self._episodes.move_to_end(key)
        return episode

    def remember(self, key: tuple[str, datetime], episode: KnownEpisode) -> None:
        self._episodes[key] = episode
        self._episodes.move_to_end(key)
        while len(self._episodes) > self.capacity:
            self._episodes.popitem(last=False)

    def __len__(self) -> int:
        return len(self._episodes)


class RepeatCounts:
    """Repeats answered from memory, per delivery row, not yet written."""

    def __init__(self, max_pending: int, max_age_seconds: float) -> None:
        self.max_pending = max_pending
        self.max_age_seconds = max_age_seconds
        self._pending: dict[int, tuple[int, datetime]] = {}
        self._since: float | None = None  # monotonic time of the oldest repeat not yet written

    def note(self, delivery_id: int, at: datetime, monotonic: float) -> None:
        count, _ = self._pending.get(delivery_id, (0, at))
        self._pending[delivery_id] = (count + 1, at)
        if self._since is None:
            self._since = monotonic

    def due(self, monotonic: float) -> bool:
        """Whether the counts should be written now (too many, or the oldest too old)."""
        if self._since is None:
            return False
        return len(self._pending) >= self.max_pending or monotonic - self._since >= self.max_age_seconds

    def take(self) -> dict[int, tuple[int, datetime]]:
        """Every pending count (delivery id -> (repeats, last received)), now owned by the caller."""
        pending, self._pending, self._since = self._pending, {}, None
        return pending

    def put_back(self, pending: dict[int, tuple[int, datetime]], monotonic: float) -> None:
        """Counts whose write failed: kept for the next try."""
        for delivery_id, (count, at) in pending.items():
            mine, last = self._pending.get(delivery_id, (0, at))
            self._pending[delivery_id] = (mine + count, max(at, last))
        if pending and self._since is None:
            self._since = monotonic

    def __len__(self) -> int:
        return sum(count for count, _ in self._pending.values())


class IntakeGate:
    """At most `limit` deliveries at the store at once; the others wait up to `wait_seconds`.

    Also what background work yields to: `quiet()` returns once no delivery has waited or been at the
    store for `settle_seconds` (the diagnoses of a burst's new incidents start after the burst is
    recorded, not amid it). Not at the instant the last one leaves: under a steady stream of
    deliveries the gate empties between one batch's answers and the next requests (issue 11: every
    such gap let the waiting diagnoses in, and they took the event loop from the intake)."""

    def __init__(
        self, limit: int, wait_seconds: float, *, settle_seconds: float = DEFAULT_SETTLE_SECONDS
    ) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.settle_seconds = settle_seconds
        self._slots = asyncio.Semaphore(limit)
        self._busy = 0  # deliveries waiting for a slot or holding one
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._arrived = asyncio.Event()  # set when a delivery comes to the gate

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[bool]:
        """Yields True with a slot held, or False (at once, holding nothing) when none came in time."""
        self._busy += 1
        self._quiet.clear()
        self._arrived.set()
        try:
            try:
                async with asyncio.timeout(self.wait_seconds):
                    await self._slots.acquire()
            except TimeoutError:
                yield False
                return
            try:
                yield True
            finally:
                self._slots.release()
        finally:
            self._busy -= 1
            if not self._busy:
                self._quiet.set()

    async def quiet(self, max_seconds: float) -> bool:
        """Wait until no delivery has waited or been at the store for `settle_seconds`, at most
        `max_seconds`; whether that came."""
        try:
            async with asyncio.timeout(max_seconds):
                while True:
                    await self._quiet.wait()
                    self._arrived.clear()
                    try:
                        async with asyncio.timeout(self.settle_seconds):
                            await self._arrived.wait()
                    except TimeoutError:
                        if not self._busy:  # none came within the settle time
                            return True
        except TimeoutError:
            return False


class GroupCommit(Generic[T, R]):
    """Items submitted concurrently, applied in batches by at most `concurrency` background tasks.

    `apply(items)` answers each item (a result, or the exception its submitter gets); while the
    batches under way run, new items gather for the next one, which takes them oldest first up to
    `max_size` (by `size`; the first item is always taken). One task on SQLite (its writers take turns
    anyway); on PostgreSQL several transactions run at once, each with what gathered. A submitter that
    stops waiting does not stop its item: it is applied all the same (what it writes is durable, as a
    transaction that committed).
    """

    def __init__(
        self,
        apply: Callable[[list[T]], Awaitable[list[R | BaseException]]],
        *,
        max_size: int,
        size: Callable[[T], int],
        concurrency: int,
        name: str,
    ) -> None:
        self.apply = apply
        self.max_size = max_size
        self.size = size
        self.concurrency = concurrency
        self.name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """`item`'s answer, once the batch it joined is applied."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._tasks) < self.concurrency:
            self._tasks.add(asyncio.create_task(self._run(), name=self.name))
        return await future

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                try:
                    answers: list[R | BaseException] = await self.apply([item for item, _ in batch])
                except Exception as exc:  # a bug: each submitter of the batch hears it
                    answers = [exc] * len(batch)
                except BaseException as exc:  # cancelled (shutdown): every submitter hears it
                    for _, future in [*batch, *self._pending]:
                        _answer(future, exc)
                    self._pending = []
                    raise
                for (_, future), answer in zip(batch, answers, strict=True):
                    _answer(future, answer)
        finally:  # at once, with nothing pending: an item submitted after this starts a task of its own
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        taken, total = 0, 0
        for item, _ in self._pending:
            total += self.size(item)
            if taken and total > self.max_size:
                break
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch


def _answer(future: asyncio.Future[R], answer: R | BaseException) -> None:
    if future.done():  # its submitter stopped waiting
        return
    if isinstance(answer, asyncio.CancelledError):
        future.cancel()
    elif isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)
