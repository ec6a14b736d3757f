"""Alertmanager webhook payloads (version 4) for the intake and API tests."""

from __future__ import annotations

from typing import Any

STARTS = "2026-03-01T12:00:00.123456789Z"


def alert(
    execution_id: str = "exec-1",
    *,
    status: str = "firing",
    fingerprint: str = "fp-exec-1",
    starts_at: str = STARTS,
    alertname: str = "OrchestratorExecutionTimeout",
    **labels: str,
) -> dict[str, Any]:
    all_labels = {
        "alertname": alertname,
        "execution_id": execution_id,
        "dag_id": "dag-1",
        "severity": "warning",
    }
    all_labels.update(labels)
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": "stuck"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-03-01T12:30:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="OrchestratorExecutionTimeout"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "gl-watchdog",
        "groupLabels": {"alertname": "OrchestratorExecutionTimeout"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }
