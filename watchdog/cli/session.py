"""One invocation's connection: the root options (`--config`, `--context`, `--server`, `--token`)
kept on click's context object, and the API client built from them on first use.

Where it sits: created by the root group of `watchdog.cli`; the remote commands ask it for
`client()`, which resolves the context (`watchdog.cli.contexts`) only then, so local commands and
`--help` never read the config file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import click

from watchdog.cli.contexts import Connection, Overrides, config_path, resolve
from watchdog.client import DEFAULT_TIMEOUT_SECONDS, ApiClient


@dataclass
class Session:
    config_file: str | None = None
    overrides: Overrides = field(default_factory=Overrides)
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    _client: ApiClient | None = None

    @property
    def path(self) -> Path:
        return config_path(self.config_file, os.environ)

    def connection(self) -> Connection:
        return resolve(self.path, self.overrides, os.environ)

    def client(self) -> ApiClient:
        """The API client of this invocation (closed when the command ends)."""
        if self._client is None:
            connection = self.connection()
            self._client = ApiClient(
                connection.server, connection.token, verify=connection.verify, timeout=self.timeout
            )
            click.get_current_context().call_on_close(self._client.close)
        return self._client


pass_session = click.make_pass_decorator(Session)
