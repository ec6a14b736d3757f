"""The CLI over HTTPS, as behind the chart's Ingress: the context's `ca_bundle` makes a private CA's
certificate trusted, without it the call fails as unreachable (exit 5) naming the certificate, and
`insecure_skip_tls_verify` skips the check. The watchdog's real app is served with TLS on loopback
(certificates made by openssl for the test); the CLI runs as a subprocess with only a context file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import free_port
from watchdog.assembly import build_watchdog, create_app
from watchdog.settings import WatchdogSettings

GL_WATCHDOG = str(Path(sys.executable).with_name("gl-watchdog"))
TOKEN = "cli-tls-token-0123456789"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it signed for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=gl-watchdog test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "1", "-extfile", "san.cnf")  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


@pytest.fixture
async def https_watchdog(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    ca, cert, key = make_certificates(tmp_path)
    settings = WatchdogSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}",
        api_tokens=[TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        approval_signing_key="k" * 32,
    )
    wd = await build_watchdog(settings, respond=False)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(create_app(wd), shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}", ca
    finally:
        await runner.cleanup()
        await wd.aclose(grace_seconds=1)


def cli(home: Path, context: str, *args: str) -> tuple[int, str, str]:
    config = home / ".config" / "gl-watchdog" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"current-context: tls\ncontexts:\n  tls: {context}\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GL_WATCHDOG_TOKEN": TOKEN}
    done = subprocess.run([GL_WATCHDOG, *args], cwd=home, env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


async def test_a_private_ca_is_trusted_through_the_context_and_only_then(
    https_watchdog: tuple[str, Path], tmp_path: Path
) -> None:
    url, ca = https_watchdog
    home = tmp_path / "home"
    trusted = f"{{server: '{url}', ca_bundle: {ca}}}"
    code, out, err = await asyncio.to_thread(cli, home, trusted, "incidents", "list", "-o", "json")
    assert code == 0 and '"total": 0' in out, err
    code, _, err = await asyncio.to_thread(cli, home, f"{{server: '{url}'}}", "incidents", "list")
    assert code == 5 and "CERTIFICATE_VERIFY_FAILED" in err, err
    skip = f"{{server: '{url}', insecure_skip_tls_verify: true}}"
    code, _, err = await asyncio.to_thread(cli, home, skip, "incidents", "list")
    assert code == 0, err
    not_a_ca = tmp_path / "empty.pem"
    not_a_ca.write_text("nothing\n")
    code, _, err = await asyncio.to_thread(
        cli, home, f"{{server: '{url}', ca_bundle: {not_a_ca}}}", "incidents", "list"
    )
    assert code == 2 and "holds no usable certificate" in err, err
