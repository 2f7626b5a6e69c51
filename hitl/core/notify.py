"""Sending notices: the notifiers (log, webhook, email) and the sender that delivers ``hitl_notifications``.

The reminder sweep (:mod:`hitl.core.reminders`) writes notification rows; :func:`send_due` — the Celery task
``hitl.send_notifications``, run by beat every ``HITL_NOTIFY_INTERVAL`` s on the ``HITL_NOTIFY_QUEUE`` queue —
sends them. Each row is claimed by compare-and-set (``attempts`` n → n+1, ``next_attempt_at`` pushed past the
time a send may take plus an exponential backoff), so two senders never send one row at once, and a sender
that dies mid-send leaves the row to be tried again. A failure is recorded in ``last_error`` and retried
after the backoff (counted from the failure); after ``HITL_NOTIFY_MAX_ATTEMPTS`` attempts the row is given up
(``detail["gave_up"]``, shown as state ``failed``). With several notifiers, the ones that delivered are
recorded in the row's ``detail["delivered_by"]`` and a retry goes to the others only.

Nothing on the deadline path calls a notifier: the deadline sweep only resolves approvals, and a worker on
the notify queue alone (``hitl dev`` runs one) keeps a slow notifier off the worker that runs steps and sweeps.
"""

from __future__ import annotations

import logging
import smtplib
import time
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any, Protocol

import httpx
from sqlalchemy import select, update

from approvals.errors import NotifierFailed
from approvals.models import Approval, Notification, utcnow
from approvals.schemas import Notice
from approvals.status import NotificationKind
from approvals.transitions import rowcount
from hitl.infra.db import session_scope
from hitl.infra.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: Candidate rows read per claim round; each is then claimed by its own compare-and-set.
CLAIM_BATCH = 20


class Notifier(Protocol):
    """Delivers one notice somewhere. ``send`` returns when it was delivered and raises when it was not."""

    name: str

    def send(self, notice: Notice) -> None:
        """Deliver ``notice``.

        Raises:
            NotifierFailed: it was not delivered (raised from the transport's error); it is retried later.
        """


class LogNotifier:
    """Writes each notice to the log of the process that sends it (logger ``hitl.core.notify``, level INFO)."""

    name = "log"

    def send(self, notice: Notice) -> None:
        """Log ``notice`` as one line."""
        log.info("notice %s #%d for approval %s: %s", notice.kind.value, notice.seq, notice.approval_id, notice.text)


class WebhookNotifier:
    """POSTs each notice as JSON (:class:`~approvals.schemas.Notice`) to a URL; any 2xx answer is delivery."""

    name = "webhook"

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout

    def send(self, notice: Notice) -> None:
        """POST ``notice`` to the URL within ``timeout`` seconds (connect, each read and write).

        Raises:
            NotifierFailed: the request failed, timed out, or the answer was not 2xx.
        """
        from hitl.infra.redact import mask_url, scrub

        try:
            res = httpx.post(self.url, json=notice.model_dump(mode="json"), timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise NotifierFailed(f"webhook: {type(exc).__name__}: {scrub(str(exc))}") from exc
        if not res.is_success:
            raise NotifierFailed(f"webhook: HTTP {res.status_code} from {mask_url(self.url)}")


def email_address(user: str, domain: str | None) -> str | None:
    """The address of ``user``: the name itself if it holds "@", ``user@domain`` otherwise (None: no domain)."""
    if "@" in user:
        return user
    return f"{user}@{domain}" if domain else None


class SmtpNotifier:
    """Emails each notice to its recipients through an SMTP server (one message, every recipient in To)."""

    name = "email"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def message(self, notice: Notice) -> EmailMessage | None:
        """The email of ``notice``, or None when no recipient has an address (see :func:`email_address`)."""
        addresses = [a for a in (email_address(u, self.settings.email_domain) for u in notice.recipients) if a]
        if not addresses:
            return None
        msg = EmailMessage()
        msg["From"] = self.settings.smtp_sender
        msg["To"] = ", ".join(addresses)
        msg["Subject"] = f"[hitl] {notice.text}"
        msg.set_content(
            f"{notice.text}\n\n"
            f"approval: {notice.approval_id}\nworkflow: {notice.workflow or '-'}\nkey: {notice.key}\n"
            f"assignees: {', '.join(notice.assignees) or 'anyone'}\ndeadline: {notice.deadline.isoformat()}\n\n"
            f"Decide with `hitl approve {notice.approval_id} --by NAME` or in the inbox at"
            f" {self.settings.public_url}/inbox\n"
        )
        return msg

    def send(self, notice: Notice) -> None:
        """Send the email of ``notice`` (nothing when no recipient has an address).

        Raises:
            NotifierFailed: the SMTP server could not be reached or refused the message.
        """
        msg = self.message(notice)
        if msg is None:
            log.warning("notice for approval %s: no email address for %s", notice.approval_id, notice.recipients)
            return
        s = self.settings
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.notify_timeout) as smtp:
                if s.smtp_starttls:
                    smtp.starttls()
                if s.smtp_username:
                    password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                    smtp.login(s.smtp_username, password)
                smtp.send_message(msg)
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifierFailed(f"email: {type(exc).__name__}: {exc}") from exc


