"""Who is looking at the console: the identity the auth middleware found, or the local user.

Called by every console handler (`watchdog.console.routes`) before it reads anything. A browser
sends no bearer token, so in production the console's users are those of the trusted proxy
(`proxy_auth_enabled`, `trusted_proxies`: the auth middleware, `watchdog.http`, turns the proxy's
`X-Forwarded-User` or `X-Auth-Request-User` headers into a `watchdog.identity.Identity`, only from a
trusted peer; a bearer token's identity is taken too, for scripts). Without one, and only with
`console_local_mode`, a request from a loopback peer (a laptop, `kubectl port-forward`) is signed in
as `console_local_user` with `console_local_role`; its decisions are taken as those of the CLI on the
watchdog's machine are (the policy's groups are not asked; two distinct approvers still are). Anyone
else is not signed in: the console answers 401 with a page that says how to sign in. Local mode and
proxy auth together are refused at start-up: behind a proxy on the same host every request would
come from loopback.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gl_common.auth import is_loopback
from watchdog.identity import Identity, Role, identity_of
from watchdog.playbook_requests import Requester
from watchdog.settings import WatchdogSettings
from watchdog_sdk.errors import ConfigError


@dataclass(frozen=True)
class Visitor:
    """A signed-in console user: a name, a role, where the name comes from, and the identity the
    middleware gave (None for the local user)."""

    name: str
    role: Role
    source: str
    identity: Identity | None = None

    @property
    def actor(self) -> str:
        """The audit's actor: `source:name`."""
        return f"{self.source}:{self.name}"

    @property
    def requester(self) -> Requester:
        """The visitor as the requester of a playbook (`watchdog.playbook_requests`): the local user
        has no identity and stands, as the CLI on the watchdog's machine does, for a trusted caller."""
        return Requester(self.actor, self.identity)

    def may(self, role: Role) -> bool:
        """True when this visitor's role is `role` or higher."""
        return self.role >= role


@dataclass(frozen=True)
class SignIn:
    """How the console recognises its visitors (from the settings)."""

    local: Visitor | None  # the local user, in local mode

    @classmethod
    def from_settings(cls, settings: WatchdogSettings) -> SignIn:
        if not settings.console_local_mode:
            return cls(None)
        if settings.proxy_auth_enabled:
            raise ConfigError(
                "console_local_mode and proxy_auth_enabled exclude each other: behind a proxy on the "
                "same host every request would be signed in as the local user"
            )
        return cls(Visitor(settings.console_local_user, settings.console_local_role, "local"))

    def visitor(self, request: web.Request) -> Visitor | None:
        """The signed-in visitor of `request`, or None."""
        identity = identity_of(request)
        if identity is not None:
            return Visitor(identity.name, identity.role, identity.source, identity)
        if self.local is not None and is_loopback(request.remote or ""):
            return self.local
        return None
