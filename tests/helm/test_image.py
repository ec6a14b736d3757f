"""The Dockerfile builds the image the chart expects (no container engine here, so this reads it).

Checked against the rendered Deployments and pyproject.toml: the final stage runs as the chart's numeric
non-root UID, its working directory (where relative paths such as the default state dir land) is a
writable emptyDir in both pods, the packages that pyproject.toml installs are all copied into the build,
and the commands the chart runs are console scripts the install puts on PATH.
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

from tests.helm.chart import REPO, Manifest, one

DOCKERFILE = REPO / "Dockerfile"


def _final_stage() -> list[tuple[str, str]]:
    """(instruction, arguments) of the last stage, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages[-1]


def _last(stage: list[tuple[str, str]], instruction: str) -> str:
    values = [args for name, args in stage if name == instruction]
    assert values, f"the final stage has no {instruction}"
    return values[-1]


def test_image_runs_as_the_charts_numeric_non_root_user(default_manifests: list[Manifest]) -> None:
    user = _last(_final_stage(), "USER")
    assert user.isdigit() and int(user) != 0, f"USER {user}: runAsNonRoot needs a numeric non-root UID"
    for name in ("orchestrator-service", "gl-watchdog"):
        pod = one(default_manifests, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(user)


def test_working_directory_is_writable_in_both_pods(default_manifests: list[Manifest]) -> None:
    workdir = Path(_last(_final_stage(), "WORKDIR"))
    for name in ("orchestrator-service", "gl-watchdog"):
        pod = one(default_manifests, "Deployment", name)["spec"]["template"]["spec"]
        assert "workingDir" not in pod["containers"][0], "the chart relies on the image's WORKDIR"
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = [
            m["mountPath"]
            for m in pod["containers"][0]["volumeMounts"]
            if "emptyDir" in volumes[m["name"]] and not m.get("readOnly", False)
        ]
        assert str(workdir) in writable, f"{name}: WORKDIR {workdir} is on the read-only root filesystem"
    # and writable by the image's user without the chart (plain `docker run`)
    runs = " ".join(args for name, args in _final_stage() if name == "RUN")
    assert f"-o {_last(_final_stage(), 'USER')}" in runs and str(workdir) in runs


def test_build_copies_every_package_and_installs_the_charts_commands(
    default_manifests: list[Manifest],
) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    text = DOCKERFILE.read_text(encoding="utf-8")
    copied = {
        shlex.split(line)[1]
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from" not in line and len(shlex.split(line)) == 3
    }
    assert packages <= copied, f"not copied into the build: {packages - copied}"
    assert pyproject["project"]["readme"] in text, "pyproject.toml's readme must be copied for pip install"
    scripts = set(pyproject["project"]["scripts"])
    for name in ("orchestrator-service", "gl-watchdog"):
        command = one(default_manifests, "Deployment", name)["spec"]["template"]["spec"]["containers"][0][
            "command"
        ]
        assert command[0] in scripts, f"{name} runs {command[0]}, which pyproject.toml does not install"
    cmd = _last(_final_stage(), "CMD")
    assert cmd.startswith('["gl-watchdog", "serve"')
