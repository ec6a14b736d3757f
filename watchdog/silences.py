"""Alertmanager silences, read by the watchdog before it prompts or acts on an incident.

Used by `watchdog.suppression` (the gate the responder asks after a diagnosis). Reads
`GET {alertmanager_url}/api/v2/silences` with a timeout, keeps the answer for `cache_seconds` (the
injected clock's monotonic time), and evaluates each silence's matchers the way Alertmanager does:

- `=` / `!=` compare the label's value; `=~` / `!~` match a regular expression anchored at both ends
  (`^(?:re)$`); a label the incident does not carry counts as the empty string;
- a silence covers the labels when every one of its matchers matches;
- only silences active now count: `startsAt <= now < endsAt` (Alertmanager's own `status.state` is
  not trusted alone, so an expired silence the cache still holds stops covering on time).

An unreachable Alertmanager, a timeout, an error status or an answer that is not a list of silences
raises `AlertmanagerUnavailable` (a `BackendUnavailable`): the gate applies the
`silence_check_failure` policy and counts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from gl_common.clock import Clock
from watchdog_sdk.errors import BackendUnavailable


class AlertmanagerUnavailable(BackendUnavailable):
    """Alertmanager's silences could not be read (unreachable, timeout, error status, bad answer)."""


@dataclass(frozen=True)
class Matcher:
    """One Alertmanager matcher: `name` `=`|`!=`|`=~`|`!~` `value`."""

    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def matches(self, labels: dict[str, str]) -> bool:
        """True when the label (empty when missing) satisfies this matcher."""
        actual = labels.get(self.name, "")
        found = re.fullmatch(self.value, actual) is not None if self.is_regex else actual == self.value
        return found if self.is_equal else not found

    def __str__(self) -> str:
        op = {(False, True): "=", (False, False): "!=", (True, True): "=~", (True, False): "!~"}
        return f'{self.name}{op[self.is_regex, self.is_equal]}"{self.value}"'


@dataclass(frozen=True)
class Silence:
    """One silence as Alertmanager's API v2 returns it."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str = ""
    comment: str = ""

    def active_at(self, now: datetime) -> bool:
        """True when `now` is inside the silence: startsAt <= now < endsAt."""
        return self.starts_at <= now < self.ends_at

    def covers(self, labels: dict[str, str]) -> bool:
        """True when every matcher matches `labels` (a silence without matchers covers nothing)."""
        return bool(self.matchers) and all(m.matches(labels) for m in self.matchers)

    def describe(self) -> dict[str, Any]:
        """What the incident's audit records about the silence."""
        return {
            "kind": "silence",
            "id": self.id,
            "matchers": [str(m) for m in self.matchers],
            "ends_at": self.ends_at.isoformat(),
            "created_by": self.created_by,
            "comment": self.comment,
        }


def parse_silence(item: Any) -> Silence:
    """A silence from its API v2 JSON (ValueError/KeyError/TypeError/re.error when it is not one)."""
    matchers = tuple(
        Matcher(
            name=str(m["name"]),
            value=str(m["value"]),
            is_regex=bool(m.get("isRegex", False)),
            is_equal=bool(m.get("isEqual", True)),
        )
        for m in item["matchers"]
    )
    for matcher in matchers:
        if matcher.is_regex:
            re.compile(matcher.value)
    return Silence(
        id=str(item["id"]),
        matchers=matchers,
        starts_at=datetime.fromisoformat(item["startsAt"]),
        ends_at=datetime.fromisoformat(item["endsAt"]),
        created_by=str(item.get("createdBy", "")),
        comment=str(item.get("comment", "")),
    )


class AlertmanagerSilences:
    """The silences of one Alertmanager, read through its API v2 and cached briefly."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        timeout_seconds: float = 5.0,
        cache_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self.cache_seconds = cache_seconds
        self._transport = transport
        self._cached: tuple[float, list[Silence]] | None = None

    async def covering(self, labels: dict[str, str]) -> list[Silence]:
        """The silences active now that cover `labels` (AlertmanagerUnavailable when unreadable)."""
        now = self.clock.now()
        return [s for s in await self.silences() if s.active_at(now) and s.covers(labels)]

    async def silences(self) -> list[Silence]:
        """Every silence Alertmanager holds (from the cache when it is younger than cache_seconds)."""
        fresh = self.clock.monotonic()
        if self._cached is not None and fresh - self._cached[0] < self.cache_seconds:
            return self._cached[1]
        silences = await self._fetch()
        self._cached = (fresh, silences)
        return silences

    def forget(self) -> None:
        """Drop the cache (the next call reads Alertmanager)."""
        self._cached = None

    async def _fetch(self) -> list[Silence]:
        endpoint = f"{self.url}/api/v2/silences"
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds, transport=self._transport) as client:
                response = await client.get(endpoint)
        except httpx.HTTPError as exc:
            raise AlertmanagerUnavailable(f"GET {endpoint} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise AlertmanagerUnavailable(f"GET {endpoint} answered {response.status_code}")
        try:
            items = response.json()
            if not isinstance(items, list):
                raise TypeError(f"expected a list, got {type(items).__name__}")
            return [parse_silence(item) for item in items]
        except (ValueError, KeyError, TypeError, re.error) as exc:
            raise AlertmanagerUnavailable(f"GET {endpoint}: not a list of silences: {exc}") from exc
