"""`gl-watchdog policy check FILE`: validate a remediation policy without starting anything.

Added to the `policy` group by `watchdog.cli` (next to `policy show`, which asks the service). Local:
loads the plugins here (`watchdog.plugins`: the built-ins and the installed entry points) and checks
the file as the service would at start (`watchdog.policy.load_policy`): exit 0 with a one-line
summary, or 2 with every problem named, with its line and rule (`watchdog.exit_codes`: a policy
error is bad input). Plugins left out are listed on stderr either way, since the service would start
without them.
"""

from __future__ import annotations

import sys

import click

from watchdog.plugins import load_plugins
from watchdog.policy import load_policy


@click.command("check", short_help="(local) validate a policy file")
@click.argument("file", metavar="FILE")
def policy_check(file: str) -> None:
    """Check a policy file against the playbooks and diagnostic steps installed here (local);
    change nothing."""
    catalog = load_plugins()
    for problem in catalog.problems:
        sys.stderr.write(f"gl-watchdog: warning: {problem}\n")
    policy = load_policy(file, catalog=catalog)
    used = sorted({rule.playbook for rule in policy.rules if rule.playbook is not None})
    sys.stdout.write(
        f"{file}: ok: {len(policy.rules)} rule(s); playbooks used: {', '.join(used) or 'none'}\n"
    )
