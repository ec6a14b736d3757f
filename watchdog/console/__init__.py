"""The incident console: server-rendered pages over the watchdog's incidents, for people.

Installed by the composition root (`watchdog.assembly.create_app`) through
`watchdog.console.routes.add_routes` when `console_enabled` is on. Its modules, from the top:
`routes` (the aiohttp handlers), `signin` (who is looking), `forms` (the inputs), `views` (what a
page shows), `pages` (Jinja2 templates in `templates/`, the stylesheet and script in `static/`).
Signing in, settings and links: docs/console.md.
"""
