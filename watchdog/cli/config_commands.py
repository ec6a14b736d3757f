"""`gl-watchdog config ...`: the contexts of the CLI's config file, like `kubectl config`.

Where it sits: a command group of `watchdog.cli`; reads and writes the file through
`watchdog.cli.contexts` (which documents the file and the precedence of flags and environment).
Never prints a token: `get-contexts` says where each context's token comes from.

    gl-watchdog config set-context NAME --server URL [--token-file FILE | --token-stdin]
                                        [--ca-bundle FILE] [--insecure-skip-tls-verify] [--use]
    gl-watchdog config use-context NAME
    gl-watchdog config get-contexts
    gl-watchdog config current-context
    gl-watchdog config delete-context NAME
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from watchdog.cli.contexts import ClientConfig, ContextEntry, context_entry, load_config, save_config
from watchdog.cli.output import Output, output_option, table
from watchdog.cli.session import Session, pass_session
from watchdog.exit_codes import EXIT_NOT_FOUND, EXIT_USAGE, CliError


@click.group("config")
def config_group() -> None:
    """Contexts (server, token, TLS) in the CLI's config file; --config FILE (before the command) or
    GL_WATCHDOG_CONFIG choose the file, default $XDG_CONFIG_HOME/gl-watchdog/config.yaml."""


@config_group.command("set-context")
@click.argument("name")
@click.option("--server", help="the watchdog's URL, e.g. https://watchdog.example.com")
@click.option("--token-file", help="a file holding the token (kept as a path, read at each call)")
@click.option("--token-stdin", is_flag=True, help="read the token from stdin and store it in the file")
@click.option("--ca-bundle", help="a PEM file of the CA(s) to verify the server's certificate with")
@click.option("--insecure-skip-tls-verify", is_flag=True, default=None, help="do not verify TLS (tests only)")
@click.option("--use", "use_it", is_flag=True, help="also make it the current context")
@pass_session
def set_context(
    session: Session,
    name: str,
    server: str | None,
    token_file: str | None,
    token_stdin: bool,
    ca_bundle: str | None,
    insecure_skip_tls_verify: bool | None,
    use_it: bool,
) -> None:
    """Add a context, or change the given fields of an existing one."""
    if token_file and token_stdin:
        raise CliError("give either --token-file or --token-stdin, not both", EXIT_USAGE)
    path = session.path
    config = load_config(path)
    fields: dict[str, Any] = config.contexts[name].model_dump() if name in config.contexts else {}
    given = {"server": server, "token_file": token_file, "ca_bundle": ca_bundle}
    fields.update({k: v for k, v in given.items() if v is not None})
    if insecure_skip_tls_verify is not None:
        fields["insecure_skip_tls_verify"] = insecure_skip_tls_verify
    if token_file:
        fields["token"] = None
    if token_stdin:
        fields["token"], fields["token_file"] = _read_token() or None, None
    if "server" not in fields:
        raise CliError(f"a new context needs --server URL ({name!r} is not in {path})", EXIT_USAGE)
    try:
        config.contexts[name] = ContextEntry.model_validate(fields)
    except ValueError as exc:
        raise CliError(f"context {name!r}: {_first_error(exc)}", EXIT_USAGE) from None
    if use_it or config.current_context is None:
        config.current_context = name
    save_config(path, config)
    click.echo(f"context {name} saved in {path}" + (" (current)" if config.current_context == name else ""))


def _read_token() -> str:
    """The token from stdin: asked for without echo on a terminal, else its first line."""
    if sys.stdin.isatty():
        return str(click.prompt("token", hide_input=True)).strip()
    return sys.stdin.readline().strip()


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("msg", exc)).removeprefix("Value error, ")
    return str(exc)


def _change(session: Session, name: str, edit: Callable[[ClientConfig], None]) -> None:
    """Apply `edit` to the file's config, once context `name` is known to exist (else exit 3)."""
    path = session.path
    config = load_config(path)
    context_entry(config, name, path)
    edit(config)
    save_config(path, config)


@config_group.command("use-context")
@click.argument("name")
@pass_session
def use_context(session: Session, name: str) -> None:
    """Make NAME the current context."""

    def use(config: ClientConfig) -> None:
        config.current_context = name

    _change(session, name, use)
    click.echo(f"current context: {name}")


@config_group.command("delete-context")
@click.argument("name")
@pass_session
def delete_context(session: Session, name: str) -> None:
    """Remove the context NAME."""

    def delete(config: ClientConfig) -> None:
        del config.contexts[name]
        if config.current_context == name:
            config.current_context = None

    _change(session, name, delete)
    click.echo(f"context {name} deleted")


@config_group.command("get-contexts")
@output_option()
@pass_session
def get_contexts(session: Session, output: str | None) -> None:
    """List the contexts (the current one marked with *); tokens are never shown."""
    path = session.path
    config = load_config(path)
    items = [
        {
            "name": name,
            "current": name == config.current_context,
            "server": entry.server,
            "token": entry.token_source(),
            "ca_bundle": entry.ca_bundle,
            "insecure_skip_tls_verify": entry.insecure_skip_tls_verify,
        }
        for name, entry in config.contexts.items()
    ]
    Output.of(output).emit(
        {"config": str(path), "current-context": config.current_context, "contexts": items},
        lambda data: (
            table(
                ("CURRENT", "NAME", "SERVER", "TOKEN", "TLS"),
                (
                    (
                        "*" if c["current"] else "",
                        c["name"],
                        c["server"],
                        c["token"],
                        "skip verify" if c["insecure_skip_tls_verify"] else c["ca_bundle"] or "system CAs",
                    )
                    for c in data["contexts"]
                ),
            )
            if data["contexts"]
            else f"no contexts in {path}"
        ),
    )


@config_group.command("current-context")
@pass_session
def current_context(session: Session) -> None:
    """Print the current context's name (exit 3 when none is set)."""
    config = load_config(session.path)
    if not config.current_context:
        raise CliError(f"no current context in {session.path}", EXIT_NOT_FOUND)
    click.echo(config.current_context)
