"""The chart's configuration contract with the services: every rendered setting is one the service
knows, with a value it accepts; limits past a setting's bound are refused by the values schema; paths
the services write are writable; files and secrets the settings name are mounted and rendered.

Split from test_chart.py (which lints, renders and validates the chart); same fixtures (conftest.py).
"""

from __future__ import annotations

import base64
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from pydantic import TypeAdapter

from orchestrator_core.settings import OrchestratorSettings
from tests.helm.chart import (
    CHART_DIR,
    EXTERNAL,
    NAMESPACE,
    ORCHESTRATOR,
    REPO,
    WATCHDOG,
    Manifest,
    Render,
    container_env,
    find,
    one,
)
from watchdog.policy import parse_policy
from watchdog.settings import WatchdogSettings

# -- configuration contract with the services ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prefix", "model"),
    [(ORCHESTRATOR, "GL_ORCHESTRATOR_", OrchestratorSettings), (WATCHDOG, "GL_WATCHDOG_", WatchdogSettings)],
)
def test_every_env_var_is_a_setting_with_a_valid_value(
    manifests: list[Manifest], name: str, prefix: str, model: type[Any]
) -> None:
    env = container_env(one(manifests, "Deployment", name))
    assert env, "no environment rendered"
    for env_name, entry in env.items():
        assert env_name.startswith(prefix), env_name
        field = env_name.removeprefix(prefix).lower()
        assert field in model.model_fields, f"{env_name}: {model.__name__} has no field {field!r}"
        if "value" in entry and not field.endswith("_file"):
            raw = entry["value"]
            annotation = model.model_fields[field].annotation
            # pydantic-settings decodes list- and dict-typed env values as JSON
            value = json.loads(raw) if raw.startswith(("[", "{")) else raw
            TypeAdapter(annotation).validate_python(value, strict=False)


def _field_bound(model: type[Any], field: str, kind: str) -> Any:
    """The `ge`/`le` bound pydantic enforces on `field`."""
    (bound,) = [getattr(m, kind) for m in model.model_fields[field].metadata if hasattr(m, kind)]
    return bound


@pytest.mark.parametrize(
    ("value", "field"),
    [("maxParallelNodes", "max_parallel_nodes"), ("maxConcurrentExecutions", "max_concurrent_executions")],
)
def test_schema_refuses_limits_the_orchestrator_would_refuse(render: Render, value: str, field: str) -> None:
    """A limit past the setting's bound would render fine and crash-loop the pod: the schema stops it."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
    prop = schema["properties"]["orchestrator"]["properties"][value]
    assert prop["minimum"] == _field_bound(OrchestratorSettings, field, "ge")
    assert prop["maximum"] == _field_bound(OrchestratorSettings, field, "le")
    with pytest.raises(helm.HelmValuesError, match=value):
        render({"orchestrator": {value: prop["maximum"] + 1}})


def test_settings_that_must_be_set_in_a_cluster(manifests: list[Manifest]) -> None:
    orchestrator = container_env(one(manifests, "Deployment", ORCHESTRATOR))
    watchdog = container_env(one(manifests, "Deployment", WATCHDOG))
    assert orchestrator["GL_ORCHESTRATOR_HOST"]["value"] == "0.0.0.0"
    assert orchestrator["GL_ORCHESTRATOR_POD_NAME"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    assert watchdog["GL_WATCHDOG_HOST"]["value"] == "0.0.0.0"
    assert watchdog["GL_WATCHDOG_KUBERNETES_ENABLED"]["value"] == "true"
    assert watchdog["GL_WATCHDOG_NAMESPACE"]["value"] == NAMESPACE
    assert watchdog["GL_WATCHDOG_ORCHESTRATOR_URL"]["value"] == f"http://{ORCHESTRATOR}.{NAMESPACE}.svc:8080"
    assert watchdog["GL_WATCHDOG_POLICY_FILE"]["value"] == "/etc/gl-watchdog/policy/policy.yaml"
    assert watchdog["GL_WATCHDOG_PUBLIC_URL"]["value"].startswith("http")


def _writable_mounts(deployment: Manifest) -> set[str]:
    """Mount paths of emptyDir volumes that are not mounted read-only (all else is read-only root)."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {
        m["mountPath"]
        for m in pod["containers"][0]["volumeMounts"]
        if "emptyDir" in volumes[m["name"]] and not m.get("readOnly", False)
    }


