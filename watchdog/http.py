"""The watchdog's HTTP plumbing: its exceptions as HTTP answers, identity before anything else, and
the security headers of its pages.

The composition root (`watchdog.assembly.create_app`) builds the application with
`new_application(...)`; the API (`watchdog.api`, `watchdog.operator_api`) and the approval routes and
page (`watchdog.web`) install their `gl_common.openapi.RouteTable`s on it. The error shape and request
validation are `gl_common.http`'s, shared with the orchestrator. Middlewares, outermost first:

- errors (`gl_common.http.error_middleware` with `translate` below): every failure is JSON
  `{"error": <code>, "detail": <message>, "field"?: <the request field at fault>}` — 400 a bad id,
  parameter or malformed JSON, 401 no or a wrong bearer token, 403 a link token refused or a role too
  low (naming the role needed), 404 an unknown incident, approval or route, 405 (with `Allow`), 409 a
  state that does not allow the change, 413 `body_too_large`, 415, 422 `invalid_payload` (a body
  field, named), 503 a backend (the store included) unreachable or the token file unreadable, 500
  anything else (logged with its traceback, answered without one);
- security headers on every HTML answer (`security_headers`): a Content-Security-Policy without
  inline script (`script-src 'self'`, `frame-ancestors 'none'`, `form-action 'self'`),
  `Referrer-Policy: no-referrer`, `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, and
  `Cache-Control: no-store` on pages (they carry link tokens and incident data); a browser's POST,
  PUT, PATCH or DELETE from another site (its `Origin`, `Sec-Fetch-Site` or `Referer`) is refused
  with 403 `foreign_origin` before its handler runs (`origin_check`);
- identity and auth, before any validation or lookup (`identity_auth`): a bearer token is one of
  the settings' tokens (`api_tokens`, `api_token_file`; compared in constant time; the `bootstrap`
  identity, role admin) or a named token (`watchdog.tokens`, looked up by its SHA-256; revoked ones
  refused); without a bearer token, the identity headers of a trusted authenticating proxy
  (`watchdog.identity.ProxyAuth`) give the identity. The route the request matched says what it
  takes: `auth=False` routes (health, metrics, the OpenAPI document, the approval page) pass (with the
  trusted proxy's identity, if any, for a page to show; a bearer token is not read there); a route
  with `alt_auth` (the approval API) passes without an identity to its handler, which checks the
  link token itself (`watchdog.web`); every other route, and any unmatched path under `/api/v1`,
  needs an identity: 401 otherwise. A bearer token given to any route that takes one must be valid.
  Each refusal is counted, and logged at a bounded rate per source (`watchdog.auth_failures`).
  Handlers then ask `watchdog.identity.require_role` for the role their action needs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Final, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from gl_common.auth import OnRefusal, TokenFileError, TokenSource, bearer_token, challenge
from gl_common.http import ApiError, error_middleware
from gl_common.openapi import route_of
from watchdog.auth_failures import AuthFailures
from watchdog.errors import (
    ApprovalClosed,
    ApprovalNotFound,
    ApproverRefused,
    IncidentNotFound,
    InvalidToken,
    InvalidTransition,
    SameApprover,
    StoreError,
)
from watchdog.identity import BOOTSTRAP, Identity, ProxyAuth, identity_of, set_identity
from watchdog_sdk.errors import BackendUnavailable

__all__ = ["AUTH_FAILURES_KEY", "ApiError", "authenticated", "new_application", "source_of"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_PREFIX: Final = "/api/v1/"
REALM: Final = "gl-watchdog"
AUTH_FAILURES_KEY: Final = web.AppKey("auth_failures", AuthFailures)
# No inline script anywhere (styles may be inline: the pages carry their own small stylesheet).
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HTML_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
EVERY_RESPONSE_HEADERS: Final = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
UNSAFE_METHODS: Final = ("POST", "PUT", "PATCH", "DELETE")


class NamedTokens(Protocol):
    """The named API tokens (`watchdog.tokens.TokenStore`)."""

    async def identify(self, token: str) -> Identity | None: ...


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
    if isinstance(exc, ApproverRefused):
        return ApiError(403, "forbidden", str(exc))
    if isinstance(exc, SameApprover):
        return ApiError(409, "same_approver", str(exc))
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


def authenticated(request: web.Request) -> bool:
    """True when the request carries an identity (a valid bearer token, or a trusted proxy's user)."""
    return identity_of(request) is not None


def _count_refusal(failures: AuthFailures) -> OnRefusal:
    def refused(request: web.Request, reason: str, detail: str) -> None:
        failures.refused(source_of(request), reason, f"{request.method} {request.path}: {detail}")

    return refused


# -- identity and auth --------------------------------------------------------------------------------


def identity_auth(
    tokens: TokenSource, named: NamedTokens | None, proxy: ProxyAuth, on_refusal: OnRefusal
) -> Middleware:
    """The auth middleware: the request's identity, or a 401 where the route needs one."""

    def refuse(request: web.Request, reason: str, detail: str) -> ApiError:
        on_refusal(request, reason, detail)
        return unauthorized(detail)

    async def from_bearer(request: web.Request, presented: str) -> Identity:
        try:
            if tokens.accepts(presented):
                return BOOTSTRAP
        except TokenFileError as exc:
            log.error("%s %s: API tokens unavailable: %s", request.method, request.path, exc)
            raise ApiError(503, "auth_unavailable", "the watchdog cannot read its API tokens") from exc
        identity = None if named is None else await named.identify(presented)
        if identity is None:
            raise refuse(request, "invalid_token", "invalid bearer token (unknown or revoked)")
        return identity

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_of(request)
        needs = request.path.startswith(API_PREFIX) if route is None else route.auth
        alternative = route is not None and bool(route.alt_auth)
        presented = bearer_token(request.headers.get("Authorization", ""))
        takes_credentials = needs or alternative
        if presented is not None and takes_credentials:
            identity: Identity | None = await from_bearer(request, presented)
        else:  # an open page may still show who is signed in; a forgery only counts where it matters
            identity = proxy.identify(request, report=takes_credentials)
        if identity is not None:
            set_identity(request, identity)
        elif needs and not alternative:
            raise refuse(request, "missing_token", "missing bearer token (Authorization: Bearer <token>)")
        return await handler(request)

    return auth


# -- pages: security headers and the origin of form posts ---------------------------------------------


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The security headers of every answer, and those of HTML pages on pages."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects (303 after a form) carry them too
        _secure(exc.headers, exc.content_type)
        raise
    if not response.prepared:  # a stream (server-sent events) sets its own before it starts
        _secure(response.headers, response.content_type)
    return response


def _secure(headers: MutableMapping[str, str], content_type: str) -> None:
    for name, value in EVERY_RESPONSE_HEADERS.items():
        headers.setdefault(name, value)
    if content_type == "text/html":
        for name, value in HTML_HEADERS.items():
            headers.setdefault(name, value)


def origin_check(allowed_origins: Iterable[str]) -> Middleware:
    """403 for a request that changes something (POST, PUT, PATCH, DELETE) sent by a browser from
    another site: its `Origin`, or where a browser sends `Origin: null` (as it does under
    `Referrer-Policy: no-referrer`) its `Sec-Fetch-Site`, or without either its `Referer`, must be
    this server (the request's host, or one of `allowed_origins`, the public URL). A request with
    none of them (not a browser: the CLI, curl, Alertmanager) passes. The proxy's session cookie
    makes this matter for the API too, not only for the pages' forms."""
    allowed = {_origin_host(origin) for origin in allowed_origins} - {None}

    def foreign(request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if origin is not None and origin != "null":
            return None if _ours(origin, request, allowed) else f"Origin {origin[:100]!r}"
        if fetch_site is not None:
            return None if fetch_site in ("same-origin", "none") else f"Sec-Fetch-Site {fetch_site[:20]!r}"
        if origin is not None:
            return "Origin 'null'"
        referer = request.headers.get("Referer")
        if referer is not None and not _ours(referer, request, allowed):
            return f"Referer {referer[:100]!r}"
        return None

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in UNSAFE_METHODS:
            problem = foreign(request)
            if problem is not None:
                raise ApiError(403, "foreign_origin", f"a request from another site is refused ({problem})")
        return await handler(request)

    return check


def _ours(url: str, request: web.Request, allowed: set[str | None]) -> bool:
    host = _origin_host(url)
    return host is not None and (host == request.host.lower() or host in allowed)


def _origin_host(url: str) -> str | None:
    """`host[:port]` of an origin or URL, lower case (None: `null` or not a URL)."""
    parts = urlsplit(url.strip())
    return parts.netloc.lower() or None if parts.scheme in ("http", "https") else None


def new_application(
    tokens: TokenSource,
    *,
    max_body_bytes: int,
    auth_failures: AuthFailures,
    named_tokens: NamedTokens | None = None,
    proxy: ProxyAuth | None = None,
    public_origins: Iterable[str] = (),
) -> web.Application:
    """An aiohttp application with the watchdog's middlewares (no routes yet). Proxy identity headers
    are ignored without `proxy` (each one seen is reported as forged)."""
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[
            security_headers,
            error_middleware(
                translate,
                internal_detail="internal error; see the watchdog log",
                error_codes={413: "body_too_large"},
            ),
            origin_check(public_origins),
            identity_auth(
                tokens,
                named_tokens,
                proxy or ProxyAuth(enabled=False, on_forged=auth_failures.refused),
                _count_refusal(auth_failures),
            ),
        ],
    )
    app[AUTH_FAILURES_KEY] = auth_failures
    return app
