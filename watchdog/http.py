"""The watchdog's HTTP plumbing: the error shape, the middlewares, and the API's request error.

Used by the API routes (`watchdog.api`), the approval routes and page (`watchdog.web`) and the webhook
parser (`watchdog.intake`, which refuses a bad payload with an `ApiError`); the composition root
(`watchdog.assembly.create_app`) installs the middlewares, outermost first:

- errors: every failure is JSON `{"error": <code>, "detail": <message>}`: an `ApiError` with its own
  status, 404 unknown incident, 409 a state that does not allow the change, 503 a backend (the store
  included) unreachable or the token file unreadable, 500 anything else (logged with its traceback,
  answered without one);
- auth: `Authorization: Bearer <token>` checked by `gl_common.auth` (constant time; the token file
  re-read when it changes) on every path but the public ones (`PUBLIC_PATHS_KEY`: health, metrics;
  `PUBLIC_PREFIXES_KEY`: the approval routes, whose signed link token is their credential). Without a
  configured token every other call gets a 401.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from gl_common.auth import TokenFileError, TokenSource, bearer_token
from watchdog.errors import IncidentNotFound, InvalidTransition, StoreError
from watchdog_sdk.errors import BackendUnavailable, WatchdogError

log = logging.getLogger(__name__)

TOKENS_KEY: Final = web.AppKey("tokens", TokenSource)
PUBLIC_PATHS_KEY: Final = web.AppKey("public_paths", set[str])
PUBLIC_PREFIXES_KEY: Final = web.AppKey("public_prefixes", list[str])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(WatchdogError):
    """A request the API refuses; `status` is the HTTP status to answer with, `code` the short error."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def json_error(status: int, code: str, detail: str) -> web.Response:
    """The API's error shape."""
    return web.json_response({"error": code, "detail": detail}, status=status)


def unauthorized(detail: str) -> web.Response:
    """A 401 with the challenge header."""
    response = json_error(401, "unauthorized", detail)
    response.headers["WWW-Authenticate"] = 'Bearer realm="gl-watchdog"'
    return response


def bearer_ok(request: web.Request) -> bool:
    """True when the request carries one of the API's bearer tokens (never when none is configured)."""
    presented = bearer_token(request.headers.get("Authorization", ""))
    return presented is not None and request.app[TOKENS_KEY].accepts(presented)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error; nothing escapes as a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json":
            raise
        code = exc.reason.lower().replace(" ", "_")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            code, detail = "body_too_large", f"request body exceeds the limit of {exc.max_size} bytes"  # type: ignore[attr-defined]
        return json_error(exc.status, code, detail)
    except ApiError as exc:
        return json_error(exc.status, exc.code, exc.detail)
    except IncidentNotFound as exc:
        return json_error(404, "not_found", str(exc))
    except InvalidTransition as exc:
        return json_error(409, "conflict", str(exc))
    except TokenFileError as exc:
        log.error("%s %s: API tokens unavailable: %s", request.method, request.path, exc)
        return json_error(503, "auth_unavailable", "the watchdog cannot read its API tokens")
    except BackendUnavailable as exc:
        log.warning("%s %s: backend unavailable: %s", request.method, request.path, exc)
        return json_error(503, "unavailable", str(exc))
    except StoreError as exc:
        log.error("%s %s: store error: %s", request.method, request.path, exc)
        return json_error(500, "store_error", str(exc))
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, "internal_error", "internal error; see the watchdog log")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer-token auth on every path that is not public (see the module docstring)."""
    if _is_public(request):
        return await handler(request)
    if not request.app[TOKENS_KEY].tokens():
        return unauthorized("the watchdog has no API token configured; every API call is refused")
    if bearer_token(request.headers.get("Authorization", "")) is None:
        return unauthorized("missing bearer token (Authorization: Bearer <token>)")
    if not bearer_ok(request):
        return unauthorized("invalid bearer token")
    return await handler(request)


def _is_public(request: web.Request) -> bool:
    app = request.app
    if request.path in app[PUBLIC_PATHS_KEY]:
        return True
    return any(request.path.startswith(prefix) for prefix in app[PUBLIC_PREFIXES_KEY])


def new_application(tokens: TokenSource, *, max_body_bytes: int) -> web.Application:
    """An aiohttp application with the watchdog's middlewares and token source (no routes yet)."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware, auth_middleware])
    app[TOKENS_KEY] = tokens
    app[PUBLIC_PATHS_KEY] = {"/healthz", "/readyz", "/metrics"}
    app[PUBLIC_PREFIXES_KEY] = []
    return app
