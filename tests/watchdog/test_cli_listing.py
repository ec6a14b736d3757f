"""`gl-watchdog incidents list` against the real watchdog app served on loopback (SQLite): the
APPROVAL column comes from the listing itself (each item's `pending_approval`), so every incident
awaiting approval shows its prompt, however many there are, in one request per page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.watchdog.conftest import make_plan
from tests.watchdog.served import TOKEN, ServedWatchdog, served_watchdog
from watchdog.cli import main
from watchdog.client import ApiClient

AWAITING = 60  # more than the 50 prompts the CLI once looked up, one call each


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServedWatchdog]:
    with served_watchdog(f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}") as running:
        yield running


def _awaiting_approval(server: ServedWatchdog, count: int) -> dict[str, str]:
    """`count` incidents awaiting approval, each with its pending prompt: {execution id: prompt id}."""
    wd = server.wd
    assert wd is not None

    async def seed() -> dict[str, str]:
        prompts = {}
        async with wd.store.transaction() as tx:
            for n in range(count):
                incident = await tx.insert_incident(
                    execution_id=f"e-wait-{n}",
                    dag_id="d",
                    source="alert",
                    detection_source="api",
                    status="awaiting_approval",
                )
                assert incident is not None
                prompt = await wd.approvals.create_in(
                    tx, incident_id=incident.id, plan=make_plan(incident.execution_id), summary="s"
                )
                prompts[incident.execution_id] = prompt.id
        return prompts

    return server.run(seed())


def test_every_incident_awaiting_approval_shows_its_prompt_from_one_listing_request(
    server: ServedWatchdog, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = _awaiting_approval(server, AWAITING)
    asked: list[str] = []
    get = ApiClient.get

    def counted(client: ApiClient, path: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(path)
        return get(client, path, *args, **kwargs)

    monkeypatch.setattr(ApiClient, "get", counted)
    monkeypatch.setenv("COLUMNS", "200")  # each prompt id on one line whatever the terminal
    server_args = ["--server", server.base_url, "--token", TOKEN]
    argv = [*server_args, "incidents", "list", "--status", "awaiting_approval", "--limit", "100"]

    assert main([*argv, "-o", "json"]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert asked == ["/incidents"]
    assert {item["execution_id"]: item["pending_approval"] for item in items} == prompts
    assert main([*argv, "-o", "table"]) == 0
    table = capsys.readouterr().out
    assert all(prompt in table for prompt in prompts.values())
    assert asked == ["/incidents", "/incidents"]
