"""The Helm chart lints, renders and validates, and what it renders is what the services and operators need.

Rendering and linting go through Helm's own Go SDK (helm_python); built-in kinds are validated with
kubernetes-validate in strict mode for Kubernetes 1.29 and 1.33, the Prometheus Operator kinds against
tests/helm/crd_schemas.py.
"""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import (
    CHART_DIR,
    EXTERNAL,
    KUBE_VERSIONS,
    NAMESPACE,
    ORCHESTRATOR,
    REPO,
    WATCHDOG,
    Manifest,
    Render,
    container_env,
    find,
    one,
    production_values,
)
from tests.helm.crd_schemas import CRD_SCHEMAS
from watchdog.policy import parse_policy

# -- lint and validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", ["default", "production"])
def test_chart_lints_strict_without_warnings(values_name: str, kube_version: str) -> None:
    values = production_values() if values_name == "production" else None
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_lint_reports_values_that_break_the_schema() -> None:
    report = helm.lint(CHART_DIR, {"watchdog": {"mode": "yolo"}}, strict=True)
    assert any("/watchdog/mode" in error for error in report["errors"]), report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_builtin_manifest_validates_strictly(manifests: list[Manifest], kube_version: str) -> None:
    checked = 0
    for manifest in manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kubernetes_validate.validate(manifest, kube_version, strict=True)
        checked += 1
    assert checked >= 14


