"""Slack interactivity: the approve and deny buttons of the bot's prompt, decided as the Slack user.

Where it sits: `POST /api/v1/slack/interactions`, the app's Request URL (docs/alerting.md "Slack
app"), installed by `watchdog.assembly.create_app` (`add_routes`). The bot (`watchdog.slack_bot`)
posts prompts whose buttons carry `action_id` approve/deny and the approval id as `value`; Slack
posts a click here as a form with one field, `payload`, the `block_actions` JSON.

Authentication is Slack's request signature, not a bearer token (https://api.slack.com/authentication/
verifying-requests-from-slack): `X-Slack-Signature` must be `v0=` + the hex HMAC-SHA256 of
`v0:{X-Slack-Request-Timestamp}:{raw body}` under the signing secret (`slack_signing_secret`),
compared in constant time; the timestamp must lie within five minutes of now, and a signature seen
before within that window is a replay (remembered per replica; a replay at another replica still
meets the approval's own single-use compare-and-set). Anything else: 401, counted and logged at a
bounded rate like every refused credential (`watchdog.auth_failures`).

The Slack user becomes `Identity(source="slack", name=<user id>)` (the id: a username can be changed by
its user, so it would let one person take a mapped role or vote twice under two names; the username
goes into the audit entry's `reason`), its role what `slack_role_map` gives its user id, else
`slack_default_role` (viewer: a workspace member may not decide until mapped). The decision goes
through the approval service, so the policy's role, group and two-person rules apply and the audit
names `slack:<user id>`. Slack shows nothing of the HTTP answer to a click: a refusal (role, closed
prompt, same approver twice; a role or group refusal also says what a click can carry and where else
to approve) is told to the user as an ephemeral message through the payload's
`response_url` (a hooks.slack.com URL only, under a timeout; its failure is logged). A decision
continues in the background (`Responder.start_decision`), which updates the posted message
(approved by whom, acting, ...).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from pydantic import BaseModel

from gl_common.clock import Clock
from gl_common.http import ApiError, json_model_response
from gl_common.openapi import Inputs, RouteTable
from watchdog.api_models import PATH_PARAMS
from watchdog.approvals import ApprovalService, Decision
from watchdog.errors import ApprovalError, ApproverRefused
from watchdog.http import AUTH_FAILURES_KEY, source_of, unauthorized
from watchdog.identity import Identity, Role
from watchdog.notifier import post_json
from watchdog.responder import Responder
from watchdog.settings import WatchdogSettings

log = logging.getLogger(__name__)

SLACK_SCHEME: Final = "slackSignature"
SECURITY_SCHEMES: Final = {
    SLACK_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Slack-Signature",
        "description": "Slack's v0 request signature (HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:"
        "{body}` under the app's signing secret; the timestamp within 5 minutes)",
    }
}
MAX_AGE_SECONDS: Final = 300
MAX_REMEMBERED: Final = 10_000  # signatures kept against replay (those older than MAX_AGE are dropped)
MAX_NAME: Final = 100
RESPONSE_HOST: Final = "hooks.slack.com"
FORM_TYPE: Final = "application/x-www-form-urlencoded"
# Told to a clicker whose role or groups the approval rule refuses: what a Slack click can carry.
WHAT_COUNTS: Final = (
    "A Slack click carries the role slack_role_map gives your user id and no groups: ask an admin to "
    "map your id to the role needed, or approve on the approval page signed in through the login proxy"
)

ROUTE_TABLE = RouteTable("/api/v1", path_params=PATH_PARAMS, body_invalid=(400, "invalid_payload"))


class SlackRefused(Exception):
    """A request whose signature is missing, wrong, stale or replayed (`reason`: the audit code)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SlackSignature:
    """Verifies Slack's v0 request signatures and refuses replays (see the module docstring)."""

    def __init__(self, secret: str, clock: Clock, *, max_age_seconds: float = MAX_AGE_SECONDS) -> None:
        self._secret = secret.encode()
        self.clock = clock
        self.max_age = max_age_seconds
        self._seen: OrderedDict[str, float] = OrderedDict()

    def sign(self, timestamp: str, body: bytes) -> str:
        """The signature Slack sends for `body` at `timestamp` (`v0=<hex>`)."""
        base = b"v0:" + timestamp.encode() + b":" + body
        return "v0=" + hmac.new(self._secret, base, hashlib.sha256).hexdigest()

    def verify(self, timestamp: str | None, signature: str | None, body: bytes) -> None:
        """Raise SlackRefused unless `signature` is Slack's for `body` at a recent `timestamp`, seen once."""
        if not timestamp or not signature:
            raise SlackRefused(
                "missing_signature", "X-Slack-Request-Timestamp and X-Slack-Signature are required"
            )
        try:
            sent_at = int(timestamp)
        except ValueError:
            raise SlackRefused("malformed_signature", "X-Slack-Request-Timestamp is not a number") from None
        now = self.clock.now().timestamp()
        if abs(now - sent_at) > self.max_age:
            raise SlackRefused(
                "stale_signature", f"X-Slack-Request-Timestamp is more than {self.max_age:g}s from now"
            )
        if not hmac.compare_digest(self.sign(timestamp, body).encode(), signature.encode()):
            raise SlackRefused("invalid_signature", "X-Slack-Signature does not match the body")
        self._remember(signature, now)

    def _remember(self, signature: str, now: float) -> None:
        while self._seen and (
            next(iter(self._seen.values())) < now - self.max_age or len(self._seen) >= MAX_REMEMBERED
        ):
            self._seen.popitem(last=False)
        if signature in self._seen:
            raise SlackRefused("replayed_signature", "this signed request was already received (a replay)")
        self._seen[signature] = now


