"""An incident's links: what an alert says of itself is kept only when usable (http(s) URLs, bounded
text), the settings fill the rest, and the incoming-webhook Slack message and the JSON document carry
them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from tests.watchdog.messages import PROMPT
from watchdog.links import LinkSettings, alert_links, links
from watchdog.notifier import slack_prompt
from watchdog.records import Incident

SETTINGS = LinkSettings(
    orchestrator_url="https://orchestrator.example.com",
    grafana_url="https://grafana.example.com/d/runs?orgId=1",
    runbook_url="https://runbooks.example.com/default",
    trace_url_template="https://jaeger.example.com/search?tags=%7B%22execution_id%22%3A%22{execution_id}%22%7D",
)
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def incident(said: dict[str, str] | None) -> Incident:
    return Incident(
        id=3,
        execution_id="exec/1",
        dag_id="dag-1",
        status="open",
        source="alert",
        detection_source="prometheus",
        opened_at=AT,
        updated_at=AT,
        closed_at=None,
        diagnosis=None,
        plan=None,
        verification=None,
        summary=None,
        alert_links=said,
    )


def test_only_web_urls_and_bounded_text_of_an_alert_are_kept() -> None:
    said = alert_links(
        {"runbook_url": "javascript:alert(1)", "summary": "  stuck\nrun  ", "description": "x" * 5000},
        "ftp://prometheus/graph",
    )
    assert said == {"summary": "stuck run", "description": "x" * 999 + "…"}
    assert alert_links({"runbook_url": "https://rb.example.com/a"}, "http://prom:9090/graph?g0.expr=up") == {
        "runbook_url": "https://rb.example.com/a",
        "generator_url": "http://prom:9090/graph?g0.expr=up",
    }


def test_the_alerts_runbook_wins_and_the_settings_fill_the_rest() -> None:
    found = links(
        incident({"runbook_url": "https://rb.example.com/a", "generator_url": "http://prom/g"}),
        SETTINGS,
        now=AT,
    )
    assert found.urls() == {
        "runbook": "https://rb.example.com/a",
        "grafana": "https://grafana.example.com/d/runs?orgId=1&var-execution_id=exec%2F1&from=1772365500000"
        "&to=1772366400000&var-dag_id=dag-1",
        "trace": "https://jaeger.example.com/search?tags=%7B%22execution_id%22%3A%22exec%2F1%22%7D",
        "provenance": "https://orchestrator.example.com/api/v1/orchestrator/executions/exec%2F1/provenance",
        "alert": "http://prom/g",
    }
    plain = links(
        incident(None), LinkSettings("http://o", None, "https://runbooks.example.com/default"), now=AT
    )
    assert plain.urls() == {
        "runbook": "https://runbooks.example.com/default",
        "trace": "http://o/api/v1/orchestrator/executions/exec%2F1/trace",
        "provenance": "http://o/api/v1/orchestrator/executions/exec%2F1/provenance",
    }


def test_the_incoming_webhook_message_keeps_link_buttons_and_shows_the_links() -> None:
    message = slack_prompt(replace(PROMPT, links={"runbook": "https://rb.example.com/a?x=1&y=2"}))
    [context] = [block for block in message["blocks"] if block["type"] == "context"]
    assert context["elements"][0]["text"] == "<https://rb.example.com/a?x=1&amp;y=2|Runbook>"
    buttons = message["blocks"][-1]["elements"]
    assert [b["url"] for b in buttons] == [PROMPT.approve_url, PROMPT.deny_url]
    assert all("action_id" not in b for b in buttons)
