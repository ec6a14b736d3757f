"""HTTP agent client against a real aiohttp agent server on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from orchestrator_core.errors import AgentError, AgentOutputError, RetryableAgentError
from orchestrator_core.http_agents import AgentCall, HttpAgentClient, agent_url
from orchestrator_core.logs import RunLog
from tests.conftest import free_port


class AgentServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.hang = asyncio.Event()

    async def handler(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.match_info["agent_id"]
        body = await request.json()
        self.requests.append({"agent_id": agent_id, **body})
        if agent_id == "ok":
            return web.json_response({"output": {"sum": sum(body["params"]["values"])}})
        if agent_id == "bare":
            return web.json_response([1, 2])
        if agent_id == "boom":
            return web.json_response({"error": "db down"}, status=503)
        if agent_id == "bad":
            return web.json_response({"error": "missing field"}, status=422)
        if agent_id == "text":
            return web.Response(text="<html>oops</html>")
        await self.hang.wait()  # "hang": never answers until the test ends
        return web.json_response({})


@pytest.fixture
async def agent_server(_no_pending_tasks: None) -> AsyncIterator[AgentServer]:
    """(Depends on the pending-task check so that its teardown runs after the server stopped.)"""
    server = AgentServer()
    app = web.Application()
    app.router.add_post("/agents/{agent_id}/run", server.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port).start()
    yield server
    server.hang.set()
    await runner.cleanup()


def make_call(agent_id: str, deadline: datetime | None = None) -> AgentCall:
    return AgentCall(
        agent_id=agent_id,
        execution_id="e1",
        node_id="n1",
        attempt=2,
        params={"values": [1, 2, 3]},
        input_data={"company": "acme"},
        upstream={"intake": {"rows": 3}},
        deadline=deadline,
    )


@pytest.fixture
async def client(agent_server: AgentServer) -> AsyncIterator[tuple[HttpAgentClient, list[tuple[str, str]]]]:
    calls: list[tuple[str, str]] = []
    http = HttpAgentClient(
        f"http://127.0.0.1:{agent_server.port}/agents/{{agent_id}}/run",
        "greenlang",
        on_call=lambda agent_id, outcome, _: calls.append((agent_id, outcome)),
    )
    yield http, calls
    await http.close()


def test_url_template() -> None:
    assert (
        agent_url("http://{agent_id}.{namespace}.svc:8080/run", "calc", "gl") == "http://calc.gl.svc:8080/run"
    )


async def test_posts_the_attempt_and_returns_output(agent_server: AgentServer, client: Any) -> None:
    http, calls = client
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    assert await http.call(make_call("ok", deadline)) == {"sum": 6}
    sent = agent_server.requests[0]
    assert sent == {
        "agent_id": "ok",
        "execution_id": "e1",
        "node_id": "n1",
        "attempt": 2,
        "params": {"values": [1, 2, 3]},
        "input_data": {"company": "acme"},
        "upstream": {"intake": {"rows": 3}},
        "deadline": "2030-01-01T00:00:00Z",
    }
    assert calls == [("ok", "ok")]


async def test_plain_json_body_is_the_output(client: Any) -> None:
    http, _ = client
    assert await http.call(make_call("bare")) == [1, 2]


async def test_5xx_is_retryable(client: Any) -> None:
    http, calls = client
    with pytest.raises(RetryableAgentError, match="503"):
        await http.call(make_call("boom"))
    assert calls == [("boom", "server_error")]


async def test_4xx_is_not_retryable(client: Any) -> None:
    http, calls = client
    with pytest.raises(AgentError, match="422") as info:
        await http.call(make_call("bad"))
    assert not isinstance(info.value, RetryableAgentError)
    assert calls == [("bad", "client_error")]


async def test_non_json_answer_is_output_error(client: Any) -> None:
    http, _ = client
    with pytest.raises(AgentOutputError):
        await http.call(make_call("text"))


async def test_connection_refused_is_retryable() -> None:
    http = HttpAgentClient(f"http://127.0.0.1:{free_port()}/{{agent_id}}", "ns")
    try:
        with pytest.raises(RetryableAgentError, match="unreachable"):
            await http.call(make_call("x"))
    finally:
        await http.close()


async def test_hanging_agent_times_out_at_the_deadline(agent_server: AgentServer, client: Any) -> None:
    http, calls = client
    deadline = datetime.now(UTC) + timedelta(seconds=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RetryableAgentError, match="did not answer"):
        await http.call(make_call("hang", deadline))
    elapsed = loop.time() - started
    assert 0.2 <= elapsed < 3.0
    assert calls == [("hang", "timeout")]
    assert json.dumps(agent_server.requests[0]["deadline"]).endswith('Z"')


async def test_each_call_is_logged_with_run_ids_url_outcome_and_timing(agent_server: AgentServer) -> None:
    run_log = RunLog()
    http = HttpAgentClient(
        f"http://127.0.0.1:{agent_server.port}/agents/{{agent_id}}/run", "greenlang", run_log=run_log
    )
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=0.2)
        with pytest.raises(RetryableAgentError):
            await http.call(make_call("hang", deadline))
    finally:
        await http.close()
    started, finished = run_log.lines("e1")
    url = f"http://127.0.0.1:{agent_server.port}/agents/hang/run"
    for line in (started, finished):
        assert (line["execution_id"], line["node_id"], line["agent_id"]) == ("e1", "n1", "hang")
        assert line["url"] == url and line["attempt"] == 2
    assert started["message"] == f"external call to agent hang started: POST {url}"
    assert finished["level"] == "WARNING" and finished["outcome"] == "timeout"
    assert finished["message"].startswith("external call to agent hang timeout in ")
    assert 0.2 <= finished["duration_seconds"] < 3.0
    assert "did not answer" in finished["error"]
