"""Outgoing mail port: a local JSON-lines outbox for development and SMTP for production."""

from __future__ import annotations

import asyncio
import os
import pathlib
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from typing import Any, Protocol

import aiosmtplib
import msgspec

from kernel.errors import ConfigError, Unavailable
from kernel.registry import DriverRegistry


class MailMessage(msgspec.Struct, frozen=True):
    """One message to one recipient; ``html``, when given, is an alternative to ``text``."""

    to: str
    subject: str
    text: str
    html: str | None = None

    def __post_init__(self) -> None:
        # CAUTION: a line break in a header value lets a caller inject headers (Bcc:) into
        # the SMTP message; refuse it here so no driver can ever see such a message.
        for name, value in (("to", self.to), ("subject", self.subject)):
            if "\r" in value or "\n" in value:
                raise ValueError(f"mail {name} must not contain line breaks")
        addresses = getaddresses([self.to])
        if len(addresses) != 1 or "@" not in addresses[0][1]:
            raise ValueError(f"mail recipient {self.to!r} is not exactly one email address")


class Mailer(Protocol):
    """Sends mail; a message is accepted for delivery once ``send`` returns."""

    async def send(self, message: MailMessage) -> None:
        """Hand the message over; raise ``kernel.errors.Unavailable`` when that fails."""
        ...

    async def close(self) -> None:
        """Release resources; the mailer is not used afterwards."""
        ...


class OutboxMailer:
    """Embedded mailer: appends each message as one JSON line to a local file people can read.

    Each line has ``id``, ``sent_at`` (ISO-8601, UTC), ``from``, ``to``, ``subject``, ``text``
    and ``html``; ``read_outbox`` reads them back.
    """

    def __init__(self, path: pathlib.Path, sender: str) -> None:
        self.path = pathlib.Path(path)
        self.sender = sender
        # One writer at a time: interleaved appends from two sends would tear JSON lines.
        self._lock = asyncio.Lock()

    async def send(self, message: MailMessage) -> None:
        record: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "sent_at": datetime.now(UTC).isoformat(),
            "from": self.sender,
            "to": message.to,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
        }
        line = msgspec.json.encode(record) + b"\n"
        async with self._lock:
            try:
                # Blocking fsync must not stall the event loop.
                await asyncio.to_thread(self._append, line)
            except OSError as exc:
                raise Unavailable(f"mail outbox {self.path} is not writable: {exc}", code="mail_unavailable") from exc

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(line)
            handle.flush()
            # A message reported as sent must survive a crash, as it would on a real SMTP server.
            os.fsync(handle.fileno())

    async def close(self) -> None:
        # The file is opened per send, so there is no handle to release.
        return None


def read_outbox(path: pathlib.Path) -> list[dict[str, Any]]:
    """Messages in an outbox file, oldest first; an absent file is an empty outbox."""
    try:
        data = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        return []
    # A crash mid-append leaves a torn last line without its newline; that message was never
    # reported as sent, so skip it rather than make the whole outbox unreadable.
    *complete, _torn = data.split(b"\n")
    return [msgspec.json.decode(line) for line in complete if line.strip()]


class SmtpMailer:
    """Production mailer: one SMTP connection per message through ``aiosmtplib``.

    NOTE: connecting per message avoids stale pooled connections that servers drop after
    idling; control-plane mail (invites, resets) is far too rare for that to cost anything.
    """

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 10,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout = timeout
        # CAUTION: make_msgid() without a domain calls socket.getfqdn(), which can block on DNS.
        self._msgid_domain = parseaddr(sender)[1].rpartition("@")[2] or "livora.invalid"

    def _build(self, message: MailMessage) -> EmailMessage:
        mime = EmailMessage()
        mime["From"] = self.sender
        mime["To"] = message.to
        mime["Subject"] = message.subject
        mime["Date"] = formatdate(usegmt=True)
        mime["Message-ID"] = make_msgid(domain=self._msgid_domain)
        mime.set_content(message.text)
        if message.html is not None:
            # Turns the message into multipart/alternative with text first, html preferred.
            mime.add_alternative(message.html, subtype="html")
        return mime

    async def send(self, message: MailMessage) -> None:
        where = f"{self.host}:{self.port}"
        try:
            await aiosmtplib.send(
                self._build(message),
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                # False means never, not "if offered": a server that stops offering STARTTLS
                # must not silently downgrade a connection that was configured to be TLS.
                start_tls=self.starttls,
                timeout=self.timeout,
            )
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
            raise Unavailable(f"SMTP server {where} refused the message: {exc}", code="mail_rejected") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise Unavailable(f"SMTP server {where} is unreachable: {exc}", code="mail_unavailable") from exc

    async def close(self) -> None:
        # Connections live only for one send.
        return None


mail_drivers: DriverRegistry[Mailer] = DriverRegistry[Mailer]("mail", "LIVORA_MAIL_DRIVER")


@mail_drivers.register("outbox")
def _outbox_driver(
    *,
    outbox_path: pathlib.Path,
    sender: str,
    smtp_host: str,
    smtp_port: int,
    smtp_username: str | None,
    smtp_password: str | None,
    smtp_starttls: bool,
) -> Mailer:
    del smtp_host, smtp_port, smtp_username, smtp_password, smtp_starttls
    return OutboxMailer(outbox_path, sender)


@mail_drivers.register("smtp")
def _smtp_driver(
    *,
    outbox_path: pathlib.Path,
    sender: str,
    smtp_host: str,
    smtp_port: int,
    smtp_username: str | None,
    smtp_password: str | None,
    smtp_starttls: bool,
) -> Mailer:
    del outbox_path
    if not smtp_host:
        raise ConfigError("LIVORA_SMTP_HOST", "an SMTP host is required when LIVORA_MAIL_DRIVER=smtp")
    return SmtpMailer(
        smtp_host,
        smtp_port,
        sender,
        username=smtp_username or None,
        password=smtp_password or None,
        starttls=smtp_starttls,
    )
