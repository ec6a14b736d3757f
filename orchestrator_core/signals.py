"""What a run tells about its nodes besides their trace: a node started running, a node completed
(its duration, for the node's history), an agent reported progress. The interface, and its no-op.

Where it sits: at the bottom of the orchestrator with the records, so that `agents.AgentContext`
(`report_progress`), `run_state.RunState` and `nodes.NodeRunner` can call it. The engine gives every
run its `progress.RunSignals` (which keeps progress in memory, writes running nodes to the store and
feeds `node_history.NodeHistory`); a run built without one gets `NO_SIGNALS`, which ignores it all.
`check_progress` is the one validation of a progress report (the REST route's model says the same).
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from datetime import datetime
from typing import Protocol

MAX_PROGRESS_MESSAGE = 500


class RunningNode(Protocol):
    """What the signals read of a running node (`run_state.NodeState` is one)."""

    @property
    def node_id(self) -> str: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def attempt_count(self) -> int: ...
    @property
    def started_at(self) -> datetime | None: ...


class RunIdentity(Protocol):
    """Which run a node belongs to (`run_state.RunState` is one)."""

    @property
    def execution_id(self) -> str: ...
    @property
    def dag_id(self) -> str: ...
    @property
    def owner(self) -> str | None: ...
    @property
    def fencing_token(self) -> int: ...


def check_progress(message: str | None, fraction: float | None) -> None:
    """Raise ValueError naming the problem unless `message` and `fraction` make a progress report."""
    if message is not None:
        if not isinstance(message, str):
            raise ValueError(f"message must be a string or None, not {type(message).__name__}")
        if len(message) > MAX_PROGRESS_MESSAGE:
            raise ValueError(f"message has {len(message)} characters, at most {MAX_PROGRESS_MESSAGE}")
        if any((ord(c) < 32 and c not in "\t\n") or c == "\x7f" for c in message):
            raise ValueError("message holds a control character")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ValueError(f"fraction must be a number from 0 to 1 or None, not {fraction!r}")
        if not math.isfinite(fraction) or not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be from 0 to 1, not {fraction!r}")


class NodeSignals:
    """The signals of a run's nodes; this base ignores them (`NO_SIGNALS`)."""

    def started_nodes(self, run: RunIdentity) -> MutableMapping[str, RunningNode]:
        """Where `run` puts each of its nodes that starts running (its first attempt), by node id: asked
        once, as the run is built, so that a node's start is one dict entry (this base: a dict nobody
        reads)."""
        return {}

    def node_completed(self, key: tuple[str, str, str], seconds: float) -> None:
        """A node completed successfully after `seconds` (all its attempts); `key` is its
        `(dag_id, node_id, agent_id)`, the run plan's tuple (`plan.RunPlan.history_keys`)."""

    def progress(self, execution_id: str, node_id: str, message: str | None, fraction: float | None) -> None:
        """An in-process agent reported progress of the node it runs (already checked)."""


NO_SIGNALS = NodeSignals()
