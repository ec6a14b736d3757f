"""The history of node durations: one `DurationSketch` per (dag_id, node_id, agent_id), in memory and
in the store, shared by the replicas.

Where it sits: `progress.RunSignals` owns one `NodeHistory` per engine and adds the duration of every
node that completes successfully (`add`, called from the node runner through the run's signals);
the service's maintenance tick calls `flush`, which merges what this replica saw since its last flush
into the stored sketches (`store.signals.SignalRepository.merge_durations`, in one transaction); the
API reads `sketches` / `of_dag` (the trace's and the running nodes' `normal_duration`,
`GET /dags/{dag_id}/node-durations`).

Sharing: every replica merges its new durations into the store (sketches merge exactly), and every
read takes the stored sketches — parsed once per stored revision, then from the cache — plus this
replica's durations not merged yet. So an answer covers every replica's completions up to their last
tick. A replica that dies loses the durations of at most its last tick.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from dataclasses import dataclass

from gl_common.quantiles import DurationSketch
from orchestrator_core.store.signals import DurationKey, SignalRepository, StoredSketch

log = logging.getLogger(__name__)

FOLD_EVERY = 256  # durations of one node kept as they came before they are added to its sketch


@dataclass(frozen=True)
class NormalDuration:
    """A node's history as the API shows it next to its current duration."""

    count: int
    p50_seconds: float | None
    p95_seconds: float | None
    p99_seconds: float | None

    @classmethod
    def of(cls, sketch: DurationSketch) -> NormalDuration:
        return cls(sketch.count, sketch.quantile(0.5), sketch.quantile(0.95), sketch.quantile(0.99))

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "p50_seconds": self.p50_seconds,
            "p95_seconds": self.p95_seconds,
            "p99_seconds": self.p99_seconds,
        }


class NodeHistory:
    """Durations of completed nodes (see the module docstring)."""

    def __init__(self, store: SignalRepository) -> None:
        self.store = store
        self._pending: dict[DurationKey, DurationSketch] = {}
        # Durations as they come (an append on the node's path), folded into `_pending` in bulk.
        self._raw: dict[DurationKey, list[float]] = {}
        self._parsed: dict[DurationKey, tuple[int, DurationSketch]] = {}

    def add(self, key: DurationKey, seconds: float) -> None:
        """Count one successful duration of the node `key` (merged into the store at the next flush)."""
        raw = self._raw.get(key)
        if raw is None:
            raw = self._raw[key] = []
        raw.append(seconds)
        if len(raw) >= FOLD_EVERY:
            self._fold(key, raw)

    def _fold(self, key: DurationKey, raw: list[float]) -> None:
        sketch = self._pending.get(key)
        if sketch is None:
            sketch = self._pending[key] = DurationSketch()
        for seconds in raw:
            if math.isfinite(seconds):  # a clock gone wrong must not stop every later flush
                sketch.add(max(0.0, seconds))
        raw.clear()

    def _fold_all(self) -> None:
        for key, raw in self._raw.items():
            self._fold(key, raw)
        self._raw.clear()

    @property
    def pending(self) -> int:
        """Nodes with durations not merged into the store yet."""
        return len(self._pending.keys() | {key for key, raw in self._raw.items() if raw})

    async def flush(self) -> int:
        """Merge the durations seen here since the last flush into the store; how many nodes. On a
        store failure they stay pending (merged with newer ones) and the error is raised."""
        self._fold_all()
        pending, self._pending = self._pending, {}
        try:
            await self.store.merge_durations(pending)
        except BaseException:
            for key, sketch in pending.items():
                newer = self._pending.get(key)
                if newer is not None:
                    sketch.merge(newer)
                self._pending[key] = sketch
            raise
        return len(pending)

    async def sketches(self, keys: Collection[DurationKey]) -> dict[DurationKey, DurationSketch]:
        """The histories of `keys` (those with any): stored plus not yet merged."""
        self._fold_all()
        return self._with_pending(await self.store.durations(keys), keys)

    async def of_dag(self, dag_id: str) -> dict[DurationKey, DurationSketch]:
        """Every history of the DAG's nodes."""
        self._fold_all()
        mine = [key for key in self._pending if key[0] == dag_id]
        return self._with_pending(await self.store.durations_of_dag(dag_id), mine)

    def _with_pending(
        self, stored: list[StoredSketch], keys: Collection[DurationKey]
    ) -> dict[DurationKey, DurationSketch]:
        found = {row.key: self._parse(row) for row in stored}
        for key in keys:
            local = self._pending.get(key)
            if local is None:
                continue
            combined = DurationSketch(local.relative_accuracy, local.max_bins)
            if key in found:
                combined.merge(found[key])
            combined.merge(local)
            found[key] = combined
        return {key: sketch for key, sketch in found.items() if sketch.count}

    def _parse(self, row: StoredSketch) -> DurationSketch:
        cached = self._parsed.get(row.key)
        if cached is not None and cached[0] == row.revision:
            return cached[1]
        try:
            sketch = DurationSketch.from_json(row.sketch)
        except ValueError as exc:
            log.error("the stored duration history of %s is unreadable: %s", "/".join(row.key), exc)
            sketch = DurationSketch()
        self._parsed[row.key] = (row.revision, sketch)
        return sketch
