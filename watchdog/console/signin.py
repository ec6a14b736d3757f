"""Who is looking at the console: the identity the auth middleware found, or the local user.

Called by every console handler (`watchdog.console.routes`) before it reads anything. A browser
sends no bearer token, so in production the console's users are those of the trusted proxy
(`proxy_auth_enabled`, `trusted_proxies`: the auth middleware turns the proxy's `X-Forwarded-User`
or `X-Auth-Request-User` headers into an identity, only from a trusted peer). Without one, and only
with `console_local_mode`, a request from a loopback peer (a laptop, `kubectl port-forward`) is
signed in as `console_local_user` with `console_local_role`. Anything else is not signed in: the
console answers 401 with a page that says how to sign in. Local mode and proxy auth together are
refused at start-up: behind a proxy on the same host every request would come from loopback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

from gl_common.auth import is_loopback
from watchdog.settings import WatchdogSettings
from watchdog_sdk.errors import ConfigError

ROLES: Final = ("viewer", "approver", "operator", "admin")


@dataclass(frozen=True)
class Visitor:
    """A signed-in console user: a name, a role, and where the name comes from."""

    name: str
    role: str
    source: str

    @property
    def actor(self) -> str:
        """The audit's actor: `source:name`."""
        return f"{self.source}:{self.name}"

    def may(self, role: str) -> bool:
        """True when this visitor's role is `role` or higher."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class SignIn:
    """How the console recognises its visitors (from the settings)."""

    local_mode: bool
    local_user: str
    local_role: str

    @classmethod
    def from_settings(cls, settings: WatchdogSettings) -> SignIn:
        if settings.console_local_mode and getattr(settings, "proxy_auth_enabled", False):
            raise ConfigError(
                "console_local_mode and proxy_auth_enabled exclude each other: behind a proxy on the "
                "same host every request would be signed in as the local user"
            )
        return cls(settings.console_local_mode, settings.console_local_user, settings.console_local_role)

    def visitor(self, request: web.Request) -> Visitor | None:
        """The signed-in visitor of `request`, or None."""
        if self.local_mode and is_loopback(request.remote or ""):
            return Visitor(self.local_user, self.local_role, "local")
        return None