def notifiers(settings: Settings | None = None) -> list[Notifier]:
    """The notifiers named by ``HITL_NOTIFIERS``, in order."""
    settings = settings or get_settings()
    found: list[Notifier] = []
    for name in settings.notifiers:
        if name == "log":
            found.append(LogNotifier())
        elif name == "webhook":
            assert settings.webhook_url is not None  # the settings require it
            found.append(WebhookNotifier(settings.webhook_url, settings.notify_timeout))
        else:
            found.append(SmtpNotifier(settings))
    return found


def backoff(attempt: int, settings: Settings) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
    return float(min(settings.notify_backoff * 2 ** (attempt - 1), settings.notify_backoff_max))


def _text(kind: NotificationKind, seq: int, key: str, workflow: str | None, deadline: datetime) -> str:
    what = f"{workflow}/{key}" if workflow else key
    if kind is NotificationKind.ESCALATION:
        return f"escalated to you: approval {what} is still pending (deadline {deadline:%Y-%m-%d %H:%M} UTC)"
    return f"reminder {seq}: approval {what} is waiting for your decision (deadline {deadline:%Y-%m-%d %H:%M} UTC)"


def notice_of(row: Notification, approval: Approval | None) -> Notice:
    """The notice to send for notification ``row`` (``approval``: its approval, for the subject)."""
    d = row.detail or {}
    deadline = datetime.fromisoformat(d["deadline"])
    kind = NotificationKind(row.kind)
    return Notice(
        kind=kind,
        seq=row.seq,
        approval_id=row.approval_id,
        run_id=d.get("run_id"),
        workflow=d.get("workflow"),
        key=d.get("key", ""),
        recipients=[str(r) for r in row.recipients],
        assignees=[str(a) for a in d.get("assignees", [])],
        deadline=deadline,
        subject=approval.subject if approval is not None else None,
        text=_text(kind, row.seq, d.get("key", ""), d.get("workflow"), deadline),
    )


def _claim(settings: Settings, lease: float) -> tuple[Notification, Approval | None] | None:
    """Claim one due unsent notification by compare-and-set; None when none is due."""
    now = utcnow()
    with session_scope() as s:
        candidates = list(
            s.scalars(
                select(Notification)
                .where(
                    Notification.sent_at.is_(None),
                    Notification.next_attempt_at <= now,
                    Notification.attempts < settings.notify_max_attempts,
                )
                .order_by(Notification.next_attempt_at, Notification.id)
                .limit(CLAIM_BATCH)
            )
        )
        for row in candidates:
            attempt = row.attempts + 1
            retry_at = now + timedelta(seconds=lease + backoff(attempt, settings))
            won = rowcount(
                s.execute(
                    update(Notification)
                    .where(
                        Notification.id == row.id,
                        Notification.sent_at.is_(None),
                        Notification.attempts == row.attempts,
                    )
                    .values(attempts=attempt, next_attempt_at=retry_at)
                )
            )
            if won:
                row.attempts = attempt
                return row, s.get(Approval, row.approval_id)
    return None


def _deliver(row: Notification, approval: Approval | None, chosen: list[Notifier]) -> tuple[list[str], str | None]:
    """Send ``row`` with each notifier that has not delivered it yet; return (who delivered, last error)."""
    delivered = list((row.detail or {}).get("delivered_by", []))
    notice = notice_of(row, approval)
    error = None
    for notifier in chosen:
        if notifier.name in delivered:
            continue
        try:
            notifier.send(notice)
        except NotifierFailed as exc:
            error = exc.message
            continue
        delivered.append(notifier.name)
    return delivered, error


def _record(row: Notification, delivered: list[str], error: str | None, settings: Settings) -> None:
    values: dict[str, Any] = {"detail": {**(row.detail or {}), "delivered_by": delivered}}
    if error is None:
        values.update(sent_at=utcnow(), last_error=None)
    else:
        gave_up = row.attempts >= settings.notify_max_attempts
        values["last_error"] = f"gave up after {row.attempts} attempts: {error}" if gave_up else error
        values["detail"]["gave_up"] = gave_up
        # The backoff counts from the failure, not from the claim (whose lease covered the send itself).
        values["next_attempt_at"] = utcnow() + timedelta(seconds=backoff(row.attempts, settings))
        log.warning(
            "sending notice %s #%d for approval %s failed (attempt %d%s): %s",
            row.kind,
            row.seq,
            row.approval_id,
            row.attempts,
            ", giving up" if gave_up else "",
            error,
        )
    with session_scope() as s:
        # Only the attempt that claimed the row records its outcome.
        s.execute(
            update(Notification)
            .where(Notification.id == row.id, Notification.attempts == row.attempts, Notification.sent_at.is_(None))
            .values(**values)
        )


def send_due(limit: int = 100, chosen: list[Notifier] | None = None) -> int:
    """Send due notifications one at a time, up to ``limit``; return how many were delivered.

    A pass stops claiming once it has run for ``HITL_NOTIFY_TIMEOUT`` s, so one slow notifier holds a worker
    process for about that long per pass; what is left goes in the next pass.
    """
    settings = get_settings()
    chosen = notifiers(settings) if chosen is None else chosen
    lease = settings.notify_timeout * max(1, len(chosen))
    started = time.monotonic()
    sent = 0
    for _ in range(limit):
        if time.monotonic() - started > settings.notify_timeout:
            break
        claimed = _claim(settings, lease)
        if claimed is None:
            break
        row, approval = claimed
        delivered, error = _deliver(row, approval, chosen)
        _record(row, delivered, error, settings)
        sent += error is None
    return sent
