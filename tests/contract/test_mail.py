"""Conformance suite for the mail port: every driver delivers to a real receiver."""

from __future__ import annotations

import asyncio
import email.policy
import pathlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from kernel.errors import ConfigError, Unavailable
from kernel.ports.mail import Mailer, MailMessage, OutboxMailer, SmtpMailer, mail_drivers, read_outbox

pytestmark = pytest.mark.anyio

SENDER = "Livora <no-reply@livora.test>"
USERNAME, PASSWORD = "mailer", "correct horse"
# The AUTH tests run without TLS on purpose (a local relay); aiosmtpd warns about exactly that.
plain_text_auth = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@dataclass(frozen=True)
class Received:
    """What a receiver saw, reduced to what every driver must preserve."""

    sender: str
    to: str
    subject: str
    text: str
    html: str | None


class CollectingHandler:
    """aiosmtpd handler keeping every accepted envelope; can refuse one recipient."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.refuse: str | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address == self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: CollectingHandler
    logins: list[str] = field(default_factory=list)

    def parsed(self) -> list[EmailMessage]:
        parser = BytesParser(policy=email.policy.default)
        messages: list[EmailMessage] = []
        for envelope in self.handler.envelopes:
            assert isinstance(envelope.content, bytes)
            parsed = parser.parsebytes(envelope.content)
            assert isinstance(parsed, EmailMessage)
            messages.append(parsed)
        return messages


def _free_port() -> int:
    # NOTE: aiosmtpd's Controller probes its own port after binding, so it cannot take port 0.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _start(handler: CollectingHandler, **smtp_parameters: Any) -> tuple[Controller, int]:
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **smtp_parameters)
    controller.start()
    return controller, port


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1 that accepts anything and records it."""
    handler = CollectingHandler()
    controller, port = _start(handler)
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server_with_auth() -> Iterator[SmtpServer]:
    """A real SMTP server that requires AUTH (over plain TCP, as a local relay would)."""
    handler = CollectingHandler()
    server = SmtpServer("127.0.0.1", 0, handler)

    def authenticate(
        smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: LoginPassword
    ) -> AuthResult:
        ok = auth_data.login.decode() == USERNAME and auth_data.password.decode() == PASSWORD
        if ok:
            server.logins.append(auth_data.login.decode())
        # handled=False lets aiosmtpd answer 235/535 itself.
        return AuthResult(success=ok, handled=False)

    controller, server.port = _start(handler, authenticator=authenticate, auth_required=True, auth_require_tls=False)
    try:
        yield server
    finally:
        controller.stop()


def _create(name: str, *, outbox_path: pathlib.Path, smtp_port: int = 0, **smtp: Any) -> Mailer:
    return mail_drivers.create(
        name,
        outbox_path=outbox_path,
        sender=SENDER,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_username=smtp.get("username"),
        smtp_password=smtp.get("password"),
        smtp_starttls=False,
    )


def _mime_text(body: str) -> str:
    # On the wire, text lines end in CRLF and a MIME text part always ends with a line break;
    # a mail client undoes both, and the drivers' contract is on what the reader sees.
    return body.replace("\r\n", "\n").removesuffix("\n")


@dataclass
class Harness:
    mailer: Mailer
    received: Callable[[], Awaitable[list[Received]]]


