"""The incident console: server-rendered pages over the watchdog's incidents, for people.

Installed by the composition root (`watchdog.assembly.create_app`) through
`watchdog.console.routes.add_routes` when `console_enabled` is on. Its modules, from the top:
`routes` (the list, the incident's page, the approval form), `actions` (diagnosing again, running a
playbook), `live` (the page's server-sent events), `handling` (what every handler stands on: the
services, sign-in, error pages, form posts), `signin` (who is looking), `forms` (the inputs), `views`
(what a page shows), `pages` (Jinja2 templates in `templates/`, the stylesheet and script in `static/`).
Signing in, settings and links: docs/console.md.
"""
