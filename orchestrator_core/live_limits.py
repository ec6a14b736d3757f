"""Live limits: which `max_parallel_nodes` and `max_concurrent_executions` are in force on a replica.

Where it sits: `service.OrchestratorService` owns one `LiveLimits`; `PUT|DELETE /admin/limits` go
through `set` / `clear`, every maintenance tick and every limits read call `sync`, and the service
applies `in_force()` to the engine (node parallelism) and to its admission (concurrent runs).

In force, per limit: a value changed on this replica while the store was unavailable (`unshared`,
stored at the next `sync`), else the stored override that every replica applies (`limit_overrides`,
last writer wins), else this replica's own settings (env, config file).
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator_core.errors import BadRequest, StoreError
from orchestrator_core.records import LimitOverride
from orchestrator_core.settings import (
    MAX_CONCURRENT_EXECUTIONS_BOUND,
    MAX_PARALLEL_NODES_BOUND,
    OrchestratorSettings,
)
from orchestrator_core.store.dags import LimitRepository

log = logging.getLogger(__name__)

BOUNDS = {
    "max_parallel_nodes": MAX_PARALLEL_NODES_BOUND,
    "max_concurrent_executions": MAX_CONCURRENT_EXECUTIONS_BOUND,
}


class LiveLimits:
    """The live limits of one replica (see the module docstring)."""

    def __init__(self, settings: OrchestratorSettings, store: LimitRepository) -> None:
        self.settings = settings
        self.store = store
        self.overrides: dict[str, LimitOverride] = {}  # as last read from the store
        self.unshared: dict[str, int] = {}  # changed here while the store was down; stored at next sync

    def configured(self) -> dict[str, int]:
        return {
            "max_parallel_nodes": self.settings.max_parallel_nodes,
            "max_concurrent_executions": self.settings.max_concurrent_executions,
        }

    def in_force(self) -> tuple[int, int]:
        """(max_parallel_nodes, max_concurrent_executions) as this replica should apply them."""
        values = self.configured()
        for name in values:
            override = self.overrides.get(name)
            if name in self.unshared:
                values[name] = self.unshared[name]
            elif override is not None:
                values[name] = override.value
        return values["max_parallel_nodes"], values["max_concurrent_executions"]

    async def set(self, set_by: str, **given: int | None) -> None:
        """Store the given limits for every replica; while the store is unavailable keep them here
        (`unshared`) until it answers. `BadRequest` for a value out of its bounds."""
        values: dict[str, int] = {}
        for name, value in given.items():
            if value is None:
                continue
            bound = BOUNDS[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
                raise BadRequest(f"{name} must be an integer from 1 to {bound}", field=name)
            values[name] = value
        try:
            await self.store.set(values, set_by=set_by)
            self.overrides = await self.store.get()
        except StoreError as exc:
            self.unshared.update(values)
            log.warning("limits changed on this replica only until the store answers again: %s", exc)

    async def clear(self) -> None:
        """Drop the stored limits: every replica goes back to its own settings."""
        await self.store.clear()
        self.unshared = {}
        self.overrides = {}

    async def sync(self, set_by: str) -> None:
        """Store what changed here while the store was down, then read the stored limits."""
        if self.unshared:
            await self.store.set(self.unshared, set_by=set_by)
            log.info("limits changed during the store outage are now shared: %s", sorted(self.unshared))
            self.unshared = {}
        self.overrides = await self.store.get()

    def to_json(self) -> dict[str, Any]:
        """The `configured`, `overrides` and `unshared` parts of the limits answer."""
        return {
            "configured": self.configured(),
            "overrides": {name: o.to_json() for name, o in sorted(self.overrides.items())},
            "unshared": dict(sorted(self.unshared.items())),
        }
