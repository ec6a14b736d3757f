"""The action ledger over the store: each playbook step recorded before it runs and after it ends.

`StoreLedger` implements `watchdog_sdk.ledger.ActionLedger` over the store's `actions` table (unique
idempotency key per incident, playbook and step) and audits every entry. The remediation state
machine (`watchdog.remediation`) hands one to each playbook it runs (in its `PlaybookContext`), which
is what makes `apply()` idempotent and restart safe (`watchdog_sdk.playbook.run_step`).
"""

from __future__ import annotations

from typing import Any

from watchdog.store import WatchdogStore
from watchdog_sdk.ledger import ActionState, LedgerEntry


class StoreLedger:
    """`watchdog_sdk.ledger.ActionLedger` over the store's `actions` table (unique idempotency key)."""

    def __init__(
        self, store: WatchdogStore, approval_id: str | None = None, *, actor: str = "watchdog"
    ) -> None:
        self._store = store
        self.approval_id = approval_id
        self.actor = actor

    async def get(self, key: str) -> LedgerEntry | None:
        async with self._store.transaction() as tx:
            action = await tx.get_action(key)
        if action is None:
            return None
        return LedgerEntry(
            key=key,
            incident_id=action.incident_id,
            playbook=action.playbook,
            step=action.step,
            state=ActionState(action.state),
            request=dict(action.params or {}),
            result=dict(action.result or {}),
        )

    async def start(
        self, key: str, incident_id: int, playbook: str, step: str, request: dict[str, Any]
    ) -> bool:
        async with self._store.transaction() as tx:
            action = await tx.insert_action(
                incident_id=incident_id,
                playbook=playbook,
                step=step,
                idempotency_key=key,
                params=request,
                approval_id=self.approval_id,
            )
            if action is None:
                return False
            await tx.add_audit(
                incident_id,
                "action",
                phase="before",
                actor=self.actor,
                data={"playbook": playbook, "step": step, "key": key, "request": request},
            )
        return True

    async def restart(self, key: str) -> bool:
        entry = await self.get(key)
        if entry is None or entry.state is not ActionState.STARTED:
            return False
        async with self._store.transaction() as tx:
            await tx.add_audit(
                entry.incident_id,
                "action",
                phase="before",
                actor=self.actor,
                data={"playbook": entry.playbook, "step": entry.step, "key": key, "rerun": True},
            )
        return True

    async def finish(self, key: str, state: ActionState, result: dict[str, Any]) -> None:
        async with self._store.transaction() as tx:
            action = await tx.get_action(key)
            if action is None:
                return
            await tx.finish_action(action.id, state.value, result)
            await tx.add_audit(
                action.incident_id,
                "action",
                phase="after",
                actor=self.actor,
                data={
                    "playbook": action.playbook,
                    "step": action.step,
                    "key": key,
                    "state": state.value,
                    **result,
                },
            )
