"""Email as an escalation target: a message when an incident is escalated, is taken, and resolves.

Built by `watchdog.notify_router.notifier_from_settings` when `escalation_targets` has `email`, called
like the paging services (`watchdog.paging.Pager`): `trigger()`, `acknowledge()` and `resolve()`. The stdlib's
`smtplib` runs in a worker thread (`asyncio.to_thread`) with `timeout` on every socket operation; with
`starttls` the session is upgraded before anything else is said, and with a `username` it logs in.
Both messages carry the incident's page key (`watchdog.paging.dedup_key`) as `X-GL-Watchdog-Page`
and in the subject's thread, so a mail client groups them.

Every failure (refused, unreachable, timed out, a rejected recipient) is the result, never raised; the
password is never part of a result or a log.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import ClassVar

from pydantic import SecretStr

from watchdog.notifier import EscalationMessage, NotifyResult
from watchdog.paging import ResolvedMessage, dedup_key

PAGE_HEADER = "X-GL-Watchdog-Page"


@dataclass(frozen=True)
class EmailPager:
    """Escalations by email over SMTP."""

    host: str
    port: int
    sender: str
    recipients: list[str]
    starttls: bool = True
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    timeout: float = 10.0
    target: ClassVar[str] = "email"

    async def trigger(self, message: EscalationMessage) -> NotifyResult:
        lines = [
            f"gl-watchdog escalated incident {message.incident_id} (execution {message.execution_id}).",
            "",
            f"Reason: {message.reason}",
        ]
        if message.plan_headline:
            lines.append(f"Plan: {message.plan_headline}")
        if message.diagnosis_summary:
            lines.append(f"Diagnosis: {message.diagnosis_summary}")
        subject = f"[gl-watchdog] Escalated: incident {message.incident_id} ({message.execution_id})"
        return await self._send(subject, "\n".join(lines), message.incident_id, message.execution_id)

    async def acknowledge(self, message: ResolvedMessage) -> NotifyResult:
        subject = f"[gl-watchdog] Acknowledged: incident {message.incident_id} ({message.execution_id})"
        body = f"The page of incident {message.incident_id} is acknowledged: {message.reason}."
        return await self._send(subject, body, message.incident_id, message.execution_id)

    async def resolve(self, message: ResolvedMessage) -> NotifyResult:
        subject = f"[gl-watchdog] Resolved: incident {message.incident_id} ({message.execution_id})"
        body = f"The page of incident {message.incident_id} is resolved: {message.reason}."
        return await self._send(subject, body, message.incident_id, message.execution_id)

    async def _send(self, subject: str, body: str, incident_id: int, execution_id: str) -> NotifyResult:
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = ", ".join(self.recipients)
        email["Subject"] = subject
        email[PAGE_HEADER] = dedup_key(incident_id, execution_id)
        email.set_content(body)
        try:
            refused = await asyncio.to_thread(self._deliver, email)
        except TimeoutError:
            return NotifyResult(ok=False, sent=False, detail=f"SMTP timed out after {self.timeout:g}s")
        except smtplib.SMTPException as exc:
            return NotifyResult(ok=False, sent=False, detail=f"SMTP refused: {exc}")
        except OSError as exc:
            return NotifyResult(ok=False, sent=False, detail=f"SMTP unreachable: {exc.strerror or exc}")
        if refused:
            return NotifyResult(ok=False, sent=True, detail=f"SMTP refused recipients: {sorted(refused)}")
        return NotifyResult(ok=True, sent=True, detail=f"mailed to {len(self.recipients)} recipient(s)")

    def _deliver(self, email: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """One SMTP session (in a worker thread); the recipients the server refused."""
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username is not None and self.password is not None:
                smtp.login(self.username, self.password.get_secret_value())
            return smtp.send_message(email)
