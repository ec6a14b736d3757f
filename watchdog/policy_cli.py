"""`gl-watchdog policy check FILE`: validate a remediation policy without starting anything.

Added to the parser by `watchdog.cli.build_parser`. Loads the plugins (`watchdog.plugins`: the
built-ins and the installed entry points) and checks the file as the service would at start
(`watchdog.policy.load_policy`): exit 0 with a one-line summary, or 2 with every problem named, with
its line and rule (`watchdog.exit_codes`: a policy error is bad input). Plugins left out are listed
on stderr either way, since the service would start without them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from watchdog.exit_codes import EXIT_OK
from watchdog.plugins import load_plugins
from watchdog.policy import load_policy


def cmd_policy_check(args: argparse.Namespace) -> int:
    """Check a policy file against the loaded playbooks and diagnostic steps; change nothing."""
    catalog = load_plugins()
    for problem in catalog.problems:
        sys.stderr.write(f"gl-watchdog: warning: {problem}\n")
    policy = load_policy(args.file, catalog=catalog)
    used = sorted({rule.playbook for rule in policy.rules if rule.playbook is not None})
    sys.stdout.write(
        f"{args.file}: ok: {len(policy.rules)} rule(s); playbooks used: {', '.join(used) or 'none'}\n"
    )
    return EXIT_OK


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `policy check` to the `gl-watchdog` subparsers `sub`."""
    policy = sub.add_parser("policy", help="work with remediation policy files")
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        parents=[common],
        help="validate a policy file without starting anything (exit 0, or 2 naming the problem)",
        description=cmd_policy_check.__doc__,
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_policy_check)
