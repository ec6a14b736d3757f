"""The runbook's resolution options as code.

Each playbook has a name, a risk level, preconditions checked against live state right before it
acts, `plan()` (a dry run), `apply()` (idempotent, keyed by incident, playbook and step) and
`verify()` (the runbook's post-resolution verification). The watchdog's remediation loop calls them;
they reach outside systems only through the watchdog's client modules.
"""
