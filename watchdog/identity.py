"""Who is calling: roles, identities, and the trusted proxy's identity headers.

Where it sits: the watchdog's auth middleware (`watchdog.http`) gives every request that carries a
credential an `Identity` (`identity_of(request)`): a named API token (`watchdog.tokens`, source
`token`), a settings token (`api_tokens` / `api_token_file`, source `bootstrap`, role admin), or the
identity headers of an authenticating proxy (`ProxyAuth` below, source `proxy`). Route handlers
(`watchdog.api`, `watchdog.operator_api`, `watchdog.web`, the console) ask `require_role(request,
Role.X, "approve")` before they act; approvals (`watchdog.approvals`) check the policy's approval rule
against the deciding identity, and every decision is audited with `identity.actor` (`token:alice`,
`proxy:alice@example.com`).

Roles are ordered: viewer < approver < operator < admin (each may do what the ones before may).

    viewer     every GET
    approver   approve / deny
    operator   diagnose, run or propose a playbook, sweep, open an incident, post alerts
    admin      named tokens, the live mode

Proxy headers (oauth2-proxy's `X-Auth-Request-User`/`-Email`/`-Groups`, or `X-Forwarded-User`/
`-Email`/`-Groups`: one set, `proxy_headers`, never both, since a proxy overwrites only the set it
sets and passes the other through from the client) are trusted only when `proxy_auth_enabled` and the
peer address is inside one of `trusted_proxies`; from anywhere else they are ignored, and the forgery
is reported at a bounded rate per source (`watchdog.auth_failures`), never trusted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

from aiohttp import web

from gl_common.http import ApiError

Source = Literal["token", "proxy", "slack", "link", "bootstrap"]
BOOTSTRAP_NAME: Final = "admin"
HeaderSet = Literal["x-auth-request", "x-forwarded"]
# (user, email, groups) of each kind of proxy: oauth2-proxy's `--set-xauthrequest` headers (what an
# ingress controller's external auth passes on), or its `--pass-user-headers` X-Forwarded-* ones.
PROXY_HEADERS: Final[dict[str, tuple[str, str, str]]] = {
    "x-auth-request": ("X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups"),
    "x-forwarded": ("X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups"),
}
MAX_HEADER_VALUE: Final = 256  # a user name or an email
MAX_GROUPS_VALUE: Final = 8192  # the comma-separated groups


class Role(StrEnum):
    """What an identity may do; compared by rank (viewer < approver < operator < admin)."""

    VIEWER = "viewer"
    APPROVER = "approver"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def __lt__(self, other: object) -> bool:
        return self.rank < Role(other).rank if isinstance(other, str) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.rank <= Role(other).rank if isinstance(other, str) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.rank > Role(other).rank if isinstance(other, str) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.rank >= Role(other).rank if isinstance(other, str) else NotImplemented


_RANKS: Final = {role: rank for rank, role in enumerate(Role)}


@dataclass(frozen=True)
class Identity:
    """Who a request (or a decision) comes from."""

    name: str
    role: Role
    source: Source
    groups: tuple[str, ...] = ()
    email: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names it: `source:name` (`token:alice`, `proxy:alice@example.com`)."""
        return f"{self.source}:{self.name}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "source": self.source,
            "groups": list(self.groups),
            "email": self.email,
            "actor": self.actor,
        }


_IDENTITY: Final = web.RequestKey("identity", Identity)
BOOTSTRAP: Final = Identity(name=BOOTSTRAP_NAME, role=Role.ADMIN, source="bootstrap")


def identity_of(request: web.Request) -> Identity | None:
    """The identity the auth middleware gave `request` (None: it carries no credential)."""
    return request.get(_IDENTITY)


def set_identity(request: web.Request, identity: Identity) -> None:
    """Called by the auth middleware only."""
    request[_IDENTITY] = identity


def role_refusal(identity: Identity, needed: Role, action: str) -> ApiError:
    """The 403 of an identity whose role is below `needed` for `action`."""
    return ApiError(
        403,
        "forbidden",
        f"role {identity.role} cannot {action}: {needed} or higher needed",
        role=identity.role.value,
        needed=needed.value,
    )


def require_role(request: web.Request, needed: Role, action: str = "do this") -> Identity:
    """The request's identity when its role is `needed` or higher; 403 naming the role needed (401
    without an identity, which the middleware normally refuses first)."""
    identity = identity_of(request)
    if identity is None:
        raise ApiError(401, "unauthorized", f"sign in to {action}: no credential given")
    if identity.role < needed:
        raise role_refusal(identity, needed, action)
    return identity


# -- the authenticating proxy --------------------------------------------------------------------------

# Told of a proxy header from an untrusted peer: (source address, reason, detail); rate-bounded there.
OnForged = Callable[[str, str, str], object]


class ProxyAuth:
    """The identity headers of an authenticating proxy, trusted only from its addresses.

    `role_map` maps a group or an email (or the user name) to a role; the highest matching role
    wins, `default_role` when none matches.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        trusted_proxies: Iterable[str] = (),
        role_map: Mapping[str, Role] | None = None,
        default_role: Role = Role.VIEWER,
        headers: HeaderSet = "x-auth-request",
        on_forged: OnForged | None = None,
    ) -> None:
        self.enabled = enabled
        self.headers = PROXY_HEADERS[headers]
        self.networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies)
        self.role_map = dict(role_map or {})
        self.default_role = default_role
        self._on_forged = on_forged

    def trusts(self, peer: str | None) -> bool:
        """True when the proxy headers of a request from `peer` are believed."""
        if not self.enabled or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener's view of an IPv4 peer
        return any(address in network for network in self.networks)

    def identify(self, request: web.Request, *, report: bool = True) -> Identity | None:
        """The proxy's identity of `request`, or None (no header, or a peer not trusted: reported as
        forged when `report`)."""
        headers = _proxy_headers(request, self.headers)
        if headers is None:
            return None
        if not self.trusts(request.remote):
            if report and self._on_forged is not None:
                self._on_forged(
                    request.remote or "unknown",
                    "untrusted_proxy_header",
                    f"{request.method} {request.path}: identity headers from an untrusted address ignored",
                )
            return None
        user, email, groups = headers
        name = email or user
        if not name:
            return None
        return Identity(
            name=name, role=self.role_of(user, email, groups), source="proxy", groups=groups, email=email
        )

    def role_of(self, user: str | None, email: str | None, groups: tuple[str, ...]) -> Role:
        """The highest role the map gives any of the user's names and groups, else the default."""
        keys = [key for key in (user, email, *groups) if key]
        roles = [self.role_map[key] for key in keys if key in self.role_map]
        return max(roles, key=lambda role: role.rank, default=self.default_role)


def _proxy_headers(
    request: web.Request, names: tuple[str, str, str]
) -> tuple[str | None, str | None, tuple[str, ...]] | None:
    """(user, email, groups) from the headers `names`, or None when neither user nor email is there."""
    user_h, email_h, groups_h = names
    user, email = _header(request, user_h), _header(request, email_h)
    if user is None and email is None:
        return None
    groups_text = _header(request, groups_h, MAX_GROUPS_VALUE) or ""
    return user, email, tuple(g.strip() for g in groups_text.split(",") if g.strip())


def _header(request: web.Request, name: str, limit: int = MAX_HEADER_VALUE) -> str | None:
    """A header's value; None when absent, empty, too long or not printable (never trusted then)."""
    value = request.headers.get(name, "").strip()
    if not value or len(value) > limit or not value.isprintable():
        return None
    return value