@pytest.fixture(params=["outbox", "smtp"])
def harness(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Harness:
    """A mailer built through the registry plus a way to read what its real receiver got."""
    outbox_path = tmp_path / "mail" / "outbox.jsonl"
    if request.param == "outbox":

        async def from_outbox() -> list[Received]:
            return [
                Received(row["from"], row["to"], row["subject"], row["text"], row["html"])
                for row in read_outbox(outbox_path)
            ]

        return Harness(_create("outbox", outbox_path=outbox_path), from_outbox)

    server: SmtpServer = request.getfixturevalue("smtp_server")

    async def from_smtp() -> list[Received]:
        received: list[Received] = []
        for message in server.parsed():
            plain = message.get_body(("plain",))
            html = message.get_body(("html",))
            assert plain is not None
            received.append(
                Received(
                    str(message["From"]),
                    str(message["To"]),
                    str(message["Subject"]),
                    _mime_text(plain.get_content()),
                    None if html is None else _mime_text(html.get_content()),
                )
            )
        return received

    return Harness(_create("smtp", outbox_path=outbox_path, smtp_port=server.port), from_smtp)


async def test_plain_message_arrives(harness: Harness) -> None:
    await harness.mailer.send(MailMessage(to="ada@example.com", subject="Welcome", text="Hello Ada"))
    assert await harness.received() == [Received(SENDER, "ada@example.com", "Welcome", "Hello Ada", None)]
    await harness.mailer.close()


async def test_html_alternative_arrives(harness: Harness) -> None:
    html = '<p>Click <a href="https://livora.test/accept?t=abc&amp;x=1">accept</a></p>'
    await harness.mailer.send(
        MailMessage(to="bob@example.com", subject="Invitation", text="Open https://livora.test/accept?t=abc", html=html)
    )
    [got] = await harness.received()
    assert got.text == "Open https://livora.test/accept?t=abc"
    assert got.html == html


async def test_non_ascii_subject_and_body_survive(harness: Harness) -> None:
    subject = "Grüße aus Zürich — 你好 ✓ " + "ä" * 80
    text = "Schöne Grüße,\nこんにちは 🚀\nÇa marche — ✓"
    html = "<p>Schöne Grüße — 你好 🚀</p>"
    await harness.mailer.send(MailMessage(to="zoe@example.com", subject=subject, text=text, html=html))
    [got] = await harness.received()
    assert (got.subject, got.text, got.html) == (subject, text, html)
    assert got.to == "zoe@example.com"


async def test_messages_arrive_in_order(harness: Harness) -> None:
    for n in range(3):
        await harness.mailer.send(MailMessage(to=f"u{n}@example.com", subject=f"#{n}", text=f"body {n}"))
    assert [(r.to, r.subject, r.text) for r in await harness.received()] == [
        (f"u{n}@example.com", f"#{n}", f"body {n}") for n in range(3)
    ]


async def test_concurrent_sends_all_arrive_intact(harness: Harness) -> None:
    bodies = {f"#{n}": "\n".join([f"body {n}"] * 50) for n in range(20)}
    await asyncio.gather(
        *(harness.mailer.send(MailMessage(to="ada@example.com", subject=s, text=t)) for s, t in bodies.items())
    )
    received = await harness.received()
    assert len(received) == 20
    assert {r.subject: r.text for r in received} == bodies


@pytest.mark.parametrize(
    ("to", "subject"),
    [
        ("ada@example.com", "Hi\r\nBcc: victim@example.com"),
        ("ada@example.com\nBcc: victim@example.com", "Hi"),
        ("ada@example.com, eve@example.com", "Hi"),
        ("not-an-address", "Hi"),
    ],
)
def test_message_refuses_header_injection_and_bad_recipients(to: str, subject: str) -> None:
    with pytest.raises(ValueError):
        MailMessage(to=to, subject=subject, text="x")


async def test_outbox_records_are_complete(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "deeply" / "nested" / "outbox.jsonl"
    mailer = OutboxMailer(path, SENDER)
    before = datetime.now(UTC)
    await mailer.send(MailMessage(to="ada@example.com", subject="A", text="a"))
    await mailer.send(MailMessage(to="bob@example.com", subject="B", text="b", html="<b>b</b>"))
    first, second = read_outbox(path)
    assert list(first) == ["id", "sent_at", "from", "to", "subject", "text", "html"]
    assert first["id"] != second["id"]
    sent_at = datetime.fromisoformat(first["sent_at"])
    assert sent_at.utcoffset() == timedelta(0)
    assert before <= sent_at <= datetime.now(UTC)
    assert (first["from"], first["html"], second["html"]) == (SENDER, None, "<b>b</b>")
    # One JSON object per line, readable by people with `tail -f` or `jq`.
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


async def test_read_outbox_tolerates_a_missing_file_and_a_torn_last_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "outbox.jsonl"
    assert read_outbox(path) == []
    await OutboxMailer(path, SENDER).send(MailMessage(to="ada@example.com", subject="A", text="a"))
    with path.open("ab") as handle:
        handle.write(b'{"id": "torn", "sub')
    assert [row["subject"] for row in read_outbox(path)] == ["A"]


async def test_outbox_unwritable_raises_unavailable(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the outbox folder should be")
    mailer = OutboxMailer(blocker / "outbox.jsonl", SENDER)
    with pytest.raises(Unavailable) as caught:
        await mailer.send(MailMessage(to="ada@example.com", subject="A", text="a"))
    assert caught.value.code == "mail_unavailable"


async def test_smtp_builds_a_proper_mime_message(smtp_server: SmtpServer) -> None:
    mailer = SmtpMailer(smtp_server.host, smtp_server.port, SENDER)
    await mailer.send(MailMessage(to="ada@example.com", subject="Plain", text="only text"))
    await mailer.send(MailMessage(to="bob@example.com", subject="Rich", text="text", html="<p>html</p>"))
    plain, rich = smtp_server.parsed()
    assert plain.get_content_type() == "text/plain"
    assert rich.get_content_type() == "multipart/alternative"
    # Clients show the last alternative they understand, so html must come after text.
    assert [part.get_content_type() for part in rich.iter_parts()] == ["text/plain", "text/html"]
    for message in (plain, rich):
        assert message["Message-ID"].endswith("@livora.test>")
        assert message["Date"]
    envelopes = smtp_server.handler.envelopes
    assert [e.mail_from for e in envelopes] == ["no-reply@livora.test"] * 2
    assert [e.rcpt_tos for e in envelopes] == [["ada@example.com"], ["bob@example.com"]]


async def test_smtp_encodes_non_ascii_for_a_server_without_smtputf8() -> None:
    handler = CollectingHandler()
    controller, port = _start(handler, enable_SMTPUTF8=False)
    try:
        mailer = SmtpMailer("127.0.0.1", port, SENDER)
        subject = "Grüße — 你好 ✓"
        await mailer.send(
            MailMessage(to="Zoë Müller <zoe@example.com>", subject=subject, text="Schöne Grüße", html="<p>你好</p>")
        )
    finally:
        controller.stop()
    [envelope] = handler.envelopes
    assert isinstance(envelope.content, bytes)
    headers = envelope.content.split(b"\r\n\r\n", 1)[0]
    # Without SMTPUTF8, headers must be 7-bit: RFC 2047 encoded words, not raw UTF-8.
    assert headers.isascii()
    message = BytesParser(policy=email.policy.default).parsebytes(envelope.content)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == subject
    assert message["To"].addresses[0].display_name == "Zoë Müller"
    assert envelope.rcpt_tos == ["zoe@example.com"]
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    assert (_mime_text(plain.get_content()), _mime_text(html.get_content())) == ("Schöne Grüße", "<p>你好</p>")


@plain_text_auth
async def test_smtp_logs_in_with_credentials(smtp_server_with_auth: SmtpServer) -> None:
    server = smtp_server_with_auth
    mailer = SmtpMailer(server.host, server.port, SENDER, username=USERNAME, password=PASSWORD)
    await mailer.send(MailMessage(to="ada@example.com", subject="Authed", text="x"))
    assert server.logins == [USERNAME]
    assert [e.rcpt_tos for e in server.handler.envelopes] == [["ada@example.com"]]


@plain_text_auth
async def test_smtp_wrong_password_raises_unavailable(smtp_server_with_auth: SmtpServer) -> None:
    server = smtp_server_with_auth
    mailer = SmtpMailer(server.host, server.port, SENDER, username=USERNAME, password="wrong")
    with pytest.raises(Unavailable) as caught:
        await mailer.send(MailMessage(to="ada@example.com", subject="x", text="x"))
    assert caught.value.code == "mail_rejected"
    assert "wrong" not in caught.value.detail
    assert server.handler.envelopes == []


async def test_smtp_refused_recipient_raises_unavailable(smtp_server: SmtpServer) -> None:
    smtp_server.handler.refuse = "ghost@example.com"
    mailer = SmtpMailer(smtp_server.host, smtp_server.port, SENDER)
    with pytest.raises(Unavailable) as caught:
        await mailer.send(MailMessage(to="ghost@example.com", subject="x", text="x"))
    assert caught.value.code == "mail_rejected"
    assert "550" in caught.value.detail
    assert smtp_server.handler.envelopes == []


async def test_smtp_server_down_raises_unavailable(closed_port: int) -> None:
    mailer = SmtpMailer("127.0.0.1", closed_port, SENDER, timeout=2)
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await mailer.send(MailMessage(to="ada@example.com", subject="x", text="x"))
    assert time.monotonic() - started < 2
    assert caught.value.status_code == 503
    assert caught.value.code == "mail_unavailable"
    assert f"127.0.0.1:{closed_port}" in caught.value.detail


def test_unknown_driver_names_the_setting_and_the_choices(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _create("sendgrid", outbox_path=tmp_path / "outbox.jsonl")
    assert caught.value.variable == "LIVORA_MAIL_DRIVER"
    assert "'sendgrid'" in str(caught.value)
    assert "outbox, smtp" in str(caught.value)
    assert mail_drivers.names == ["outbox", "smtp"]


def test_smtp_driver_requires_a_host(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as caught:
        mail_drivers.create(
            "smtp",
            outbox_path=tmp_path / "outbox.jsonl",
            sender=SENDER,
            smtp_host="",
            smtp_port=25,
            smtp_username=None,
            smtp_password=None,
            smtp_starttls=False,
        )
    assert caught.value.variable == "LIVORA_SMTP_HOST"
