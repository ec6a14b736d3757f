"""An explicit registry of playbooks: a plain instance, no class-level or import-time registration.

Built by `watchdog.plugins.load_plugins()` with the six built-in playbooks
(`playbooks.registry.default_registry()`) and the plugins of the `gl_watchdog.playbooks` entry
points; the watchdog's composition root (`watchdog.assembly`) passes it to
the policy check, the planner (`watchdog.planner`) and the remediation state machine
(`watchdog.remediation`), which look playbooks up by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from watchdog_sdk.errors import PlaybookError
from watchdog_sdk.playbook import Playbook

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
