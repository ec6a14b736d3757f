"""Escalations by email: a real SMTP session (stdlib smtplib in a thread) against a small SMTP sink on
loopback that speaks the protocol's few commands and keeps what it receives."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator
from email.message import Message

import pytest

from tests.conftest import free_port
from watchdog.mail import PAGE_HEADER, EmailPager
from watchdog.notifier import EscalationMessage
from watchdog.notify_router import notifier_from_settings
from watchdog.paging import ResolvedMessage, dedup_key
from watchdog.settings import load_settings
from watchdog_sdk.errors import ConfigError

ESCALATION = EscalationMessage(
    incident_id=7,
    execution_id="exec-1",
    reason="the approval expired unanswered",
    plan_headline="run restart_agent(agent_id=calc) [risk medium]",
)


class SmtpSink:
    """An SMTP server of EHLO, MAIL, RCPT, DATA and QUIT; refuses the recipients in `refuse`."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse: set[str] = set()
        self.port = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        data: list[bytes] | None = None
        while line := await reader.readline():
            if data is not None:
                if line == b".\r\n":
                    self.messages.append(email.message_from_bytes(b"".join(data)))
                    data = None
                    writer.write(b"250 queued\r\n")
                else:
                    data.append(line[1:] if line.startswith(b"..") else line)
                continue
            command = line[:4].upper()
            if command in (b"EHLO", b"HELO", b"MAIL"):
                writer.write(b"250 ok\r\n")
            elif command == b"RCPT":
                refused = any(address.encode() in line for address in self.refuse)
                writer.write(b"550 no such user\r\n" if refused else b"250 ok\r\n")
            elif command == b"DATA":
                data = []
                writer.write(b"354 go ahead\r\n")
            elif command == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"502 not implemented\r\n")
            await writer.drain()
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    smtp = SmtpSink()
    server = await asyncio.start_server(smtp.session, "127.0.0.1", 0)
    smtp.port = server.sockets[0].getsockname()[1]
    async with server:
        yield smtp
    server.close()
    await server.wait_closed()


def _pager(port: int, recipients: list[str]) -> EmailPager:
    return EmailPager("127.0.0.1", port, "gl-watchdog@example.org", recipients, starttls=False, timeout=5)


async def test_an_escalation_and_its_resolve_are_mailed_with_one_page_key(sink: SmtpSink) -> None:
    pager = _pager(sink.port, ["oncall@example.org", "lead@example.org"])
    triggered = await pager.trigger(ESCALATION)
    resolved = await pager.resolve(ResolvedMessage(7, "exec-1", "the alert resolved"))
    assert triggered.ok and triggered.detail == "mailed to 2 recipient(s)"
    assert resolved.ok
    first, second = sink.messages
    assert first["Subject"] == "[gl-watchdog] Escalated: incident 7 (exec-1)"
    assert first["To"] == "oncall@example.org, lead@example.org"
    assert first["From"] == "gl-watchdog@example.org"
    body = first.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"Reason: the approval expired unanswered" in body and b"Plan: run restart_agent" in body
    assert second["Subject"] == "[gl-watchdog] Resolved: incident 7 (exec-1)"
    assert first[PAGE_HEADER] == second[PAGE_HEADER] == dedup_key(7, "exec-1")


async def test_a_refused_recipient_fails_the_delivery(sink: SmtpSink) -> None:
    sink.refuse = {"gone@example.org"}
    result = await _pager(sink.port, ["oncall@example.org", "gone@example.org"]).trigger(ESCALATION)
    assert not result.ok and result.sent
    assert "gone@example.org" in result.detail
    every = await _pager(sink.port, ["gone@example.org"]).trigger(ESCALATION)
    assert not every.ok and every.detail.startswith("SMTP refused")


async def test_an_unreachable_server_is_reported() -> None:
    result = await _pager(free_port(), ["oncall@example.org"]).trigger(ESCALATION)
    assert not result.ok and result.detail.startswith("SMTP unreachable")


def test_email_needs_a_server_and_recipients() -> None:
    with pytest.raises(ConfigError, match="escalation_targets has email but smtp_host or email_to"):
        load_settings(escalation_targets=["email"], smtp_host="smtp.example.org")
    settings = load_settings(
        escalation_targets=["chat", "email"],
        smtp_host="smtp.example.org",
        email_to=["oncall@example.org"],
        smtp_username="watchdog",
        smtp_password="hunter2hunter2",
    )
    routed = notifier_from_settings(settings)
    [pager] = routed.pagers
    assert pager.target == "email" and routed.escalate_to_chat
    assert "hunter2hunter2" not in repr(settings) and "hunter2hunter2" not in repr(pager)