def test_every_prometheus_operator_manifest_matches_its_crd_schema(manifests: list[Manifest]) -> None:
    crds = [m for m in manifests if m["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {m["kind"] for m in crds} == {"PrometheusRule", "ServiceMonitor", "AlertmanagerConfig"}
    for manifest in crds:
        jsonschema.validate(manifest, CRD_SCHEMAS[(manifest["apiVersion"], manifest["kind"])])


def test_crd_schema_rejects_a_snake_case_field() -> None:
    """The CRD schemas are strict: a field the operator does not know fails."""
    bad: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "AlertmanagerConfig",
        "metadata": {"name": "x", "namespace": "y"},
        "spec": {"receivers": [{"name": "r", "webhook_configs": [{"url": "http://w/api/v1/alerts"}]}]},
    }
    with pytest.raises(jsonschema.ValidationError, match="webhook_configs"):
        jsonschema.validate(bad, CRD_SCHEMAS[(bad["apiVersion"], bad["kind"])])


def test_renders_every_object_the_deployment_needs(default_manifests: list[Manifest]) -> None:
    kinds = sorted(f"{m['kind']}/{m['metadata']['name']}" for m in default_manifests)
    assert kinds == sorted(
        [
            f"Deployment/{ORCHESTRATOR}",
            f"Deployment/{WATCHDOG}",
            f"Service/{ORCHESTRATOR}",
            f"Service/{WATCHDOG}",
            f"ServiceAccount/{ORCHESTRATOR}",
            f"ServiceAccount/{WATCHDOG}",
            f"Role/{WATCHDOG}",
            f"RoleBinding/{WATCHDOG}",
            "Secret/gl-watchdog-secrets",
            "ConfigMap/gl-watchdog-policy",
            f"PodDisruptionBudget/{ORCHESTRATOR}",
            f"PodDisruptionBudget/{WATCHDOG}",
            f"NetworkPolicy/{ORCHESTRATOR}",
            f"NetworkPolicy/{WATCHDOG}",
            f"PrometheusRule/{ORCHESTRATOR}",
            f"ServiceMonitor/{ORCHESTRATOR}",
            f"ServiceMonitor/{WATCHDOG}",
            f"AlertmanagerConfig/{WATCHDOG}",
            "ConfigMap/gl-dashboard-dag-execution-overview",
            "ConfigMap/gl-dashboard-node-performance",
            "ConfigMap/gl-dashboard-gl-watchdog",
        ]
    )
    assert all(m["metadata"]["namespace"] == NAMESPACE for m in default_manifests)


def test_monitoring_objects_can_be_turned_off_for_clusters_without_the_operator(render: Render) -> None:
    off = {"enabled": False}
    manifests = render(
        {
            "monitoring": {
                "prometheusRule": off,
                "serviceMonitor": off,
                "alertmanagerConfig": off,
                "grafanaDashboards": off,
            }
        }
    )
    assert not [m for m in manifests if m["apiVersion"].startswith("monitoring.coreos.com/")]
    assert not [m for m in manifests if m["metadata"]["name"].startswith("gl-dashboard-")]


# -- pods ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "port"), [(ORCHESTRATOR, 8080), (WATCHDOG, 8081)])
def test_pods_run_non_root_read_only_without_capabilities(
    manifests: list[Manifest], name: str, port: int
) -> None:
    pod = one(manifests, "Deployment", name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["command"] == [{8080: "gl-orchestrator", 8081: "gl-watchdog"}[port], "serve"]
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_only_the_watchdog_gets_a_kubernetes_token(manifests: list[Manifest]) -> None:
    orchestrator = one(manifests, "Deployment", ORCHESTRATOR)["spec"]["template"]["spec"]
    watchdog = one(manifests, "Deployment", WATCHDOG)["spec"]["template"]["spec"]
    assert orchestrator["serviceAccountName"] == ORCHESTRATOR
    assert orchestrator["automountServiceAccountToken"] is False
    assert one(manifests, "ServiceAccount", ORCHESTRATOR)["automountServiceAccountToken"] is False
    assert watchdog["serviceAccountName"] == WATCHDOG
    assert watchdog["automountServiceAccountToken"] is True


# -- RBAC ------------------------------------------------------------------------------------------


def test_role_is_least_privilege_and_namespaced(manifests: list[Manifest]) -> None:
    assert not find(manifests, "ClusterRole") and not find(manifests, "ClusterRoleBinding")
    role = one(manifests, "Role", WATCHDOG)
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"wildcard in {field}: {rule}"
    granted = {
        (group, resource, verb, tuple(rule.get("resourceNames", [])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("", "pods", "get", ()),
        ("", "pods", "list", ()),
        ("", "pods", "delete", ()),
        ("", "pods/log", "get", ()),
        ("apps", "deployments", "get", (ORCHESTRATOR,)),
        ("apps", "deployments", "patch", (ORCHESTRATOR,)),
        ("metrics.k8s.io", "pods", "get", ()),
        ("metrics.k8s.io", "pods", "list", ()),
    }
    # The one Deployment the watchdog may patch is the orchestrator this chart renders.
    one(manifests, "Deployment", ORCHESTRATOR)
    binding = one(manifests, "RoleBinding", WATCHDOG)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": WATCHDOG}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": WATCHDOG, "namespace": NAMESPACE}]


def test_watchdog_keeps_its_token_when_you_bring_your_own_role(render: Render) -> None:
    manifests = render({"rbac": {"create": False}})
    assert not find(manifests, "Role") and not find(manifests, "RoleBinding")
    watchdog = one(manifests, "Deployment", WATCHDOG)["spec"]["template"]["spec"]
    assert watchdog["automountServiceAccountToken"] is True
    assert one(manifests, "ServiceAccount", WATCHDOG)["automountServiceAccountToken"] is True
    env = container_env(one(manifests, "Deployment", WATCHDOG))
    assert env["GL_WATCHDOG_KUBERNETES_ENABLED"]["value"] == "true"


def test_no_deployment_access_when_the_throttle_keeps_to_live_limits(render: Render) -> None:
    policy = yaml.safe_load((REPO / "watchdog" / "policy.yaml").read_text(encoding="utf-8"))
    policy["playbooks"]["throttle_concurrency"]["params"]["deployment_env"] = False
    manifests = render({"watchdog": {"policy": policy}})
    role = one(manifests, "Role", WATCHDOG)
    assert [r for r in role["rules"] if "deployments" in r["resources"]] == []
    assert {tuple(r["resources"]) for r in role["rules"]} == {("pods",), ("pods/log",)}
    text = one(manifests, "ConfigMap", "gl-watchdog-policy")["data"]["policy.yaml"]
    params = parse_policy(yaml.safe_load(text), source="chart").playbook("throttle_concurrency").params
    assert params["deployment_env"] is False


def test_role_follows_a_renamed_orchestrator(render: Render) -> None:
    manifests = render({"orchestrator": {"name": "dag-engine"}})
    role = one(manifests, "Role", WATCHDOG)
    (deployments,) = [r for r in role["rules"] if r["resources"] == ["deployments"]]
    assert deployments["resourceNames"] == ["dag-engine"]
    env = container_env(one(manifests, "Deployment", WATCHDOG))
    assert env["GL_WATCHDOG_ORCHESTRATOR_URL"]["value"] == f"http://dag-engine.{NAMESPACE}.svc:8080"


def test_no_rbac_and_no_token_when_kubernetes_is_disabled(render: Render) -> None:
    manifests = render({"watchdog": {"kubernetes": {"enabled": False}}})
    assert not find(manifests, "Role") and not find(manifests, "RoleBinding")
    watchdog = one(manifests, "Deployment", WATCHDOG)
    assert watchdog["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert container_env(watchdog)["GL_WATCHDOG_KUBERNETES_ENABLED"]["value"] == "false"


# -- values that cannot work are refused with a message --------------------------------------------


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"watchdog": {"mode": "yolo"}}, helm.HelmValuesError, "/watchdog/mode"),
        ({"orchestrator": {"replicaCount": 2}}, helm.HelmRenderError, "needs a shared store"),
        (
            {"database": EXTERNAL["database"], "watchdog": {"replicaCount": 2}},
            helm.HelmRenderError,
            "needs Redis",
        ),
        ({"database": {"external": True}}, helm.HelmRenderError, "needs database.orchestratorUrl"),
        ({"redis": {"enabled": True}}, helm.HelmRenderError, "redis.enabled=true needs redis.url"),
        ({"watchdog": {"notifier": {"enabled": True}}}, helm.HelmRenderError, "needs watchdog.notifier.url"),
        (
            {"watchdog": {"paging": {"escalationTargets": ["pagerduty"]}}},
            helm.HelmRenderError,
            "set watchdog.paging.pagerduty.routingKey",
        ),
        (
            {"watchdog": {"paging": {"escalationTargets": ["opsgenie"]}}},
            helm.HelmRenderError,
            "set watchdog.paging.opsgenie.apiKey",
        ),
        ({"watchdog": {"paging": {"escalationTargets": ["sms"]}}}, helm.HelmValuesError, "escalationTargets"),
        (
            {"watchdog": {"paging": {"escalationTargets": ["email"]}}},
            helm.HelmRenderError,
            "set watchdog.paging.email.smtpHost and watchdog.paging.email.to",
        ),
        (
            {"watchdog": {"grafana": {"apiUrl": "http://grafana:3000"}}},
            helm.HelmRenderError,
            "set watchdog.grafana.apiToken",
        ),
        ({"watchdog": {"grafana": {"apiUrl": "grafana:3000"}}}, helm.HelmValuesError, "apiUrl"),
        ({"watchdog": {"logFormat": "xml"}}, helm.HelmValuesError, "logFormat"),
        ({"orchestrator": {"name": "Not_A_Name"}}, helm.HelmValuesError, "/orchestrator/name"),
        ({"watchdog": {"mdoe": "auto"}}, helm.HelmValuesError, "mdoe"),
        ({"secrets": {"existingSecert": "x"}}, helm.HelmValuesError, "existingSecert"),
        (
            {"monitoring": {"serviceMonitor": {"enabled": True, "interval": "soon"}}},
            helm.HelmValuesError,
            "interval",
        ),
    ],
)
def test_unusable_values_are_refused_with_a_clear_message(
    render: Render, values: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        render(values)


# -- wiring between objects ------------------------------------------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", [ORCHESTRATOR, WATCHDOG])
def test_services_pdbs_netpols_and_servicemonitors_select_their_pods(
    manifests: list[Manifest], name: str
) -> None:
    deployment = one(manifests, "Deployment", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = one(manifests, "Service", name)
    assert _selects(service["spec"]["selector"], pod_labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert _selects(
        one(manifests, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"], pod_labels
    )
    assert _selects(one(manifests, "NetworkPolicy", name)["spec"]["podSelector"]["matchLabels"], pod_labels)
    monitor = one(manifests, "ServiceMonitor", name)
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # The `job` label the rules and dashboards use comes from this Service label.
    expected_job = {ORCHESTRATOR: "orchestrator-service", WATCHDOG: "gl-watchdog"}[name]
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == expected_job


def test_network_policy_lets_the_watchdog_and_monitoring_in(prod_manifests: list[Manifest]) -> None:
    watchdog_pod = one(prod_manifests, "Deployment", WATCHDOG)["spec"]["template"]["metadata"]["labels"]
    orchestrator_from = one(prod_manifests, "NetworkPolicy", ORCHESTRATOR)["spec"]["ingress"][0]["from"]
    assert any(
        _selects(p.get("podSelector", {}).get("matchLabels", {}), watchdog_pod) for p in orchestrator_from
    )
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert {"namespaceSelector": monitoring} in orchestrator_from
    watchdog_from = one(prod_manifests, "NetworkPolicy", WATCHDOG)["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": monitoring} in watchdog_from
    # production values name the allowed clients explicitly: no allow-all peer
    assert {"podSelector": {}} not in orchestrator_from + watchdog_from


def test_alertmanager_config_routes_the_timeout_alert_to_the_watchdog(manifests: list[Manifest]) -> None:
    spec = one(manifests, "AlertmanagerConfig", WATCHDOG)["spec"]
    assert spec["route"]["matchers"] == [
        {"name": "alertname", "value": "OrchestratorExecutionTimeout", "matchType": "="}
    ]
    (receiver,) = spec["receivers"]
    assert spec["route"]["receiver"] == receiver["name"]
    (webhook,) = receiver["webhookConfigs"]
    service = one(manifests, "Service", WATCHDOG)
    assert (
        webhook["url"]
        == f"http://{WATCHDOG}.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}/api/v1/alerts"
    )
    assert webhook["sendResolved"] is True
    assert webhook["httpConfig"]["authorization"]["type"] == "Bearer"
    assert webhook["httpConfig"]["authorization"]["credentials"]["key"] == "watchdog-api-token"


def test_monitoring_labels_reach_prometheus_operator_objects(prod_manifests: list[Manifest]) -> None:
    for manifest in prod_manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            assert manifest["metadata"]["labels"]["release"] == "kube-prometheus-stack", manifest["kind"]


# -- dashboards and NOTES --------------------------------------------------------------------------


def test_dashboards_are_sidecar_configmaps_with_the_runbooks_uids(manifests: list[Manifest]) -> None:
    dashboards = [
        m for m in find(manifests, "ConfigMap") if m["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    parsed = {}
    for configmap in dashboards:
        ((filename, text),) = configmap["data"].items()
        assert filename.endswith(".json")
        parsed[json.loads(text)["uid"]] = json.loads(text)
    assert set(parsed) == {"dag-execution-overview", "node-performance", "gl-watchdog"}
    assert parsed["dag-execution-overview"]["title"] == "DAG Execution Overview"
    assert parsed["node-performance"]["title"] == "Node Performance"
    for dashboard in parsed.values():
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert panels and all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)
        assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_notes_tell_the_operator_what_to_do_next(render_raw: Any) -> None:
    notes = render_raw()["gl-watchdog/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{ORCHESTRATOR}" in notes
    assert "get secret gl-watchdog-secrets" in notes
    assert "embedded SQLite" in notes and "watchdog.mode=recommend" in notes
    prod_notes = render_raw(production_values())["gl-watchdog/templates/NOTES.txt"]
    assert "embedded SQLite" not in prod_notes and "watchdog.mode=recommend" not in prod_notes
    assert "get secret gl-watchdog-prod" in prod_notes
    assert "https://runbooks.greenlang.io/orchestrator/dag-execution-stuck" in prod_notes


def test_notes_in_auto_mode_give_the_kill_switch(render_raw: Any) -> None:
    notes = render_raw({"watchdog": {"mode": "auto"}})["gl-watchdog/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} set env deployment/{WATCHDOG} GL_WATCHDOG_MODE=observe" in notes
    assert "GL_WATCHDOG_MODE=observe" not in render_raw()["gl-watchdog/templates/NOTES.txt"]


def test_notes_say_where_the_grafana_sidecar_must_look(render_raw: Any) -> None:
    notes = render_raw(namespace="ops")["gl-watchdog/templates/NOTES.txt"]
    assert "the sidecar must search namespace ops" in notes


def test_the_watchdog_reads_the_logs_of_a_renamed_orchestrator(render: Render) -> None:
    env = container_env(one(render({"orchestrator": {"name": "dag-engine"}}), "Deployment", WATCHDOG))
    assert env["GL_WATCHDOG_ORCHESTRATOR_POD_SELECTOR"]["value"] == "app=dag-engine"
    default = container_env(one(render({}), "Deployment", WATCHDOG))
    assert default["GL_WATCHDOG_ORCHESTRATOR_POD_SELECTOR"]["value"] == "app=orchestrator-service"