@pytest.mark.parametrize(("name", "prefix"), [(ORCHESTRATOR, "GL_ORCHESTRATOR_"), (WATCHDOG, "GL_WATCHDOG_")])
def test_paths_the_services_write_are_on_writable_volumes(
    manifests: list[Manifest], name: str, prefix: str
) -> None:
    """With a read-only root filesystem, state_dir and a SQLite file must sit on an emptyDir."""
    deployment = one(manifests, "Deployment", name)
    writable = _writable_mounts(deployment)
    env = container_env(deployment)
    paths = [Path(env[f"{prefix}STATE_DIR"]["value"])]
    database = env[f"{prefix}DATABASE_URL"]
    if "value" in database:
        paths.append(Path(database["value"].removeprefix("sqlite+aiosqlite:///")))
    for path in paths:
        assert path.is_absolute(), f"{path} depends on the image's working directory"
        assert any(path.is_relative_to(mount) for mount in writable), f"{path} is not on {writable}"


def test_renamed_orchestrator_is_the_deployment_the_throttle_playbook_patches(render: Render) -> None:
    manifests = render({"orchestrator": {"name": "dag-engine"}})
    text = one(manifests, "ConfigMap", "gl-watchdog-policy")["data"]["policy.yaml"]
    policy = parse_policy(yaml.safe_load(text), source="chart")
    assert policy.playbook("throttle_concurrency").params["deployment"] == "dag-engine"
    # the rest of the shipped throttle params stay
    assert policy.playbook("throttle_concurrency").params["max_parallel_nodes"] == 5
    role = one(manifests, "Role", WATCHDOG)
    (deployments,) = [r for r in role["rules"] if r["resources"] == ["deployments"]]
    assert deployments["resourceNames"] == ["dag-engine"]


def test_the_documented_auto_values_merge_into_the_shipped_policy(render: Render) -> None:
    """docs/operations.md's my-values.yaml example: only the keys it sets change."""
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```yaml\n\s*# my-values.yaml\n(.*?)```", text, re.DOTALL)
    values = yaml.safe_load(textwrap.dedent(block))
    assert values["watchdog"]["mode"] == "auto"
    manifests = render(values)
    assert container_env(one(manifests, "Deployment", WATCHDOG))["GL_WATCHDOG_MODE"]["value"] == "auto"
    rendered = yaml.safe_load(one(manifests, "ConfigMap", "gl-watchdog-policy")["data"]["policy.yaml"])
    shipped = yaml.safe_load((REPO / "watchdog" / "policy.yaml").read_text(encoding="utf-8"))
    assert rendered["playbooks"]["restart_agent"] == {
        **shipped["playbooks"]["restart_agent"],
        "requires_approval": False,
    }
    assert rendered["limits"] == {**shipped["limits"], "agent_restarts_per_agent_per_hour": 2}
    assert rendered["rules"] == shipped["rules"]
    assert parse_policy(rendered, source="docs example").playbook("cancel").requires_approval is True


def test_a_deployment_named_in_the_policy_is_kept(render: Render) -> None:
    values = {
        "orchestrator": {"name": "dag-engine"},
        "watchdog": {"policy": {"playbooks": {"throttle_concurrency": {"params": {"deployment": "other"}}}}},
    }
    text = one(render(values), "ConfigMap", "gl-watchdog-policy")["data"]["policy.yaml"]
    policy = parse_policy(yaml.safe_load(text), source="chart")
    assert policy.playbook("throttle_concurrency").params["deployment"] == "other"


