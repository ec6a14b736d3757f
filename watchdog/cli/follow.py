"""Following an incident from the CLI: its audit events as they come, and a live status line.

Where it sits: used by `playbook run`, `events --follow` and `diagnose` (`watchdog.cli.incidents`,
`watchdog.cli.operate`). Polls the service (`GET /api/v1/incidents/{id}/events?after=SEQ` and the
incident itself) every `interval` seconds until the incident reaches a state the caller waits for,
or `timeout` runs out (exit 1, saying how to follow on). On a terminal in table mode a status line
shows the incident's state while waiting; with `-o json` each event is one JSON line on stdout.
The clock and the pause are injectable (`Pacer`), so tests step it without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Final

from rich.text import Text

from watchdog.cli.output import Output, cell_text
from watchdog.client import ApiClient, segment
from watchdog.exit_codes import EXIT_FAILED, CliError

SETTLED: Final = frozenset({"resolved", "escalated", "closed"})
WAITING: Final = frozenset({"awaiting_approval"})
DEFAULT_FOLLOW_SECONDS: Final = 900.0


@dataclass
class Pacer:
    """The pause between polls and the clock that bounds the wait."""

    interval: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


@dataclass
class Follower:
    """Prints one incident's events after `after`, and its state, until `done(incident)`."""

    client: ApiClient
    output: Output
    incident_id: int
    after: int | None = None
    pacer: Pacer = field(default_factory=Pacer)
    with_events: bool = True  # False: the state only (a caller that prints one document at the end)

    def events(self) -> list[dict[str, Any]]:
        """The events recorded since the last call (and moves past them)."""
        path = f"/incidents/{segment(self.incident_id)}/events"
        page = self.client.get(path, {"after": self.after})
        items: list[dict[str, Any]] = page.get("items", [])
        if page.get("next_after") is not None:
            self.after = page["next_after"]
        return items

    def show(self, event: dict[str, Any]) -> None:
        if self.output.mode == "table":
            self.output.out.print(Text(event_line(event)))
        else:
            self.output.json_line({"event": event})

    def until(self, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """Follow until `done(incident)`; the incident as last read. Exit 1 when `timeout` runs out."""
        deadline = self.pacer.clock() + timeout
        with self._status_line() as status:
            while True:
                for event in self.events() if self.with_events else ():
                    self.show(event)
                incident: dict[str, Any] = self.client.get(f"/incidents/{segment(self.incident_id)}")
                if status is not None:
                    status(f"incident {self.incident_id}: {incident['status']}")
                if done(incident):
                    return incident
                if self.pacer.clock() >= deadline:
                    raise CliError(
                        f"incident {self.incident_id} still {incident['status']} after {timeout:g}s; "
                        f"follow on with `gl-watchdog events {self.incident_id} --follow`",
                        EXIT_FAILED,
                    )
                self.pacer.sleep(self.pacer.interval)

    @contextmanager
    def _status_line(self) -> Iterator[Callable[[str], None] | None]:
        if self.output.mode != "table" or not self.output.tty:
            with nullcontext():
                yield None
            return
        with self.output.out.status(f"incident {self.incident_id}: following") as live:
            yield lambda text: live.update(text)


def event_line(event: dict[str, Any]) -> str:
    """One event as a line: when, who, what, and its data in short."""
    data = event.get("data") or {}
    detail = ", ".join(f"{k}={cell_text(v)}" for k, v in data.items())
    if len(detail) > 160:
        detail = detail[:157] + "..."
    phase = f" ({event['phase']})" if event.get("phase") else ""
    return (
        f"{cell_text(event.get('at'))}  {event.get('actor', '-')}  {event.get('kind', '-')}{phase}  {detail}"
    )


def settled_or_waiting(incident: dict[str, Any]) -> bool:
    return incident["status"] in SETTLED | WAITING
