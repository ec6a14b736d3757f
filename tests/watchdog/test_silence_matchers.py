"""Alertmanager's matcher semantics as the silence client applies them, and the answers it refuses
(served by a real aiohttp server standing in for a broken Alertmanager)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.watchdog.conftest import FakeClock
from watchdog.silences import AlertmanagerSilences, AlertmanagerUnavailable, Matcher, parse_silence

LABELS = {"execution_id": "exec-1", "dag_id": "emissions-daily", "agent": "calc"}


@pytest.mark.parametrize(
    ("matcher", "matches"),
    [
        (Matcher("execution_id", "exec-1"), True),
        (Matcher("execution_id", "exec-10"), False),
        (Matcher("execution_id", "exec-1", is_equal=False), False),
        (Matcher("dag_id", "emissions-.*", is_regex=True), True),
        (Matcher("dag_id", "emissions", is_regex=True), False),  # anchored at both ends
        (Matcher("dag_id", "daily", is_regex=True), False),
        (Matcher("agent", "calc|fetch", is_regex=True, is_equal=False), False),
        (Matcher("agent", "fetch", is_regex=True, is_equal=False), True),
        (Matcher("node_id", ""), True),  # a missing label is the empty string
        (Matcher("node_id", ".+", is_regex=True), False),
        (Matcher("node_id", "", is_equal=False), False),
    ],
)
def test_matchers_follow_alertmanager(matcher: Matcher, matches: bool) -> None:
    assert matcher.matches(LABELS) is matches


def test_a_silence_is_active_from_its_start_until_just_before_its_end() -> None:
    silence = parse_silence(
        {
            "id": "s1",
            "matchers": [{"name": "agent", "value": "calc", "isRegex": False, "isEqual": True}],
            "startsAt": "2026-12-06T10:00:00.000Z",
            "endsAt": "2026-12-06T11:00:00.000Z",
        }
    )
    assert silence.covers(LABELS)
    assert not silence.active_at(datetime(2026, 12, 6, 9, 59, 59, tzinfo=UTC))
    assert silence.active_at(datetime(2026, 12, 6, 10, 0, tzinfo=UTC))
    assert not silence.active_at(datetime(2026, 12, 6, 11, 0, tzinfo=UTC))


class BrokenAlertmanager:
    """Answers `GET /api/v2/silences` with `answer`, or never when `hang`."""

    def __init__(self) -> None:
        self.answer = web.Response(status=503)
        self.url = ""
        self.hang = False
        self.released = asyncio.Event()

    async def silences(self, _request: web.Request) -> web.Response:
        if self.hang:  # never answers: the client's timeout must end the call
            await self.released.wait()
        return self.answer


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[BrokenAlertmanager]:
    broken = BrokenAlertmanager()
    app = web.Application()
    app.router.add_get("/api/v2/silences", broken.silences)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    broken.url = str(server.make_url(""))
    try:
        yield broken
    finally:
        broken.released.set()
        await server.close()


@pytest.fixture
async def broken_alertmanager() -> AsyncIterator[BrokenAlertmanager]:
    async with serving() as broken:
        yield broken


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (web.Response(status=500, text="boom"), "answered 500"),
        (web.json_response({"silences": []}), "not a list of silences: expected a list, got dict"),
        (web.json_response([{"id": "s1"}]), "not a list of silences: 'matchers'"),
        (web.Response(text="<html>", content_type="text/html"), "not a list of silences"),
        (
            web.json_response(
                [
                    {
                        "id": "s1",
                        "matchers": [{"name": "a", "value": "(", "isRegex": True}],
                        "startsAt": "2026-12-06T10:00:00Z",
                        "endsAt": "2026-12-06T11:00:00Z",
                    }
                ]
            ),
            "not a list of silences",
        ),
    ],
)
async def test_an_answer_that_is_not_silences_is_reported_as_alertmanager_unavailable(
    broken_alertmanager: BrokenAlertmanager, answer: web.Response, problem: str
) -> None:
    broken_alertmanager.answer = answer
    client = AlertmanagerSilences(broken_alertmanager.url, clock=FakeClock(), cache_seconds=0)
    with pytest.raises(AlertmanagerUnavailable) as refused:
        await client.covering(LABELS)
    assert problem in str(refused.value) and "/api/v2/silences" in str(refused.value)


async def test_an_alertmanager_that_never_answers_is_given_up_after_the_timeout() -> None:
    async with serving() as broken:
        broken.hang = True
        client = AlertmanagerSilences(broken.url, clock=FakeClock(), timeout_seconds=0.2)
        with pytest.raises(AlertmanagerUnavailable, match="ReadTimeout"):
            await client.covering(LABELS)
