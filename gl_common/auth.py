"""Bearer-token auth for both services' HTTP APIs: one middleware, one constant-time comparison.

Where it sits: the orchestrator's app (`orchestrator_core.api.build_app`) installs `bearer_auth(...)`
right inside the error middleware (`gl_common.http.error_middleware`), so credentials are checked
before any validation or lookup. The watchdog, which also knows named tokens with roles and a trusted
proxy's identity, builds its own identity middleware (`watchdog.http.identity_auth`) from the pieces
here (`bearer_token`, `TokenSource`, `challenge`) with the same route rules. The route the request
matched (`gl_common.openapi.route_of`) says what it takes:

- `auth=False` routes (health, metrics, the watchdog's OpenAPI document and approval page) pass;
- a route with `alt_auth` (e.g. an approval API with link tokens) passes without a bearer token to
  its handler, which checks its other credential itself; a bearer token given to it must be valid too;
- every other route, and any unmatched path under the API prefix, needs `Authorization: Bearer
  <token>`: 401 with `WWW-Authenticate: Bearer realm=...` when it is missing or wrong, or when the
  service has no token configured; 503 `auth_unavailable` when the token file cannot be read.

A request whose bearer token was accepted is marked (`authenticated(request)`). Tokens come from the
settings and/or a token file (one token per line), which is re-read when it changes, so a rotated
Kubernetes secret takes effect without a restart. Tokens are never logged. Each refusal may be
reported to an observer (the watchdog counts them and logs them at a bounded rate).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from gl_common.http import ApiError
from gl_common.openapi import route_of

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Told of each 401: the request, a short reason (missing_token, invalid_token, no_token_configured)
# and the detail the answer gives.
OnRefusal = Callable[[web.Request, str, str], None]

_BEARER_ACCEPTED: Final = web.RequestKey("bearer_accepted", bool)


class TokenFileError(Exception):
    """The token file cannot be read; the service cannot tell a valid token from an invalid one."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read the token file {path}: {reason}")
        self.path = path
        self.reason = reason


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None when it carries none."""
    scheme, _, presented = authorization.partition(" ")
    token = presented.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class TokenSource:
    """Accepted bearer tokens: static ones plus the lines of a token file (re-read when it changes)."""

    def __init__(self, static: Iterable[str], token_file: Path | None = None) -> None:
        self._static = [token for token in static if token]
        self._file = token_file
        self._file_mtime: float | None = None
        self._file_tokens: list[str] = []

    def tokens(self) -> list[str]:
        """Every accepted token; raises TokenFileError when the token file cannot be read."""
        if self._file is not None:
            try:
                mtime = self._file.stat().st_mtime
                if mtime != self._file_mtime:
                    text = self._file.read_text(encoding="utf-8")
                    self._file_tokens = [line.strip() for line in text.splitlines() if line.strip()]
                    self._file_mtime = mtime
            except OSError as exc:
                raise TokenFileError(self._file, exc.strerror or str(exc)) from exc
        return self._static + self._file_tokens

    def accepts(self, presented: str) -> bool:
        """True when `presented` is one of the tokens; compared with every one of them in constant
        time, so timing tells neither whether nor which one matched. Never true without tokens."""
        candidate = presented.encode()
        matched = False
        for token in self.tokens():
            matched |= hmac.compare_digest(candidate, token.encode())
        return matched


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses: the only hosts a service may serve on with a
    generated local token instead of configured ones."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def challenge(realm: str) -> dict[str, str]:
    """The `WWW-Authenticate` header of a 401 answer."""
    return {"WWW-Authenticate": f'Bearer realm="{realm}"'}


def authenticated(request: web.Request) -> bool:
    """True when the auth middleware accepted the request's bearer token."""
    return request.get(_BEARER_ACCEPTED) is True


def bearer_auth(
    tokens: TokenSource,
    *,
    api_prefix: str,
    service: str,
    realm: str,
    on_refusal: OnRefusal | None = None,
) -> Middleware:
    """The auth middleware of an app whose routes are declared on `gl_common.openapi.RouteTable`s.

    `api_prefix`: unmatched paths under it need a bearer token too (a 404 or 405 says nothing before
    the caller has shown one); `service` names the service in the answers, `realm` is the 401's.
    """

    def refuse(request: web.Request, reason: str, detail: str) -> ApiError:
        if on_refusal is not None:
            on_refusal(request, reason, detail)
        return ApiError(401, "unauthorized", detail, headers=challenge(realm))

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_of(request)
        needs_bearer = request.path.startswith(api_prefix) if route is None else route.auth
        presented = bearer_token(request.headers.get("Authorization", ""))
        if not needs_bearer or (presented is None and route is not None and route.alt_auth):
            return await handler(request)
        try:
            configured = bool(tokens.tokens())
            accepted = presented is not None and tokens.accepts(presented)
        except TokenFileError as exc:
            log.error("%s %s: API tokens unavailable: %s", request.method, request.path, exc)
            raise ApiError(503, "auth_unavailable", f"the {service} cannot read its API tokens") from exc
        if not configured:
            detail = f"the {service} has no API token configured; every API call is refused"
            raise refuse(request, "no_token_configured", detail)
        if presented is None:
            raise refuse(request, "missing_token", "missing bearer token (Authorization: Bearer <token>)")
        if not accepted:
            raise refuse(request, "invalid_token", "invalid bearer token")
        request[_BEARER_ACCEPTED] = True
        return await handler(request)

    return auth
