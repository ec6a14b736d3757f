"""The `gl-orchestrator` command line: --help, `run DAG_FILE`, and clear errors (no tracebacks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

CLI = str(Path(sys.executable).with_name("gl-orchestrator"))


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


@pytest.mark.parametrize("args", [("--help",), ("serve", "--help"), ("run", "--help")])
def test_help(args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.returncode == 0 and "Usage: gl-orchestrator" in result.stdout


def test_run_prints_trace_and_progress(tmp_path: Path) -> None:
    dag = tmp_path / "dag.yaml"
    dag.write_text(
        "dag_id: local\nnodes:\n  a: {agent_id: builtin.echo}\n"
        "  b: {agent_id: builtin.flaky, depends_on: [a], params: {failures: 1},\n"
        "      retry_policy: {max_retries: 2, strategy: fixed, base_delay: 0.01}}\n"
    )
    result = cli("run", str(dag), "--input", '{"year": 2025}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)
    assert trace["status"] == "completed" and trace["topology_levels"] == [["a"], ["b"]]
    assert trace["node_traces"]["b"]["attempt_count"] == 2
    assert "b (builtin.flaky) attempt 1" in result.stderr and "retry in" in result.stderr
    assert not list(tmp_path.glob("*.db")), "run must not leave a store behind in the working directory"


def test_run_prints_the_trace_as_yaml_or_a_node_table_when_asked(tmp_path: Path) -> None:
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps({"dag_id": "y", "nodes": {"a": {"agent_id": "builtin.echo"}}}))
    result = cli("run", str(dag), "-o", "yaml")
    assert result.returncode == 0, result.stderr
    trace = yaml.safe_load(result.stdout)
    assert trace["status"] == "completed" and trace["node_traces"]["a"]["status"] == "completed"
    result = cli("run", str(dag), "-o", "table", env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(": completed") and lines[1].split() == [
        "NODE",
        "AGENT",
        "STATUS",
        "ATTEMPTS",
        "ERROR",
    ]
    assert lines[2].split()[:4] == ["a", "builtin.echo", "completed", "1"] and "\x1b[" not in result.stdout


def test_version_and_a_bad_option_exit_like_gl_watchdog() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("gl-orchestrator, version ")
    result = cli("run", "--no-such-option")
    assert result.returncode == 2 and "No such option" in result.stderr and "Traceback" not in result.stderr


def test_run_failing_dag_exits_1(tmp_path: Path) -> None:
    dag = tmp_path / "dag.json"
    dag.write_text(
        json.dumps({"dag_id": "f", "nodes": {"a": {"agent_id": "builtin.fail", "params": {"error": "no"}}}})
    )
    result = cli("run", str(dag))
    assert result.returncode == 1
    assert json.loads(result.stdout)["node_traces"]["a"]["status"] == "failed"


def test_run_timeout_cancels_a_hanging_dag(tmp_path: Path) -> None:
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps({"dag_id": "h", "nodes": {"a": {"agent_id": "builtin.hang"}}}))
    result = cli("run", str(dag), "--timeout", "0.5")
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "cancelled"


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (
            '{"dag_id": "c", "nodes": {"a": {"agent_id": "builtin.echo", "depends_on": ["a"]}}}',
            (),
            "invalid DAG",
        ),
        ("{broken", (), "invalid DAG"),
        ('{"dag_id": "ok", "nodes": {"a": {"agent_id": "builtin.echo"}}}', ("--input", "{nope"), "--input"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_2(
    tmp_path: Path, content: str, args: tuple[str, ...], message: str
) -> None:
    dag = tmp_path / "dag.json"
    dag.write_text(content)
    result = cli("run", str(dag), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_dag_file_and_bad_config_exit_2(tmp_path: Path) -> None:
    result = cli("run", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "cannot read" in result.stderr and "Traceback" not in result.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("max_parallel_nodes: -3\n")
    result = cli("serve", "--config", str(config))
    assert (
        result.returncode == 2 and "max_parallel_nodes" in result.stderr and "Traceback" not in result.stderr
    )


def test_serve_with_unreachable_database_exits_1_without_traceback(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GL_ORCHESTRATOR_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none",
        "GL_ORCHESTRATOR_DB_TIMEOUT_SECONDS": "2",
        "GL_ORCHESTRATOR_PORT": "0",
    }
    result = cli("serve", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("gl-orchestrator: ")


def test_serve_on_a_port_in_use_exits_1_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "GL_ORCHESTRATOR_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'o.db'}"}
        result = cli("serve", "--port", str(port), env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gl-orchestrator: cannot listen on 127.0.0.1:{port}"), last


def test_serve_with_a_non_json_token_list_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "GL_ORCHESTRATOR_API_TOKENS": "not-json"}
    result = cli("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "GL_ORCHESTRATOR_API_TOKENS must be a JSON list" in result.stderr


def test_run_stopped_by_sigterm_cancels_the_run_and_prints_its_trace(tmp_path: Path) -> None:
    dag = tmp_path / "hang.json"
    dag.write_text('{"dag_id": "hang", "nodes": {"a": {"agent_id": "builtin.hang"}}}')
    proc = subprocess.Popen([CLI, "run", str(dag)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # bounded by the node starting; the run itself never ends
            if "attempt 1 ..." in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "SIGTERM received: cancelling" in err and "Traceback" not in err
    assert json.loads(out)["status"] == "cancelled"
