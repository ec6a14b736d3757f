"""The watchdog's API as the CLI calls it: one httpx client, bearer token, timeouts, errors as exit codes.

Where it sits: below `watchdog.cli` (the remote commands) and above `watchdog.exit_codes`; it knows
the routes' paths and nothing of the server's code, so it works against any `gl-watchdog serve`
reachable over HTTP(S). Every call has a timeout; every failure becomes a `CliError` with one line
naming the server and what went wrong, and the exit code of its kind (`for_status`: 2 a 400/422,
3 a 404, 4 a 401/403, 1 a 409; 5 unreachable, a timeout, a TLS failure, a 5xx or 429). The token is
sent as `Authorization: Bearer ...` and never appears in a message or a log line.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import httpx

from watchdog.exit_codes import EXIT_UNAVAILABLE, EXIT_USAGE, CliError, for_status

DEFAULT_TIMEOUT_SECONDS: Final = 10.0
USER_AGENT: Final = "gl-watchdog-cli"

_HINTS: Final = {
    401: "the token was refused: check the context's token (gl-watchdog config get-contexts) or --token",
    403: "",  # the server's message names the role needed
}


def tls_verification(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx's `verify`: a CA bundle's path becomes a context trusting those CAs (a usage error if the
    file holds none)."""
    if isinstance(verify, bool):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"the ca_bundle {verify} holds no usable certificate: {exc}", EXIT_USAGE) from None


def segment(value: str | int) -> str:
    """One path segment, escaped."""
    return quote(str(value), safe="")


class ApiClient:
    """A synchronous client of one watchdog server (`close()` when done, or use `with`)."""

    def __init__(
        self,
        server: str,
        token: str | None,
        *,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.server,
            headers=headers,
            verify=tls_verification(verify),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, body=body if body is not None else {}, timeout=timeout)

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PUT", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The JSON answer of `method path` (under /api/v1), or a `CliError` of the failure's kind;
        `timeout` (seconds) for a call known to take longer than the client's."""
        url = f"/api/v1{path}"
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        seconds = timeout or self.timeout
        try:
            response = self._http.request(method, url, params=clean, json=body, timeout=seconds)
        except httpx.TimeoutException:
            raise CliError(
                f"the watchdog at {self.server} did not answer within {seconds:g}s", EXIT_UNAVAILABLE
            ) from None
        except httpx.HTTPError as exc:
            raise CliError(
                f"the watchdog at {self.server} is unreachable: {exc or type(exc).__name__}", EXIT_UNAVAILABLE
            ) from None
        if response.status_code >= 400:
            raise CliError(self._problem(method, path, response), for_status(response.status_code))
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the watchdog at {self.server} answered {method} {url} with something not JSON "
                f"({response.headers.get('content-type', 'no content type')})",
                EXIT_UNAVAILABLE,
            ) from None

    def _problem(self, method: str, path: str, response: httpx.Response) -> str:
        """One line: the status, the server's `detail` (and field), and a hint for a refused token."""
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("detail"):
            detail = str(body["detail"])
            if body.get("field"):
                detail = f"{detail} (field {body['field']})"
        else:
            detail = response.reason_phrase or "error"
        hint = _HINTS.get(status)
        where = f"{method} /api/v1{path}" if status == 404 and not isinstance(body, dict) else ""
        parts = [f"the watchdog answered {status}: {detail}", where, hint or ""]
        return "; ".join(part for part in parts if part)
