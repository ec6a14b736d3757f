"""The chart's optional Ingress for the console and the proxy identity settings: off by default; on,
an Ingress with TLS and the auth proxy's annotations that validates strictly and routes to the
watchdog's Service; the proxy settings render into environment the watchdog's settings accept; the
values schema refuses proxy auth without trusted addresses and a role that does not exist.

Same fixtures as test_chart.py (conftest.py): rendered offline through Helm's Go SDK.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.helm.chart import KUBE_VERSIONS, WATCHDOG, Manifest, Render, container_env, find, one
from watchdog.identity import Role
from watchdog.settings import load_settings

HOST = "watchdog.example.com"
INGRESS = {
    "enabled": True,
    "host": HOST,
    "className": "nginx",
    "annotations": {"nginx.ingress.kubernetes.io/auth-url": "https://$host/oauth2/auth"},
    "tls": {"secretName": "watchdog-tls"},
}
IDENTITY = {
    "proxyAuth": True,
    "trustedProxies": ["10.244.0.0/16"],
    "roleMap": {"sre": "approver", "boss@example.com": "admin"},
    "defaultRole": "viewer",
}


def test_by_default_there_is_no_ingress_and_no_proxy_identity(default_manifests: list[Manifest]) -> None:
    assert find(default_manifests, "Ingress") == []
    env = container_env(one(default_manifests, "Deployment", WATCHDOG))
    assert not any(name.startswith("GL_WATCHDOG_PROXY") for name in env)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_ingress_routes_the_host_to_the_watchdog_with_tls(render: Render, kube_version: str) -> None:
    manifests = render({"ingress": INGRESS})
    ingress = one(manifests, "Ingress", WATCHDOG)
    kubernetes_validate.validate(ingress, kube_version, strict=True)
    spec = ingress["spec"]
    assert spec["tls"] == [{"hosts": [HOST], "secretName": "watchdog-tls"}]
    assert spec["ingressClassName"] == "nginx"
    backend = spec["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one(manifests, "Service", WATCHDOG)
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert any(port["name"] == "http" for port in service["spec"]["ports"])
    assert ingress["metadata"]["annotations"] == INGRESS["annotations"]


def test_an_ingress_without_a_host_is_refused(render: Render) -> None:
    with pytest.raises(Exception, match=r"ingress\.enabled needs ingress\.host"):
        render({"ingress": {"enabled": True}})


def test_the_proxy_identity_values_become_settings_the_watchdog_accepts(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = container_env(one(render({"watchdog": {"identity": IDENTITY}}), "Deployment", WATCHDOG))
    for name in (
        "GL_WATCHDOG_PROXY_AUTH_ENABLED",
        "GL_WATCHDOG_TRUSTED_PROXIES",
        "GL_WATCHDOG_PROXY_ROLE_MAP",
        "GL_WATCHDOG_PROXY_DEFAULT_ROLE",
        "GL_WATCHDOG_PROXY_HEADERS",
    ):
        monkeypatch.setenv(name, env[name]["value"])
    settings = load_settings()
    assert settings.proxy_auth_enabled and settings.trusted_proxies == ["10.244.0.0/16"]
    assert settings.proxy_role_map == {"sre": Role.APPROVER, "boss@example.com": Role.ADMIN}
    assert settings.proxy_headers == "x-auth-request"


@pytest.mark.parametrize(
    "identity",
    [
        {"proxyAuth": True, "trustedProxies": []},
        {"roleMap": {"sre": "root"}},
        {"trustedProxies": ["everywhere"]},
        {"headers": "x-remote-user"},
    ],
)
def test_the_schema_refuses_proxy_auth_it_cannot_trust(render: Render, identity: dict[str, object]) -> None:
    with pytest.raises(Exception, match="identity"):
        render({"watchdog": {"identity": identity}})


def test_notes_say_how_to_make_named_tokens_and_where_the_console_is(render_raw: Any) -> None:
    default = render_raw()["gl-watchdog/templates/NOTES.txt"]
    assert "/api/v1/tokens" in default and "The console and approval pages" not in default
    notes = render_raw({"ingress": INGRESS, "watchdog": {"identity": IDENTITY}})[
        "gl-watchdog/templates/NOTES.txt"
    ]
    assert f"https://{HOST}/" in notes and "identity from the auth proxy's headers" in notes
