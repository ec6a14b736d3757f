"""The action ledger: where each step of a playbook is recorded before it runs and after it ends.

Written by `watchdog_sdk.playbook.run_step` through the `ActionLedger` protocol; the watchdog implements it
over its store's `actions` table (`watchdog.ledger`, a unique idempotency key per incident, playbook and
step), and `InMemoryLedger` serves dry runs. The ledger is what makes `apply()` idempotent and restart
safe: a step recorded as done is skipped, and one found started but unfinished is re-run only when
re-running it is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class ActionState(StrEnum):
    """State of one recorded step in the ledger (the store's `actions.state`)."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the action ledger."""

    key: str
    incident_id: int
    playbook: str
    step: str
    state: ActionState
    request: dict[str, Any]
    result: dict[str, Any]


class ActionLedger(Protocol):
    """Where steps are recorded before and after they run; implemented over the store by the watchdog."""

    async def get(self, key: str) -> LedgerEntry | None:
        """The entry with idempotency key `key`, if any."""

    async def start(
        self, key: str, incident_id: int, playbook: str, step: str, request: dict[str, Any]
    ) -> bool:
        """Record the step as started; False when an entry with that key already exists (someone won)."""

    async def restart(self, key: str) -> bool:
        """Re-run a `started` idempotent step with its recorded request; False if no longer `started`."""

    async def finish(self, key: str, state: ActionState, result: dict[str, Any]) -> None:
        """Record how the step ended."""


def idempotency_key(incident_id: int, playbook: str, step: str) -> str:
    """The unique key of one step of one playbook for one incident."""
    return f"{incident_id}:{playbook}:{step}"


class InMemoryLedger:
    """A ledger held in memory: for dry runs and one-off CLI runs that have no incident in the store."""

    def __init__(self) -> None:
        self._entries: dict[str, LedgerEntry] = {}

    async def get(self, key: str) -> LedgerEntry | None:
        return self._entries.get(key)

    async def start(
        self, key: str, incident_id: int, playbook: str, step: str, request: dict[str, Any]
    ) -> bool:
        if key in self._entries:
            return False
        self._entries[key] = LedgerEntry(
            key, incident_id, playbook, step, ActionState.STARTED, dict(request), {}
        )
        return True

    async def restart(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.state is ActionState.STARTED

    async def finish(self, key: str, state: ActionState, result: dict[str, Any]) -> None:
        entry = self._entries[key]
        self._entries[key] = LedgerEntry(
            key, entry.incident_id, entry.playbook, entry.step, state, entry.request, dict(result)
        )
