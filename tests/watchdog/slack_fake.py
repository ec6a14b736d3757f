"""A fake Slack Web API: a real aiohttp server on loopback that checks each request against Slack's
documented shapes and answers as Slack does.

The watchdog's bot (`watchdog.slack_bot`) is pointed at it by `slack_api_url` (`FakeSlack.api_url`).
(A click's `response_url` is not served here: the watchdog posts only to https://hooks.slack.com, so
the tests fake that one with respx.) What it checks, per the method pages
(https://api.slack.com/methods/chat.postMessage, https://api.slack.com/methods/chat.update, "Using
the Slack Web API"):

    every method   POST, `Authorization: Bearer <bot token>` (else `not_authed` / `invalid_auth`),
                   `Content-Type: application/json` (else `invalid_arguments`), a JSON object body
    postMessage    `channel` a known channel (else `channel_not_found`), `text` or `blocks` (else
                   `no_text`), `blocks` valid (else `invalid_blocks`: a list of at most 50 objects of a
                   known `type`, section text ≤ 3000 characters, header text plain_text ≤ 150)
                   → {"ok": true, "channel", "ts", "message": {...}}
    update         `channel` and `ts` of a message posted there (else `message_not_found`), blocks as
                   above → {"ok": true, "channel", "ts", "text", "message": {...}}

Like Slack, a refused call is answered HTTP 200 with `{"ok": false, "error": ...}`. Each call is
recorded (`calls`) with its headers and JSON body, so a test reads what went on the wire; `refusals`
lists every refusal of a request's shape; `fail_next` makes the next call of a method answer a given
Slack error (Slack's answer, not a refusal of the request); `rate_limit(method, times, retry_after)`
makes the next `times` calls of a method answer as Slack's rate limit does (HTTP 429, `Retry-After`,
`{"ok": false, "error": "ratelimited"}`, https://api.slack.com/apis/rate-limits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

BLOCK_TYPES: Final = frozenset({"section", "header", "context", "actions", "divider", "image", "input"})
MAX_BLOCKS: Final = 50
SECTION_TEXT_MAX: Final = 3000
HEADER_TEXT_MAX: Final = 150
FIRST_TS: Final = 1772366400.000100


@dataclass
class SlackCall:
    """One request the fake received: the method (or `response_url`), headers and JSON body."""

    method: str
    headers: CIMultiDict[str]
    body: dict[str, Any]


def _blocks_problem(blocks: Any) -> str | None:
    """Why Slack would refuse `blocks` (`invalid_blocks`), or None."""
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return "blocks must be a list of at most 50 blocks"
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            return f"block {index} has no known type"
        text = block.get("text")
        if (
            block["type"] == "section"
            and isinstance(text, dict)
            and len(text.get("text", "")) > SECTION_TEXT_MAX
        ):
            return f"block {index}: section text over {SECTION_TEXT_MAX} characters"
        if block["type"] == "header" and (
            not isinstance(text, dict)
            or text.get("type") != "plain_text"
            or len(text.get("text", "")) > HEADER_TEXT_MAX
        ):
            return f"block {index}: a header's text is plain_text of at most {HEADER_TEXT_MAX} characters"
    return None


@dataclass
class FakeSlack:
    """Slack's chat.postMessage and chat.update for one bot token and the channels it is in."""

    token: str
    channels: frozenset[str]
    calls: list[SlackCall] = field(default_factory=list)
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    fail_next: dict[str, str] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    limited: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # method: (times, Retry-After)
    _server: TestServer | None = None
    _next_ts: float = FIRST_TS

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the fake Slack is not started"
        return str(self._server.make_url("")).rstrip("/")

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    def sent(self, method: str) -> list[SlackCall]:
        """The calls of `method` ("chat.postMessage", "chat.update")."""
        return [call for call in self.calls if call.method == method]

    def rate_limit(self, method: str, times: int, retry_after: str | None = "1") -> None:
        """The next `times` calls of `method` are rate limited (`retry_after` None: no header)."""
        self.limited[method] = (times, retry_after)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/chat.postMessage", self._post_message)
        app.router.add_post("/api/chat.update", self._update)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    async def _call(self, request: web.Request, method: str) -> dict[str, Any] | web.Response:
        """The call's JSON body once its auth and shape are Slack's, else Slack's refusal."""
        auth = request.headers.get("Authorization", "")
        body: Any = None
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.read())
            except ValueError:
                body = None
        self.calls.append(SlackCall(method, request.headers.copy(), body if isinstance(body, dict) else {}))
        if not auth.startswith("Bearer "):
            return self._refuse("not_authed")
        if auth.removeprefix("Bearer ") != self.token:
            return self._refuse("invalid_auth")
        if not isinstance(body, dict):
            return self._refuse("invalid_arguments")
        times, retry_after = self.limited.get(method, (0, None))
        if times > 0:
            self.limited[method] = (times - 1, retry_after)
            headers = {} if retry_after is None else {"Retry-After": retry_after}
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers=headers)
        if method in self.fail_next:  # asked for by the test: not a refusal of the request's shape
            return web.json_response({"ok": False, "error": self.fail_next.pop(method)})
        if "blocks" in body and _blocks_problem(body["blocks"]) is not None:
            return self._refuse("invalid_blocks")
        return body

    def _refuse(self, error: str) -> web.Response:
        self.refusals.append(error)
        return web.json_response({"ok": False, "error": error})

    async def _post_message(self, request: web.Request) -> web.Response:
        body = await self._call(request, "chat.postMessage")
        if isinstance(body, web.Response):
            return body
        if body.get("channel") not in self.channels:
            return self._refuse("channel_not_found")
        if not body.get("text") and not body.get("blocks"):
            return self._refuse("no_text")
        ts = f"{self._next_ts:.6f}"
        self._next_ts += 0.0001
        message = {
            "type": "message",
            "text": body.get("text", ""),
            "blocks": body.get("blocks", []),
            "ts": ts,
        }
        self.messages[(body["channel"], ts)] = message
        return web.json_response({"ok": True, "channel": body["channel"], "ts": ts, "message": message})

    async def _update(self, request: web.Request) -> web.Response:
        body = await self._call(request, "chat.update")
        if isinstance(body, web.Response):
            return body
        key = (body.get("channel"), body.get("ts"))
        if key not in self.messages:
            return self._refuse("message_not_found")
        message = {**self.messages[key], "text": body.get("text", ""), "blocks": body.get("blocks", [])}
        self.messages[(str(key[0]), str(key[1]))] = message
        answer = {"ok": True, "channel": key[0], "ts": key[1], "text": message["text"], "message": message}
        return web.json_response(answer)
