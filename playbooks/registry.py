"""The explicit registry of playbooks: a plain instance, built by `default_registry()`.

No class-level or import-time registration: the watchdog's app assembly (and the demo, the CLI, the
tests) build a registry and pass it to the planner (`watchdog.planner`) and the remediation loop
(`watchdog.remediation`), which look playbooks up by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from playbooks.base import Playbook
from playbooks.cancel import CancelPlaybook
from playbooks.increase_node_timeout import IncreaseNodeTimeoutPlaybook
from playbooks.release_lock import ReleaseLockPlaybook
from playbooks.restart_agent import RestartAgentPlaybook
from playbooks.resume import ResumePlaybook
from playbooks.throttle_concurrency import ThrottleConcurrencyPlaybook
from watchdog_sdk.errors import PlaybookError

AnyPlaybook = Playbook[Any]


class Registry:
    """Playbooks by name."""

    def __init__(self, playbooks: list[AnyPlaybook] | None = None) -> None:
        self._playbooks: dict[str, AnyPlaybook] = {}
        for playbook in playbooks or []:
            self.add(playbook)

    def add(self, playbook: AnyPlaybook) -> None:
        """Register `playbook`; a second one with the same name is a programming error."""
        if playbook.name in self._playbooks:
            raise PlaybookError(f"playbook {playbook.name!r} is already registered")
        self._playbooks[playbook.name] = playbook

    def get(self, name: str) -> AnyPlaybook:
        """The playbook called `name`; `PlaybookError` listing the known names otherwise."""
        try:
            return self._playbooks[name]
        except KeyError:
            raise PlaybookError(f"unknown playbook {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._playbooks)

    def __iter__(self) -> Iterator[AnyPlaybook]:
        return iter(self._playbooks[name] for name in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._playbooks


def default_registry() -> Registry:
    """A new registry holding the runbook's six resolution options."""
    return Registry(
        [
            CancelPlaybook(),
            ResumePlaybook(),
            RestartAgentPlaybook(),
            ThrottleConcurrencyPlaybook(),
            ReleaseLockPlaybook(),
            IncreaseNodeTimeoutPlaybook(),
        ]
    )