@dataclass(frozen=True)
class SlackRoles:
    """The role of a Slack user: what `role_map` gives its user id, else `default`. Only the id counts:
    a user can rename themselves, so a username would let anyone take a mapped role or vote twice."""

    role_map: Mapping[str, Role]
    default: Role = Role.VIEWER

    def identity(self, user_id: str) -> Identity:
        return Identity(name=user_id, role=self.role_map.get(user_id, self.default), source="slack")


@dataclass(frozen=True)
class Click:
    """One button click of a `block_actions` payload."""

    decision: Decision
    approval_id: str
    user_id: str
    username: str | None
    response_url: str | None


@dataclass(frozen=True)
class Slack:
    """What the route uses: the signature check, the roles, the approvals and the responder."""

    signature: SlackSignature
    roles: SlackRoles
    approvals: ApprovalService
    responder: Responder
    timeout_seconds: float


SLACK_KEY: Final = web.AppKey("slack", Slack)


def from_settings(
    settings: WatchdogSettings, approvals: ApprovalService, responder: Responder, clock: Clock
) -> Slack | None:
    """The route's services as the settings configure them; None without `slack_signing_secret`."""
    if settings.slack_signing_secret is None:
        return None
    return Slack(
        signature=SlackSignature(settings.slack_signing_secret.get_secret_value(), clock),
        roles=SlackRoles(settings.slack_role_map, settings.slack_default_role),
        approvals=approvals,
        responder=responder,
        timeout_seconds=settings.notifier_timeout_seconds,
    )


def add_routes(app: web.Application, slack: Slack | None) -> None:
    """Add the interactions route to `app`; without `slack` (no signing secret) it answers 404."""
    if slack is not None:
        app[SLACK_KEY] = slack
    ROUTE_TABLE.install(app)


class InteractionAnswer(BaseModel):
    """What the route answers (Slack ignores it; the user hears of a refusal through response_url)."""

    ok: bool
    detail: str
    state: str | None = None


