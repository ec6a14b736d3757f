"""`gl-watchdog`: the watchdog's command line (click), a client of the watchdog's API.

Where it sits: the console script (`gl-watchdog = "watchdog.cli:main"`). The operator's commands
talk to a running `gl-watchdog serve` over HTTP(S) with a named token (`watchdog.client`), chosen by
a context of the config file (`watchdog.cli.contexts`, like kubectl's) or by `--server`/`--token`;
they need no database, Redis or orchestrator credentials here:

    incidents list|show, diagnose, events, approve, deny,     (watchdog.cli.incidents, .operate)
    playbook run|propose, sweep, policy show, modes, tokens, whoami
    config set-context|use-context|get-contexts|current-context|delete-context   (.config_commands)

The local commands work on this machine's files and credentials and say so in their help: `serve`,
`demo`, `policy check`, `replay`, and `--local` on `incidents list`, `diagnose`, `playbook run` and
`sweep` (`watchdog.cli.local`, `watchdog.remediation_cli`, `watchdog.policy_cli`).

Every command takes `-o table|json|yaml` (table on a terminal, JSON otherwise) and `--help`; colour
only on a terminal, never with NO_COLOR. Errors are one line on stderr and an exit code of their kind,
the same in every command (`watchdog.exit_codes`), never a traceback. Shell completion: click's,
`eval "$(_GL_WATCHDOG_COMPLETE=bash_source gl-watchdog)"` (zsh_source, fish_source).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import click

from watchdog import remediation_cli
from watchdog.cli import config_commands, incidents, local, operate
from watchdog.cli.contexts import CONFIG_ENV, CONTEXT_ENV, SERVER_ENV, TOKEN_ENV, Overrides
from watchdog.cli.session import Session
from watchdog.exit_codes import EXIT_USAGE, CliError, exit_code
from watchdog.policy_cli import policy_check
from watchdog_sdk.errors import WatchdogError

EXIT_CODES_HELP = """Exit codes, the same in every command: 0 done; 1 failed, denied or refused by the
incident's state (409); 2 bad usage or input (400/422); 3 not found (404); 4 the token refused or not
allowed (401/403); 5 the service unreachable or failing (timeout, TLS, 5xx)."""


def _version() -> str:
    try:
        return version("gl-watchdog")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
        return "unknown"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(_version(), "--version", prog_name="gl-watchdog")
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help=f"the CLI's contexts file (env {CONFIG_ENV}; default $XDG_CONFIG_HOME/gl-watchdog/config.yaml)",
)
@click.option("--context", help=f"the context to use (env {CONTEXT_ENV}; default the current one)")
@click.option("--server", help=f"the watchdog's URL, over the context's (env {SERVER_ENV})")
@click.option("--token", help=f"the API token, over the context's (env {TOKEN_ENV}; prefer a token_file)")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds per API call")
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: str | None,
    context: str | None,
    server: str | None,
    token: str | None,
    timeout: float,
) -> None:
    """Alert responder for stuck DAG executions: operate the watchdog service through its API.

    Set up a context once (gl-watchdog config set-context prod --server URL --token-file FILE), then
    e.g. `gl-watchdog incidents list`, `incidents show ID`, `approve ID`. Commands marked "local"
    work on this machine's files instead."""
    if timeout <= 0:
        raise CliError(f"--timeout must be positive, not {timeout:g}", EXIT_USAGE)
    ctx.obj = Session(config_file, Overrides(context, server, token), timeout)


for command in (
    config_commands.config_group,
    incidents.incidents_group,
    incidents.diagnose,
    incidents.events,
    operate.approve,
    operate.deny,
    operate.playbook_group,
    operate.sweep,
    operate.modes,
    operate.tokens_group,
    operate.whoami,
    local.serve,
    local.replay,
    remediation_cli.demo,
):
    cli.add_command(command)


@cli.group("policy")
def policy_group() -> None:
    """The remediation policy: `show` the service's, `check` a file (local)."""


policy_group.add_command(operate.policy_show)
policy_group.add_command(policy_check)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `gl-watchdog`; returns the exit code (EXIT_CODES_HELP)."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="gl-watchdog", standalone_mode=False
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Abort:
        _fail("interrupted")
        return 130
    except (CliError, WatchdogError) as exc:
        _fail(str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    return result if isinstance(result, int) else 0


def _fail(message: str) -> None:
    sys.stderr.write(f"gl-watchdog: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
