"""The paging services' wire as the paging tests fake it: their URLs and keys, a respx router that
lets loopback through, what a route was sent, and a chat notifier that records what it was asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import respx

from watchdog.notifier import EscalationMessage, NotifyResult, PromptMessage

PD_URL = "https://events.pagerduty.test/v2/enqueue"
OG_URL = "https://api.opsgenie.test"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefabcdef"
GENIE_KEY = "eb243592-faa2-4ba2-a551q-1afdf565c889"


def body_of(route: respx.Route, index: int = 0) -> dict[str, Any]:
    """The JSON body of the route's `index`th call."""
    body: dict[str, Any] = json.loads(route.calls[index].request.content)
    return body


@contextmanager
def paging_wire() -> Iterator[respx.MockRouter]:
    """A respx router for the paging services; loopback (the app, the store) passes through."""
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        yield router


class RecordingChat:
    """A chat notifier that records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        self.sent.append("prompt")
        return NotifyResult(ok=True, sent=True, detail="delivered (200)", status=200)

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        self.sent.append("escalation")
        return NotifyResult(ok=True, sent=True, detail="delivered (200)", status=200)
