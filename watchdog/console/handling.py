"""What every console handler stands on: the services it is handed, the signed-in visitor, the HTML
answers to refusals and bad input, and the reading of a form post.

Used by the console's handler modules (`watchdog.console.routes`: the list, the page, the approval
form; `watchdog.console.actions`: diagnosing again, running a playbook; `watchdog.console.live`: the
page's live updates), which `routes.add_routes` installs. `page(handler)` asks
`watchdog.console.signin` who is looking (401 page otherwise), runs the handler, and answers what
it raises as a page: `FormError` 400 naming the field, an unknown incident or prompt 404, the
database down 503, a `PageError` its own status. A form post must come from the console's own page
(`require_origin`) as `application/x-www-form-urlencoded` of at most `MAX_FORM_BYTES`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote

from aiohttp import web

from gl_common.clock import Clock
from gl_common.openapi import Inputs, Route, RouteHandler
from watchdog.approvals import ApprovalService
from watchdog.console.forms import FormError
from watchdog.console.pages import Pages
from watchdog.console.signin import SignIn, Visitor
from watchdog.diagnosis import DiagnosisService
from watchdog.errors import ApprovalNotFound, IncidentNotFound, StoreUnavailable
from watchdog.events import StreamLimits
from watchdog.identity import Role
from watchdog.incidents import IncidentService
from watchdog.links import LinkSettings
from watchdog.playbook_requests import PlaybookRequests
from watchdog.responder import Responder
from watchdog.store import WatchdogStore

log = logging.getLogger(__name__)

PREFIX: Final = "/console"
FORM_TYPE: Final = "application/x-www-form-urlencoded"
MAX_FORM_BYTES: Final = 4096
SIGN_IN_SCHEME: Final = "consoleSignIn"  # the trusted proxy's identity (or a bearer token)


@dataclass(frozen=True)
class Console:
    """What the console's handlers use, handed over by the composition root."""

    incidents: IncidentService
    store: WatchdogStore
    approvals: ApprovalService
    responder: Responder
    diagnosis: DiagnosisService
    requests: PlaybookRequests
    signin: SignIn
    links: LinkSettings
    clock: Clock
    pages: Pages
    stream_limits: StreamLimits


CONSOLE_KEY: Final = web.AppKey("console", Console)
PageHandler = Callable[[web.Request, Console, Visitor], Awaitable[web.StreamResponse]]


class PageError(Exception):
    """A page the handler answers instead of its own: status, title and what went wrong."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


@dataclass(frozen=True)
class PageRoute(Route):
    """A console page as the auth middleware sees it (`gl_common.openapi.route_of`): it takes the
    identity of a bearer token or of the trusted proxy when the request has one (`alt_auth`), and
    is let through without one, the page then answering for itself (local mode, or the 401 page).
    The page reads its own inputs (`watchdog.console.forms`), so that bad ones get an HTML answer."""

    alt_auth: tuple[str, ...] = (SIGN_IN_SCHEME,)

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        return await self.handler(request, Inputs({}))


def page(handler: PageHandler) -> RouteHandler:
    """`handler` for a signed-in visitor, its refusals and bad input answered as HTML pages."""

    async def serve(request: web.Request, inputs: Inputs) -> web.StreamResponse:
        console = request.app[CONSOLE_KEY]
        visitor = console.signin.visitor(request)
        try:
            if visitor is None:
                raise PageError(401, "Sign in", "the console needs you signed in through the proxy")
            return await handler(request, console, visitor)
        except FormError as exc:
            return error_page(console, visitor, PageError(400, "Bad request", str(exc)))
        except (IncidentNotFound, ApprovalNotFound) as exc:
            return error_page(console, visitor, PageError(404, "Not found", str(exc)))
        except StoreUnavailable as exc:
            log.warning("console %s %s: %s", request.method, request.path, exc)
            detail = "the watchdog's database does not answer; try again in a minute"
            return error_page(console, visitor, PageError(503, "Unavailable", detail))
        except PageError as exc:
            return error_page(console, visitor, exc)

    return serve


def error_page(console: Console, visitor: Visitor | None, error: PageError) -> web.Response:
    return console.pages.render(
        "message.html",
        status=error.status,
        code=error.status,
        title=error.title,
        detail=error.detail,
        visitor=visitor,
    )


def incident_id_of(request: web.Request) -> int:
    text = request.match_info["incident_id"]
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise FormError("incident_id", f"{text!r} is not an incident id (a positive integer)")
    return int(text)


def back_to_page(incident_id: int, notice: str) -> web.HTTPSeeOther:
    """The 303 that sends a form's sender back to the incident's page, saying what became of it."""
    return web.HTTPSeeOther(f"{PREFIX}/incidents/{incident_id}?notice={quote(notice)}")


def require_role(visitor: Visitor, role: Role, doing: str) -> None:
    """A 403 page naming the role needed, unless `visitor` has `role` or higher."""
    if not visitor.may(role):
        raise PageError(403, "Not allowed", f"role {visitor.role} cannot {doing}: {role} or higher needed")


async def form_pairs(request: web.Request) -> list[tuple[str, str]]:
    """The fields of a form post, in order (a 415 or 413 page for another type or a larger body)."""
    if request.content_type != FORM_TYPE:
        raise PageError(415, "Unsupported form", f"the form must be sent as {FORM_TYPE}")
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise PageError(413, "Form too large", f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise FormError("", "the form is not valid URL-encoded UTF-8") from None


def require_origin(request: web.Request) -> None:
    """A form post must say which page it comes from: the middleware (`watchdog.http.origin_check`)
    refuses a form post from another site, and lets one without `Origin` or `Referer` through, which
    no browser sends from a page (and `Referrer-Policy: no-referrer` leaves only `Origin`)."""
    if not request.headers.get("Origin"):
        raise PageError(403, "Refused", "this form must be sent from the console's own page (no Origin)")
