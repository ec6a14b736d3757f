"""Bearer-token checks for both services' HTTP APIs: one implementation of the constant-time comparison.

Where it sits: the orchestrator's API middleware (`orchestrator_core.api`) and the watchdog's
(`watchdog.http`, and the approval routes of `watchdog.web`) build a `TokenSource` from their settings
and ask it whether a request's `Authorization: Bearer <token>` header is accepted. Tokens come from the
settings and/or a token file (one token per line), which is re-read when it changes, so a rotated
Kubernetes secret takes effect without a restart. Tokens are never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path


class TokenFileError(Exception):
    """The token file cannot be read; the service cannot tell a valid token from an invalid one."""


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None when it carries none."""
    scheme, _, presented = authorization.partition(" ")
    token = presented.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class TokenSource:
    """Accepted bearer tokens: static ones plus the lines of a token file (re-read when it changes)."""

    def __init__(self, static: Iterable[str], token_file: Path | None = None) -> None:
        self._static = [token for token in static if token]
        self._file = token_file
        self._file_mtime: float | None = None
        self._file_tokens: list[str] = []

    def tokens(self) -> list[str]:
        """Every accepted token; raises TokenFileError when the token file cannot be read."""
        if self._file is not None:
            try:
                mtime = self._file.stat().st_mtime
                if mtime != self._file_mtime:
                    text = self._file.read_text(encoding="utf-8")
                    self._file_tokens = [line.strip() for line in text.splitlines() if line.strip()]
                    self._file_mtime = mtime
            except OSError as exc:
                raise TokenFileError(f"cannot read the token file {self._file}: {exc.strerror}") from exc
        return self._static + self._file_tokens

    def accepts(self, presented: str) -> bool:
        """True when `presented` is one of the tokens; compared with every one of them in constant
        time, so timing tells neither whether nor which one matched. Never true without tokens."""
        candidate = presented.encode()
        matched = False
        for token in self.tokens():
            matched |= hmac.compare_digest(candidate, token.encode())
        return matched
