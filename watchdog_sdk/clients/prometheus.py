"""Prometheus, queried through prometheus-api-client's `PrometheusConnect` in a worker thread.

Used by the condition (the shipped alert expression), diagnostic steps 5, 7 and 8 (contention, agent
call latency, checkpoint save errors) and the playbooks' verification. `PrometheusConnect` is
synchronous (requests), so every call runs in `asyncio.to_thread`, with a request timeout and
`Retry(total=0)`: the library's default retries with back-off would hide a dead Prometheus for
seconds. Errors are converted here:

- connection refused, DNS, timeouts, HTTP 502/503/504 → `PrometheusUnavailable`
- any other error status (bad PromQL is 400/422), an unparsable answer → `PrometheusQueryError`
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from watchdog_sdk.errors import PrometheusQueryError, PrometheusUnavailable

_STATUS_RE = re.compile(r"HTTP Status Code (\d{3})")
_UNAVAILABLE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Sample:
    """One instant-vector element (or the scalar answer): labels, value, sample timestamp."""

    labels: dict[str, str] = field(default_factory=dict)
    value: float = math.nan
    timestamp: float = 0.0


class PrometheusClient:
    """Instant queries against one Prometheus server, without hidden retries, with a timeout."""

    def __init__(self, url: str, *, timeout: float = 5.0, headers: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._connect = PrometheusConnect(
            url=self.url,
            headers=dict(headers or {}),
            retry=Retry(total=0, connect=0, read=0, redirect=0, status=0, backoff_factor=0),
            session=self._session,
            timeout=timeout,  # type: ignore[arg-type]  # annotated int; requests takes a float
        )

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    async def query(self, promql: str, *, request_timeout: float | None = None) -> list[Sample]:
        """Evaluate `promql` now; the result as samples (a scalar answer becomes one unlabelled sample).

        `request_timeout` overrides the client's timeout for this call (it bounds the HTTP request
        in the worker thread, which `asyncio.timeout` could not interrupt).
        """
        effective = self.timeout if request_timeout is None else request_timeout
        raw = await asyncio.to_thread(self._query_sync, promql, effective)
        return _samples(raw, promql)

    async def query_value(self, promql: str, *, request_timeout: float | None = None) -> float | None:
        """The value of a query expected to give at most one sample; None when it gives none."""
        samples = await self.query(promql, request_timeout=request_timeout)
        if not samples:
            return None
        return samples[0].value

    async def ready(self) -> bool:
        """True when Prometheus answers a trivial query (readiness probes)."""
        try:
            await self.query("vector(1)")
        except (PrometheusUnavailable, PrometheusQueryError):
            return False
        return True

    def _query_sync(self, promql: str, timeout: float) -> Any:
        try:
            return self._connect.custom_query(query=promql, timeout=timeout)  # type: ignore[arg-type]
        except requests.Timeout as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.url} timed out after {timeout:g}s") from exc
        except requests.ConnectionError as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.url} unreachable: {_os_reason(exc)}") from exc
        except requests.RequestException as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.url} request failed: {_short(exc)}") from exc
        except PrometheusApiClientException as exc:
            match = _STATUS_RE.search(str(exc))
            status = int(match.group(1)) if match else 0
            if status in _UNAVAILABLE_STATUSES:
                raise PrometheusUnavailable(f"Prometheus at {self.url} answered {status}") from exc
            raise PrometheusQueryError(f"query {promql!r} failed: {_short(exc)}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise PrometheusQueryError(f"query {promql!r}: unexpected answer from Prometheus: {exc}") from exc


_OS_REASON = re.compile(r"\[Errno -?\d+\] [^'\")]+|Name or service not known|Connection refused")


def _os_reason(exc: BaseException) -> str:
    """The operating system's reason inside requests' 'HTTPConnectionPool(...): Max retries exceeded
    with url: ... (Caused by NewConnectionError(...))', e.g. '[Errno 111] Connection refused'."""
    match = _OS_REASON.search(str(exc))
    return match.group(0).strip() if match else _short(exc)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _samples(raw: Any, promql: str) -> list[Sample]:
    try:
        # A scalar/string answer is `[ts, "value"]`; a vector is a list of {"metric", "value"}.
        if isinstance(raw, list) and len(raw) == 2 and not isinstance(raw[0], dict):
            return [Sample({}, float(raw[1]), float(raw[0]))]
        samples = []
        for item in raw:
            if "value" not in item:
                raise PrometheusQueryError(f"query {promql!r} returned a range vector; use an instant query")
            ts, value = item["value"]
            labels = {str(k): str(v) for k, v in item.get("metric", {}).items()}
            samples.append(Sample(labels, float(value), float(ts)))
        return samples
    except (TypeError, ValueError, KeyError) as exc:
        raise PrometheusQueryError(f"query {promql!r}: unexpected result shape: {exc}") from exc
