"""A fake Kubernetes API (aiohttp) of the few routes the watchdog uses, driven through the real
`kubernetes` client by the fixtures `kube_api` and `kube` (tests/watchdog/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web


def make_pod(
    name: str,
    labels: dict[str, str],
    *,
    phase: str = "Running",
    ready: bool = True,
    restarts: int = 0,
    waiting_reason: str | None = None,
    terminated_reason: str | None = None,
    last_terminated_reason: str | None = None,
    limits: dict[str, str] | None = None,
    container: str = "main",
    deleting: bool = False,
) -> dict[str, Any]:
    """A pod as the API server returns it (JSON), with one container."""
    if waiting_reason:
        state: dict[str, Any] = {"waiting": {"reason": waiting_reason}}
    elif terminated_reason:
        state = {"terminated": {"reason": terminated_reason, "exitCode": 137}}
    else:
        state = {"running": {"startedAt": "2026-03-01T11:00:00Z"}}
    last: dict[str, Any] = {}
    if last_terminated_reason:
        last = {"terminated": {"reason": last_terminated_reason, "exitCode": 137}}
    metadata: dict[str, Any] = {"name": name, "namespace": "greenlang", "labels": labels}
    if deleting:
        metadata["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": container, "resources": {"limits": limits or {}}}],
        },
        "status": {
            "phase": phase,
            "startTime": "2026-03-01T11:00:00Z",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [
                {
                    "name": container,
                    "ready": ready,
                    "restartCount": restarts,
                    "image": "example/agent:1",
                    "imageID": "",
                    "state": state,
                    "lastState": last,
                }
            ],
        },
    }


def make_deployment(name: str, env: dict[str, str], container: str = "orchestrator") -> dict[str, Any]:
    """A Deployment as the API server returns it (JSON)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "greenlang", "generation": 1},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {}},
                "spec": {
                    "containers": [
                        {"name": container, "env": [{"name": k, "value": v} for k, v in env.items()]}
                    ]
                },
            },
        },
        "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1},
    }


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


class FakeKubeApi:
    """Pods, pod logs, metrics.k8s.io pod metrics and Deployments of one namespace, served over HTTP.

    Set `fail_status` to answer every request with that status, or `hang = True` to never answer
    (until the fixture releases the handlers at teardown). `requests` records (method, path, query).
    `on_delete(name)` may add a replacement pod when a pod is deleted.
    """

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, str] = {}
        self.usage: dict[str, dict[str, str]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.patches: list[tuple[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_status: int | None = None
        self.hang = False
        self.on_delete: Callable[[str], None] | None = None
        self.release = asyncio.Event()
        self.url = ""

    def add_pod(self, pod: dict[str, Any], log: str = "") -> None:
        self.pods[pod["metadata"]["name"]] = pod
        self.logs[pod["metadata"]["name"]] = log

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if self.hang:
            await self.release.wait()
        if self.fail_status is not None:
            return web.json_response(
                {
                    "kind": "Status",
                    "status": "Failure",
                    "message": "injected failure",
                    "code": self.fail_status,
                },
                status=self.fail_status,
            )
        response: web.StreamResponse = await handler(request)
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        base = "/api/v1/namespaces/{ns}/pods"
        app.router.add_get(base, self._list_pods)
        app.router.add_get(base + "/{name}", self._get_pod)
        app.router.add_delete(base + "/{name}", self._delete_pod)
        app.router.add_get(base + "/{name}/log", self._log)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", self._metrics)
        deployment = "/apis/apps/v1/namespaces/{ns}/deployments/{name}"
        app.router.add_get(deployment, self._get_deployment)
        app.router.add_patch(deployment, self._patch_deployment)
        return app

    @staticmethod
    def _not_found(what: str) -> web.Response:
        return web.json_response(
            {
                "kind": "Status",
                "status": "Failure",
                "reason": "NotFound",
                "message": f"{what} not found",
                "code": 404,
            },
            status=404,
        )

    async def _list_pods(self, request: web.Request) -> web.Response:
        selector = request.query.get("labelSelector")
        items = [p for p in self.pods.values() if _matches(p["metadata"].get("labels", {}), selector)]
        return web.json_response({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})

    async def _get_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get(request.match_info["name"])
        return web.json_response(pod) if pod else self._not_found("pod")

    async def _delete_pod(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        pod = self.pods.pop(name, None)
        if pod is None:
            return self._not_found("pod")
        if self.on_delete is not None:
            self.on_delete(name)
        return web.json_response(pod)

    async def _log(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.pods:
            return self._not_found("pod")
        lines = self.logs.get(name, "").splitlines()
        tail = int(request.query.get("tailLines", "0") or 0)
        if tail:
            lines = lines[-tail:]
        return web.Response(text="\n".join(lines) + ("\n" if lines else ""), content_type="text/plain")

    async def _metrics(self, request: web.Request) -> web.Response:
        selector = request.query.get("labelSelector")
        items = [
            {"metadata": {"name": name}, "containers": [{"name": "main", "usage": usage}]}
            for name, usage in self.usage.items()
            if name in self.pods and _matches(self.pods[name]["metadata"].get("labels", {}), selector)
        ]
        return web.json_response(
            {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "items": items}
        )

    async def _get_deployment(self, request: web.Request) -> web.Response:
        dep = self.deployments.get(request.match_info["name"])
        return web.json_response(dep) if dep else self._not_found("deployment")

    async def _patch_deployment(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        dep = self.deployments.get(name)
        if dep is None:
            return self._not_found("deployment")
        body = await request.json()
        self.patches.append((request.content_type, body))
        template = body.get("spec", {}).get("template", {})
        annotations = template.get("metadata", {}).get("annotations", {})
        dep["spec"]["template"]["metadata"].setdefault("annotations", {}).update(annotations)
        for patch_container in template.get("spec", {}).get("containers", []):
            for container in dep["spec"]["template"]["spec"]["containers"]:
                if container["name"] == patch_container["name"]:
                    env = {e["name"]: e for e in container.get("env", [])}
                    env.update({e["name"]: e for e in patch_container.get("env", [])})
                    container["env"] = list(env.values())
        dep["metadata"]["generation"] += 1
        return web.json_response(dep)
