"""Bearer-token auth of both APIs (`gl_common.auth.bearer_auth`) on a small app of its own: what a route
declares decides whether it needs a token, the token is checked before the handler, and a service
that cannot tell a good token from a bad one refuses rather than guesses."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from gl_common.auth import TokenSource, authenticated, bearer_auth
from gl_common.http import error_middleware
from gl_common.openapi import Inputs, RouteTable
from tests.conftest import serving

TOKEN = "token-0123456789"


@dataclass
class Served:
    client: httpx.AsyncClient
    token_file: Path
    seen: list[str] = field(default_factory=list)  # handler calls: "<route> <authenticated>"
    refusals: list[str] = field(default_factory=list)  # reasons given to on_refusal


def _table(seen: list[str]) -> RouteTable:
    table = RouteTable("/api/v1")

    @table.route("GET /things", "Needs a bearer token")
    async def things(request: web.Request, inputs: Inputs) -> web.StreamResponse:
        seen.append(f"things {authenticated(request)}")
        return web.json_response({})

    @table.route("GET /prompt", "A link token instead", alt_auth=("linkToken",))
    async def prompt(request: web.Request, inputs: Inputs) -> web.StreamResponse:
        seen.append(f"prompt {authenticated(request)}")
        return web.json_response({})

    @table.route("GET /healthz", "Open", auth=False, prefixed=False)
    async def healthz(request: web.Request, inputs: Inputs) -> web.StreamResponse:
        seen.append(f"healthz {authenticated(request)}")
        return web.json_response({})

    return table


@pytest.fixture
async def served(_no_pending_tasks: None, tmp_path: Path) -> AsyncIterator[Served]:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{TOKEN}\n", encoding="utf-8")
    seen: list[str] = []
    refusals: list[str] = []
    middleware = bearer_auth(
        TokenSource([], token_file),
        api_prefix="/api/v1",
        service="thing service",
        realm="things",
        on_refusal=lambda request, reason, detail: refusals.append(reason),
    )
    app = web.Application(middlewares=[error_middleware(lambda request, exc: None), middleware])
    _table(seen).install(app)
    async with serving(app) as client:
        yield Served(client, token_file, seen, refusals)


def _rewrite(token_file: Path, text: str) -> None:
    """Replace the token file's content with a later mtime (as a rotated secret's mount has)."""
    token_file.write_text(text, encoding="utf-8")
    later = token_file.stat().st_mtime + 1
    os.utime(token_file, (later, later))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_valid_token_reaches_the_handler_marked_authenticated(served: Served) -> None:
    response = await served.client.get("/api/v1/things", headers=_bearer(TOKEN))
    assert response.status_code == 200
    assert served.seen == ["things True"] and served.refusals == []


@pytest.mark.parametrize(
    ("path", "headers", "reason", "detail"),
    [
        ("/api/v1/things", {}, "missing_token", "missing bearer token (Authorization: Bearer <token>)"),
        ("/api/v1/things", _bearer("wrong"), "invalid_token", "invalid bearer token"),
        ("/api/v1/nowhere", {}, "missing_token", "missing bearer token (Authorization: Bearer <token>)"),
        ("/api/v1/prompt", _bearer("wrong"), "invalid_token", "invalid bearer token"),
    ],
    ids=["missing", "wrong", "unknown-path-under-the-prefix", "wrong-token-on-an-alt-auth-route"],
)
async def test_a_refused_token_is_a_401_with_the_challenge_before_any_handler(
    served: Served, path: str, headers: dict[str, str], reason: str, detail: str
) -> None:
    response = await served.client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="things"'
    assert response.json() == {"error": "unauthorized", "detail": detail}
    assert served.seen == [] and served.refusals == [reason]


async def test_open_and_alt_auth_routes_pass_without_a_bearer_token(served: Served) -> None:
    assert (await served.client.get("/healthz")).status_code == 200
    assert (await served.client.get("/api/v1/prompt")).status_code == 200
    assert (await served.client.get("/elsewhere")).status_code == 404  # outside the prefix: no token asked
    assert served.seen == ["healthz False", "prompt False"] and served.refusals == []


async def test_a_rotated_token_file_takes_effect_without_a_restart(served: Served) -> None:
    _rewrite(served.token_file, "rotated-token-0123\n")
    assert (await served.client.get("/api/v1/things", headers=_bearer(TOKEN))).status_code == 401
    assert (
        await served.client.get("/api/v1/things", headers=_bearer("rotated-token-0123"))
    ).status_code == 200


async def test_without_any_configured_token_every_call_is_refused(served: Served) -> None:
    _rewrite(served.token_file, "\n")
    response = await served.client.get("/api/v1/things", headers=_bearer(TOKEN))
    assert response.status_code == 401
    assert (
        response.json()["detail"]
        == "the thing service has no API token configured; every API call is refused"
    )
    assert served.refusals == ["no_token_configured"]


async def test_an_unreadable_token_file_is_a_503_not_a_guess(served: Served) -> None:
    served.token_file.unlink()
    response = await served.client.get("/api/v1/things", headers=_bearer(TOKEN))
    assert response.status_code == 503
    assert response.json() == {
        "error": "auth_unavailable",
        "detail": "the thing service cannot read its API tokens",
    }
    assert served.seen == [] and served.refusals == []
