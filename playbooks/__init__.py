"""The runbook's resolution options as code: the six built-in playbooks.

Each is a plugin of the playbook interface in `watchdog_sdk.playbook` and imports only `watchdog_sdk`
and `gl_common` (`.importlinter`): a name, a risk level, a params model, preconditions checked against
live state right before it acts, typed `steps()` that `plan()` shows (a dry run) and `apply()` runs
(idempotent, keyed by incident, playbook and step), and `verify()` (the runbook's post-resolution
verification, `checks`). `registry.default_registry()` gathers them; the watchdog's remediation state
machine calls them. They reach outside systems only through the clients of `watchdog_sdk`.
"""