def test_policy_change_restarts_the_watchdog(render: Render) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(render(values), "Deployment", WATCHDOG)
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/policy"])

    default = checksum({})
    assert checksum({"watchdog": {"policy": {"limits": {"remediations_per_hour": 5}}}}) != default
    assert checksum({"orchestrator": {"name": "dag-engine"}}) != default


def test_watchdog_namespace_is_the_release_namespace(render: Render) -> None:
    manifests = render(namespace="ops")
    assert container_env(one(manifests, "Deployment", WATCHDOG))["GL_WATCHDOG_NAMESPACE"]["value"] == "ops"
    assert one(manifests, "Role", WATCHDOG)["metadata"]["namespace"] == "ops"


def _mounted_files(deployment: Manifest) -> dict[str, tuple[str, str]]:
    """Mounted file path -> (source kind 'secret'|'configMap', key) for items-projected volumes."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    files: dict[str, tuple[str, str]] = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        volume = volumes[mount["name"]]
        for kind in ("secret", "configMap"):
            if kind in volume:
                for item in volume[kind].get("items", []):
                    files[f"{mount['mountPath']}/{item['path']}"] = (kind, item["key"])
                if "items" not in volume[kind]:
                    files[f"{mount['mountPath']}/*"] = (kind, "*")
    return files


@pytest.mark.parametrize(
    ("deployment", "env_name", "key"),
    [
        (ORCHESTRATOR, "GL_ORCHESTRATOR_API_TOKEN_FILE", "orchestrator-api-token"),
        (WATCHDOG, "GL_WATCHDOG_API_TOKEN_FILE", "watchdog-api-token"),
        (WATCHDOG, "GL_WATCHDOG_ORCHESTRATOR_TOKEN_FILE", "orchestrator-api-token"),
        (WATCHDOG, "GL_WATCHDOG_APPROVAL_SIGNING_KEY_FILE", "approval-signing-key"),
    ],
)
def test_secret_file_settings_point_at_mounted_secret_keys(
    manifests: list[Manifest], deployment: str, env_name: str, key: str
) -> None:
    rendered = one(manifests, "Deployment", deployment)
    path = container_env(rendered)[env_name]["value"]
    assert _mounted_files(rendered).get(path) == ("secret", key)


def test_policy_file_setting_points_at_the_policy_configmap(manifests: list[Manifest]) -> None:
    rendered = one(manifests, "Deployment", WATCHDOG)
    path = Path(container_env(rendered)["GL_WATCHDOG_POLICY_FILE"]["value"])
    pod = rendered["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = one(manifests, "ConfigMap", volume["configMap"]["name"])
    assert path.name in configmap["data"]


def test_default_policy_is_the_watchdogs_shipped_policy_and_valid(default_manifests: list[Manifest]) -> None:
    rendered = yaml.safe_load(
        one(default_manifests, "ConfigMap", "gl-watchdog-policy")["data"]["policy.yaml"]
    )
    shipped = yaml.safe_load((REPO / "watchdog" / "policy.yaml").read_text(encoding="utf-8"))
    assert rendered == shipped, (
        "helm values watchdog.policy no longer mirrors watchdog/policy.yaml: copy it over"
    )
    policy = parse_policy(rendered, source="chart")
    assert policy.rules


def test_every_secret_reference_resolves_to_a_rendered_key(render: Render) -> None:
    paging = {
        "escalationTargets": ["chat", "pagerduty", "opsgenie", "email"],
        "pagerduty": {"routingKey": "R0UT1NG"},
        "opsgenie": {"apiKey": "g3n1e"},
        "email": {"smtpHost": "smtp.example.org", "to": ["oncall@example.org"], "password": "pw"},
    }
    manifests = render(
        {
            **EXTERNAL,
            "watchdog": {
                "notifier": {"enabled": True, "url": "https://hooks.example/x"},
                "paging": paging,
                "slack": {"enabled": True, "botToken": "xoxb-1", "signingSecret": "s1gn", "channel": "C0"},
                "grafana": {"apiUrl": "http://grafana:3000", "apiToken": "glsa_1", "dashboardUid": "gl-wd"},
            },
        }
    )
    secret = one(manifests, "Secret", "gl-watchdog-secrets")
    keys = set(secret["data"])
    referenced: set[str] = set()
    for deployment in find(manifests, "Deployment"):
        for entry in container_env(deployment).values():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "gl-watchdog-secrets"
                referenced.add(ref["key"])
        for kind, key in _mounted_files(deployment).values():
            if kind == "secret":
                referenced.add(key)
    amc = one(manifests, "AlertmanagerConfig", WATCHDOG)
    credentials = amc["spec"]["receivers"][0]["webhookConfigs"][0]["httpConfig"]["authorization"][
        "credentials"
    ]
    assert credentials["name"] == "gl-watchdog-secrets"
    referenced.add(credentials["key"])
    assert (
        referenced
        == keys
        == {
            "orchestrator-api-token",
            "watchdog-api-token",
            "approval-signing-key",
            "orchestrator-database-url",
            "watchdog-database-url",
            "redis-url",
            "notifier-url",
            "pagerduty-routing-key",
            "opsgenie-api-key",
            "smtp-password",
            "slack-bot-token",
            "slack-signing-secret",
            "grafana-api-token",
        }
    )
    env = container_env(one(manifests, "Deployment", WATCHDOG))
    assert json.loads(env["GL_WATCHDOG_ESCALATION_TARGETS"]["value"]) == [
        "chat",
        "pagerduty",
        "opsgenie",
        "email",
    ]
    settings = {
        name.removeprefix("GL_WATCHDOG_").lower(): e["value"] for name, e in env.items() if "value" in e
    }
    assert json.loads(settings["email_to"]) == ["oncall@example.org"] and settings["smtp_port"] == "587"
    assert base64.b64decode(secret["data"]["pagerduty-routing-key"]) == b"R0UT1NG"
    assert settings["grafana_api_url"] == "http://grafana:3000"
    assert settings["grafana_annotation_dashboard_uid"] == "gl-wd"
    assert set(settings) <= set(WatchdogSettings.model_fields)


def test_generated_tokens_are_random_and_given_values_are_kept(render: Render) -> None:
    first = one(render(), "Secret", "gl-watchdog-secrets")["data"]
    second = one(render(), "Secret", "gl-watchdog-secrets")["data"]
    for key in ("orchestrator-api-token", "watchdog-api-token", "approval-signing-key"):
        assert len(base64.b64decode(first[key])) >= 32
        assert first[key] != second[key]
    given = one(render({"secrets": {"watchdogApiToken": "s3cret-token"}}), "Secret", "gl-watchdog-secrets")
    assert base64.b64decode(given["data"]["watchdog-api-token"]) == b"s3cret-token"


def test_existing_secret_is_used_and_none_is_rendered(prod_manifests: list[Manifest]) -> None:
    assert not find(prod_manifests, "Secret")
    names = set()
    for deployment in find(prod_manifests, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        names |= {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container_env(deployment).values()
            if "secretKeyRef" in e.get("valueFrom", {})
        }
    assert names == {"gl-watchdog-prod"}
    orchestrator_env = container_env(one(prod_manifests, "Deployment", ORCHESTRATOR))
    assert (
        orchestrator_env["GL_ORCHESTRATOR_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"]
        == "orchestrator-database-url"
    )
    assert orchestrator_env["GL_ORCHESTRATOR_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"


def test_embedded_mode_uses_sqlite_on_the_data_volume(default_manifests: list[Manifest]) -> None:
    for name, prefix in ((ORCHESTRATOR, "GL_ORCHESTRATOR_"), (WATCHDOG, "GL_WATCHDOG_")):
        deployment = one(default_manifests, "Deployment", name)
        url = container_env(deployment)[f"{prefix}DATABASE_URL"]["value"]
        assert url.startswith("sqlite+aiosqlite:////var/lib/gl-watchdog/")
        mounts = {
            m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        }
        assert "/var/lib/gl-watchdog" in mounts
        assert f"{prefix}REDIS_URL" not in container_env(deployment)
