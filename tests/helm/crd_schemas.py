"""JSON schemas of the Prometheus Operator resources the chart renders (not in kubernetes-validate).

kubernetes-validate ships schemas of the built-in Kubernetes kinds only, so PrometheusRule, ServiceMonitor
and AlertmanagerConfig are checked against these: a hand-written subset of the upstream CRDs
(monitoring.coreos.com, prometheus-operator v0.7x), covering every field the chart uses, with the
upstream field names, types, enums and required lists, and `additionalProperties: false` so a misspelt
or snake_case field (`webhook_configs`, `send_resolved`) fails instead of being silently dropped by the
API server's pruning.
"""

from __future__ import annotations

from typing import Any

_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
    "additionalProperties": False,
}
_SECRET_KEY_SELECTOR = {
    "type": "object",
    "required": ["key"],
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}, "optional": {"type": "boolean"}},
    "additionalProperties": False,
}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    {
        "type": "object",
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": _DURATION,
                        "limit": {"type": "integer"},
                        "partial_response_strategy": {"type": "string"},
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["expr"],
                                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                "properties": {
                                    "alert": {"type": "string"},
                                    "record": {"type": "string"},
                                    "expr": {"type": ["string", "integer"]},
                                    "for": _DURATION,
                                    "keep_firing_for": _DURATION,
                                    "labels": _LABELS,
                                    "annotations": _LABELS,
                                },
                                "additionalProperties": False,
                            },
                        },
                    },
                    "additionalProperties": False,
                },
            }
        },
        "additionalProperties": False,
    },
)

_ENDPOINT = {
    "type": "object",
    "properties": {
        "port": {"type": "string"},
        "targetPort": {"type": ["string", "integer"]},
        "path": {"type": "string"},
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
        "relabelings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "sourceLabels": {"type": "array", "items": {"type": "string"}},
                    "targetLabel": {"type": "string"},
                    "regex": {"type": "string"},
                    "replacement": {"type": "string"},
                    "action": {"type": "string"},
                    "separator": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "metricRelabelings": {"type": "array"},
    },
    "additionalProperties": False,
}

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "namespaceSelector": {
                "type": "object",
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
            "selector": _LABEL_SELECTOR,
            "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
        },
        "additionalProperties": False,
    },
)

_MATCHER = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "value": {"type": "string"},
        "matchType": {"enum": ["!=", "=", "=~", "!~"]},
    },
    "additionalProperties": False,
}
_ROUTE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "receiver": {"type": "string"},
        "matchers": {"type": "array", "items": _MATCHER},
        "groupBy": {"type": "array", "items": {"type": "string"}},
        "groupWait": _DURATION,
        "groupInterval": _DURATION,
        "repeatInterval": _DURATION,
        "continue": {"type": "boolean"},
        "routes": {"type": "array"},
        "muteTimeIntervals": {"type": "array", "items": {"type": "string"}},
        "activeTimeIntervals": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}
_WEBHOOK = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "pattern": "^https?://"},
        "urlSecret": _SECRET_KEY_SELECTOR,
        "sendResolved": {"type": "boolean"},
        "maxAlerts": {"type": "integer", "minimum": 0},
        "httpConfig": {
            "type": "object",
            "properties": {
                "authorization": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "credentials": _SECRET_KEY_SELECTOR},
                    "additionalProperties": False,
                },
                "followRedirects": {"type": "boolean"},
                "tlsConfig": {"type": "object"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

ALERTMANAGER_CONFIG = _resource(
    "monitoring.coreos.com/v1alpha1",
    "AlertmanagerConfig",
    {
        "type": "object",
        "properties": {
            "route": _ROUTE,
            "receivers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "webhookConfigs": {"type": "array", "items": _WEBHOOK},
                    },
                    "additionalProperties": False,
                },
            },
            "inhibitRules": {"type": "array"},
            "muteTimeIntervals": {"type": "array"},
        },
        "additionalProperties": False,
    },
)

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"): ALERTMANAGER_CONFIG,
}
