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

from watchdog.cli.output import Output, brief, cell_text
from watchdog.client import ApiClient, segment
from watchdog.exit_codes import EXIT_FAILED, CliError

SETTLED: Final = frozenset({"resolved", "escalated", "closed"})
REFUSING_CHECKS: Final = frozenset({"preconditions", "limits"})
MAX_PAGE: Final = 1000
DEFAULT_FOLLOW_SECONDS: Final = 900.0


@dataclass
class Pacer:
    """The pause between polls and the clock that bounds the wait."""

    interval: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


@dataclass
class Follower:
    """Follows one incident: prints its events after `after` (unless `with_events` is off) and keeps
    what the last poll saw: the incident's status, whether it is final, a refusal among the events,
    and (without events) the incident itself."""

    client: ApiClient
    output: Output
    incident_id: int
    after: int | None = None
    pacer: Pacer = field(default_factory=Pacer)
    with_events: bool = True  # False: the incident only (a caller that prints one document at the end)
    status: str = ""
    final: bool = False
    refusal: str | None = None
    incident: dict[str, Any] = field(default_factory=dict)

    def events(self, limit: int = 500) -> list[dict[str, Any]]:
        """The events recorded since the last call (and moves past them)."""
        path = f"/incidents/{segment(self.incident_id)}/events"
        page = self.client.get(path, {"after": self.after, "limit": limit})
        items: list[dict[str, Any]] = page.get("items", [])
        self.after = page.get("next_after", self.after)
        self.status, self.final = page.get("incident_status", self.status), bool(page.get("final"))
        for event in items:
            self.refusal = refusal_of(event) or self.refusal
        return items

    def skip_past(self) -> None:
        """Move past every event recorded so far (to follow only what comes next)."""
        while len(self.events(limit=MAX_PAGE)) == MAX_PAGE:
            pass

    def show(self, event: dict[str, Any]) -> None:
        if self.output.mode == "table":
            self.output.out.print(Text(event_line(event)))
        else:
            self.output.json_line({"event": event})

    def poll(self) -> None:
        if self.with_events:
            for event in self.events():
                self.show(event)
        else:
            self.incident = self.client.get(f"/incidents/{segment(self.incident_id)}")
            self.status = self.incident["status"]

    def until(self, done: Callable[[Follower], bool], timeout: float) -> None:
        """Poll until `done(self)`; exit 1 when `timeout` runs out first."""
        deadline = self.pacer.clock() + timeout
        with self._status_line() as status:
            while True:
                self.poll()
                if status is not None:
                    status(f"incident {self.incident_id}: {self.status}")
                if done(self):
                    return
                if self.pacer.clock() >= deadline:
                    raise CliError(
                        f"incident {self.incident_id} still {self.status} after {timeout:g}s; "
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


def refusal_of(event: dict[str, Any]) -> str | None:
    """The reason of a refused run: a `preconditions` or `limits` check that came out not ok."""
    data = event.get("data") or {}
    if event.get("kind") in REFUSING_CHECKS and event.get("phase") != "before" and data.get("ok") is False:
        return f"{event['kind']}: {data.get('reason', 'refused')}"
    return None


def event_line(event: dict[str, Any]) -> str:
    """One event as a line: when, who, what, and its data in short."""
    phase = f" ({event['phase']})" if event.get("phase") else ""
    who, what = event.get("actor", "-"), event.get("kind", "-")
    return f"{cell_text(event.get('at'))}  {who}  {what}{phase}  {brief(event.get('data'), 160)}"


def run_ended(follower: Follower) -> bool:
    """A playbook run is over: the incident settled, or the run was refused."""
    return follower.status in SETTLED or follower.refusal is not None
