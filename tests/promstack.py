"""A real Prometheus and a real Alertmanager for tests, on 127.0.0.1 with random ports and temp dirs.

Used by the orchestrator's Prometheus tests (the shipped alert expression and the runbook's PromQL
against a scraped service) and by the watchdog's end-to-end alert test (Prometheus rule fires ->
Alertmanager -> watchdog webhook).

    with start_alertmanager("http://127.0.0.1:8081/api/v1/alerts", "token") as am:
        with start_prometheus(["127.0.0.1:8080"], rule_files=[rules], alertmanager_url=am.url) as prom:
            prom.query('up')            # -> list of {"metric": {...}, "value": [ts, "1"]}

Both objects are context managers in sync (`with`) and async (`async with`) form. Use the async form
when the scrape target (or the webhook receiver) runs in the test's own event loop: start-up waits
(for `up == 1` on every target) then run in a thread instead of blocking the loop. `aquery()` is the
async form of `query()`. When a binary is missing the test is skipped locally and fails under CI
(`missing_service`). Processes are stopped (SIGTERM, then SIGKILL after 10 s) and temp dirs removed
on exit; on a start-up failure the process log is in the raised error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, start_http_server

from tests.conftest import free_port, missing_service, wait_for_port

HTTP_TIMEOUT = 5.0
START_TIMEOUT = 30.0


class PromStackError(RuntimeError):
    """A Prometheus/Alertmanager process did not start or answered with an error."""


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        raise PromStackError(f"GET {url} -> {exc.code}: {body}") from exc


class _Process:
    """A server binary in a temp dir; subclasses provide the command and the readiness check."""

    name = "process"

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"gl-test-{self.name}-"))
        self.log_path = self.workdir / "process.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        try:
            if not wait_for_port(self.port, timeout=START_TIMEOUT):
                raise PromStackError(f"{self.name} did not listen on {self.port}:\n{self.log()}")
            deadline = time.monotonic() + START_TIMEOUT
            while not self._ready():
                if self._proc.poll() is not None:
                    raise PromStackError(f"{self.name} exited:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise PromStackError(f"{self.name} not ready after {START_TIMEOUT}s:\n{self.log()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> _Process:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> _Process:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


class PrometheusProcess(_Process):
    """A running Prometheus; `query()` runs an instant PromQL query and returns `data.result`."""

    name = "prometheus"

    def __init__(
        self,
        scrape_targets: Sequence[str],
        rule_files: Sequence[str | Path],
        alertmanager_url: str | None,
        scrape_interval: str,
        evaluation_interval: str,
        metrics_path: str,
    ) -> None:
        super().__init__()
        self.scrape_targets = list(scrape_targets)
        config: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
            "scrape_configs": [
                {
                    "job_name": "targets",
                    "metrics_path": metrics_path,
                    "scrape_interval": scrape_interval,
                    "scrape_timeout": scrape_interval,
                    "static_configs": [{"targets": self.scrape_targets}],
                }
            ],
        }
        if rule_files:
            config["rule_files"] = [str(Path(path).resolve()) for path in rule_files]
        if alertmanager_url:
            parsed = urllib.parse.urlparse(alertmanager_url)
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [parsed.netloc]}], "api_version": "v2"}]
            }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def _command(self) -> list[str]:
        binary = shutil.which("prometheus")
        assert binary is not None
        return [
            binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def _ready(self) -> bool:
        try:
            if not self.scrape_targets:
                return bool(_get_json(f"{self.url}/api/v1/status/buildinfo").get("status") == "success")
            results = self.query("up == 1")
        except (PromStackError, OSError, ValueError):
            return False
        return len(results) >= len(self.scrape_targets)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; raises `PromStackError` when Prometheus refuses the expression."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        payload = _get_json(url)
        if payload.get("status") != "success":
            raise PromStackError(f"query {promql!r} failed: {payload}")
        return list(payload["data"]["result"])

    async def aquery(self, promql: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.query, promql)

    def wait_for_result(self, promql: str, within: float = 30.0) -> list[dict[str, Any]]:
        """Poll `promql` (every 0.2 s) until it returns a result, e.g. once a target is scraped; fail
        the test after `within` seconds."""
        deadline = time.monotonic() + within
        while not (results := self.query(promql)):
            assert time.monotonic() < deadline, f"Prometheus never answered {promql}"
            time.sleep(0.2)
        return results

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' view of alerts (pending and firing)."""
        return list(_get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"])

    async def aalerts(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.alerts)


class AlertmanagerProcess(_Process):
    """A running Alertmanager that sends every alert to one webhook with a bearer token."""

    name = "alertmanager"

    def __init__(
        self, webhook_url: str, bearer_token: str, group_wait: str, group_interval: str, repeat_interval: str
    ) -> None:
        super().__init__()
        config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname", "execution_id"],
                "group_wait": group_wait,
                "group_interval": group_interval,
                "repeat_interval": repeat_interval,
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [
                        {
                            "url": webhook_url,
                            "send_resolved": True,
                            "http_config": {"authorization": {"type": "Bearer", "credentials": bearer_token}},
                        }
                    ],
                }
            ],
        }
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))

    def _command(self) -> list[str]:
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        assert binary is not None
        return [
            binary,
            f"--config.file={self.workdir / 'alertmanager.yml'}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def _ready(self) -> bool:
        try:
            _get_json(f"{self.url}/api/v2/status")
        except (PromStackError, OSError, ValueError):
            return False
        return True

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager currently holds (API v2)."""
        return list(_get_json(f"{self.url}/api/v2/alerts"))

    def query(self, matcher: str) -> list[dict[str, Any]]:
        """Alerts matching a label matcher, e.g. `alertname="OrchestratorExecutionTimeout"` (no PromQL
        here: Alertmanager's v2 `filter`)."""
        return list(_get_json(f"{self.url}/api/v2/alerts?" + urllib.parse.urlencode({"filter": matcher})))

    async def aquery(self, matcher: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.query, matcher)

    async def aalerts(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.alerts)


def start_prometheus(
    scrape_targets: Sequence[str],
    rule_files: Sequence[str | Path] = (),
    alertmanager_url: str | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    metrics_path: str = "/metrics",
) -> PrometheusProcess:
    """Prometheus scraping `scrape_targets` ("127.0.0.1:PORT"); use with `with` or `async with`.

    Entering waits until `up == 1` for every target (so a target must already be serving).
    """
    if shutil.which("prometheus") is None:
        missing_service("prometheus binary not installed")
    return PrometheusProcess(
        scrape_targets, rule_files, alertmanager_url, scrape_interval, evaluation_interval, metrics_path
    )


def start_alertmanager(
    webhook_url: str,
    bearer_token: str,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "1m",
) -> AlertmanagerProcess:
    """Alertmanager routing every alert to `webhook_url` with `Authorization: Bearer <token>`."""
    if shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None:
        missing_service("alertmanager binary not installed")
    return AlertmanagerProcess(webhook_url, bearer_token, group_wait, group_interval, repeat_interval)


@contextlib.contextmanager
def prometheus_scraping(registry: CollectorRegistry) -> Iterator[PrometheusProcess]:
    """A real Prometheus scraping `registry`, served by prometheus-client's exporter on loopback.

    The exporter is shut down after Prometheus when the block ends."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        with start_prometheus([f"127.0.0.1:{port}"]) as prom:
            yield prom  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
