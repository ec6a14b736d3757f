"""The watchdog's HTTP plumbing: its exceptions as HTTP answers, and auth before anything else.

The composition root (`watchdog.assembly.create_app`) builds the application with
`new_application(...)`; the API (`watchdog.api`) and the approval routes and page (`watchdog.web`)
install their `gl_common.openapi.RouteTable`s on it. The error shape and request validation are
`gl_common.http`'s, shared with the orchestrator. Middlewares, outermost first:

- errors (`gl_common.http.error_middleware` with `translate` below): every failure is JSON
  `{"error": <code>, "detail": <message>, "field"?: <the request field at fault>}` — 400 a bad id,
  parameter or malformed JSON, 401 no or a wrong bearer token, 403 a link token refused, 404 an
  unknown incident, approval or route, 405 (with `Allow`), 409 a state that does not allow the change,
  413 `body_too_large`, 415, 422 `invalid_payload` (a body field, named), 503 a backend (the store
  included) unreachable or the token file unreadable, 500 anything else (logged with its traceback,
  answered without one);
- auth, before any validation or lookup: `gl_common.auth.bearer_auth`, shared with the orchestrator.
  The route the request matched says what it takes: `auth=False` routes (health, metrics, the OpenAPI
  document, the approval page) pass; a route with `alt_auth` (the approval API) passes without a
  bearer token to its handler, which checks the link token itself (`watchdog.web`); every other
  route, and any unmatched path under `/api/v1`, needs `Authorization: Bearer <token>`; a bearer token
  given to the approval API must be valid too. Without a configured token every such call gets a 401.
  Each refusal is counted, and logged at a bounded rate per source (`watchdog.auth_failures`).
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from gl_common.auth import OnRefusal, TokenSource, authenticated, bearer_auth, challenge
from gl_common.http import ApiError, error_middleware
from watchdog.auth_failures import AuthFailures
from watchdog.errors import (
    ApprovalClosed,
    ApprovalNotFound,
    IncidentNotFound,
    InvalidToken,
    InvalidTransition,
    StoreError,
)
from watchdog_sdk.errors import BackendUnavailable

__all__ = ["AUTH_FAILURES_KEY", "ApiError", "authenticated", "new_application", "source_of"]

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1/"
REALM: Final = "gl-watchdog"
TOKENS_KEY: Final = web.AppKey("tokens", TokenSource)
AUTH_FAILURES_KEY: Final = web.AppKey("auth_failures", AuthFailures)


def translate(request: web.Request, exc: Exception) -> ApiError | None:
    """The watchdog's exceptions as HTTP answers (`gl_common.http.error_middleware`)."""
    if isinstance(exc, IncidentNotFound | ApprovalNotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, InvalidTransition):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, ApprovalClosed):
        return ApiError(409, exc.state, str(exc))
    if isinstance(exc, InvalidToken):
        return ApiError(403, "invalid_token", str(exc))
    if isinstance(exc, BackendUnavailable):
        log.warning("%s %s: backend unavailable: %s", request.method, request.path, exc)
        return ApiError(503, "unavailable", str(exc))
    if isinstance(exc, StoreError):
        log.error("%s %s: store error: %s", request.method, request.path, exc)
        return ApiError(500, "store_error", str(exc))
    return None


def unauthorized(detail: str) -> ApiError:
    """A 401 with the challenge header."""
    return ApiError(401, "unauthorized", detail, headers=challenge(REALM))


def source_of(request: web.Request) -> str:
    """Who sent the request, for the rate of refusal logs: the peer address."""
    return request.remote or "unknown"


def _count_refusal(failures: AuthFailures) -> OnRefusal:
    def refused(request: web.Request, reason: str, detail: str) -> None:
        failures.refused(source_of(request), reason, f"{request.method} {request.path}: {detail}")

    return refused


def new_application(
    tokens: TokenSource, *, max_body_bytes: int, auth_failures: AuthFailures
) -> web.Application:
    """An aiohttp application with the watchdog's middlewares (no routes yet)."""
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[
            error_middleware(
                translate,
                internal_detail="internal error; see the watchdog log",
                error_codes={413: "body_too_large"},
            ),
            bearer_auth(
                tokens,
                api_prefix=API_PREFIX,
                service="watchdog",
                realm=REALM,
                on_refusal=_count_refusal(auth_failures),
            ),
        ],
    )
    app[TOKENS_KEY] = tokens
    app[AUTH_FAILURES_KEY] = auth_failures
    return app