@ROUTE_TABLE.route(
    "POST /slack/interactions",
    "A Slack button click (block_actions): approve or deny a prompt as the Slack user",
    auth=False,
    alt_auth=(SLACK_SCHEME,),
    response=InteractionAnswer,
    errors=(400, 401, 404, 413, 415),
)
async def interactions(request: web.Request, inputs: Inputs) -> web.Response:
    slack = request.app.get(SLACK_KEY)
    if slack is None:
        raise ApiError(404, "not_configured", "Slack interactivity is not configured (slack_signing_secret)")
    body = await request.read()
    try:
        slack.signature.verify(
            request.headers.get("X-Slack-Request-Timestamp"), request.headers.get("X-Slack-Signature"), body
        )
    except SlackRefused as refused:
        detail = f"{request.method} {request.path}: {refused.detail}"
        request.app[AUTH_FAILURES_KEY].refused(source_of(request), refused.reason, detail)
        raise unauthorized(refused.detail) from None
    click = parse_click(body, request.content_type)
    identity = slack.roles.identity(click.user_id)
    answer = await _decide(slack, click, identity)
    if not answer.ok:
        await _tell_user(click, answer.detail, slack.timeout_seconds)
    return json_model_response(answer)


async def _decide(slack: Slack, click: Click, identity: Identity) -> InteractionAnswer:
    if identity.role < Role.APPROVER:
        needed = f"role {identity.role}, approver or higher needed"
        detail = f"{identity.actor} may not {click.decision.value}: {needed}. {WHAT_COUNTS}"
        return InteractionAnswer(ok=False, detail=detail)
    try:
        said = f"clicked in Slack by @{click.username}" if click.username else "clicked in Slack"
        approval = await slack.approvals.decide(
            click.approval_id, click.decision, identity=identity, reason=said
        )
    except ApproverRefused as exc:  # the plan's approval rule asks for more than this click carries
        return InteractionAnswer(ok=False, detail=f"{exc}. {WHAT_COUNTS}")
    except ApprovalError as exc:
        return InteractionAnswer(ok=False, detail=str(exc))
    slack.responder.start_decision(approval)
    return InteractionAnswer(
        ok=True, detail=f"{click.decision.value} recorded for {identity.actor}", state=approval.state
    )


def parse_click(body: bytes, content_type: str) -> Click:
    """The click of a `block_actions` form body; 400/415 naming what is wrong."""
    if content_type != FORM_TYPE:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be {FORM_TYPE}, not {content_type or 'missing'}",
        )
    try:
        form = parse_qs(body.decode(), strict_parsing=True)
        payload: Any = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError) as exc:
        raise ApiError(
            400, "invalid_payload", f"the form must carry a JSON `payload` field ({exc})"
        ) from None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        kind = payload.get("type") if isinstance(payload, dict) else None
        raise ApiError(400, "invalid_payload", f"payload type {kind!r} is not handled; only block_actions")
    actions, user = payload.get("actions"), payload.get("user")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        raise ApiError(400, "invalid_payload", "payload.actions must hold the clicked button")
    action = actions[0]
    if action.get("action_id") not in ("approve", "deny"):
        raise ApiError(
            400, "invalid_payload", f"action_id {str(action.get('action_id'))[:40]!r} is not approve or deny"
        )
    if not isinstance(user, dict) or not _name(user.get("id")):
        raise ApiError(400, "invalid_payload", "payload.user.id is required")
    approval_id = action.get("value")
    if not _name(approval_id):
        raise ApiError(400, "invalid_payload", "the button's value must be an approval id")
    response_url = payload.get("response_url")
    return Click(
        decision=Decision(action["action_id"]),
        approval_id=str(approval_id),
        user_id=user["id"],
        username=user.get("username") if _name(user.get("username")) else None,
        response_url=response_url if isinstance(response_url, str) else None,
    )


def _name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and value.isprintable()


async def _tell_user(click: Click, text: str, timeout_seconds: float) -> None:
    """Tell the clicking user why nothing happened (an ephemeral message through `response_url`)."""
    url = click.response_url
    if url is None or urlsplit(url).scheme != "https" or urlsplit(url).hostname != RESPONSE_HOST:
        log.warning("a refused Slack click had no usable response_url; the user was not told: %s", text)
        return
    body = {"response_type": "ephemeral", "replace_original": False, "text": f"gl-watchdog: {text}"}
    result = await post_json(url, body, timeout_seconds=timeout_seconds, what="Slack response_url")
    if not result.ok:
        log.warning("telling a Slack user of a refusal failed: %s", result.detail)
