"""The console's HTML: Jinja2 templates (autoescaped) and its static files, served with caching headers.

Used by the console's handlers (`watchdog.console.routes`): `Pages.render(...)` answers a template
as an HTML response, `Pages.static(...)` answers a file of `static/`. The templates and static files
are package data (`watchdog/console/templates`, `watchdog/console/static`), read once at start-up.
A static file's URL carries a digest of its contents (`?v=`), so browsers may keep it for a year and
a new version is fetched at once; the pages themselves are never cached (they show live state).
No inline script or style anywhere: the Content-Security-Policy forbids both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any, Final

import jinja2
from aiohttp import web

STATIC_TYPES: Final = {".css": "text/css", ".js": "text/javascript"}
STATIC_CACHE: Final = "public, max-age=31536000, immutable"
PAGE_CACHE: Final = "no-store"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    digest: str


def _load_static() -> dict[str, StaticFile]:
    found: dict[str, StaticFile] = {}
    for entry in files("watchdog.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in STATIC_TYPES:
            body = entry.read_bytes()
            found[entry.name] = StaticFile(body, STATIC_TYPES[suffix], hashlib.sha256(body).hexdigest()[:16])
    return found


def _when(value: datetime | None) -> str:
    """A timestamp as the console shows it: UTC, to the second."""
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


class Pages:
    """The templates and static files, loaded once."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.static_files = _load_static()
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("watchdog.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.globals["static_url"] = self.static_url
        self.env.globals["prefix"] = prefix

    def static_url(self, name: str) -> str:
        return f"{self.prefix}/static/{name}?v={self.static_files[name].digest}"

    def render(self, template: str, *, status: int = 200, **values: Any) -> web.Response:
        """`template` rendered with `values`, as an uncached HTML response."""
        text = self.env.get_template(template).render(**values)
        response = web.Response(status=status, text=text, content_type="text/html")
        response.headers["Cache-Control"] = PAGE_CACHE
        return response

    def static(self, name: str) -> web.Response:
        """A static file by name (404 for any other name: no paths, no listing)."""
        found = self.static_files.get(name)
        if found is None:
            raise web.HTTPNotFound(text=f"no static file {name!r}")
        response = web.Response(body=found.body, content_type=found.content_type)
        response.headers["Cache-Control"] = STATIC_CACHE
        response.headers["ETag"] = f'"{found.digest}"'
        return response
