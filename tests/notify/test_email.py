"""The email channel against a loopback SMTP server (aiosmtpd), driven by aiosmtplib: what
arrives (headers, both parts, no injected headers), and what each SMTP refusal makes the
dispatcher do (retry, fail the delivery, pause the channel), the password kept out of it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest

from monitor.errors import ChannelError, DeliveryError
from monitor.models import Alert, ChannelSpec, Delivery, EmailSettings, Match, SmtpSettings
from monitor.notify.email import EmailNotifier
from tests.smtpserver import SmtpServer

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
UTC_TZ = ZoneInfo("UTC")
USER, PASSWORD = "monitor", "correct-horse-battery"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def smtp_auth() -> Iterator[SmtpServer]:
    with SmtpServer(user=USER, password=PASSWORD) as server:
        yield server


def spec(
    port: int,
    to: tuple[str, ...] = ("desk@example.com",),
    password: str | None = None,
    prefix: str = "[news]",
) -> ChannelSpec:
    settings = EmailSettings(
        smtp=SmtpSettings(
            "127.0.0.1",
            port,
            security="none",
            user=USER if password else None,
            password=password,
            timeout=timedelta(seconds=3),
        ),
        sender="Monitor <monitor@alerts.example>",
        to=to,
        subject_prefix=prefix,
    )
    return ChannelSpec("mail", "email", {"email": settings}, targets=to)


def alert(title: str, key: str = "1") -> Alert:
    match = Match("talks", ("talks",), ("title",), ("mail",), snippet=title)
    link = f"https://news.example/{key}"
    return Alert("wire", f"id:{key}", title, link, "", T0, T0, (match,))


def delivery(
    title: str = "Talks resume", target: str = "desk@example.com", id: int = 1
) -> Delivery:
    return Delivery(id=id, channel="mail", alert=alert(title, str(id)), target=target)


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    return text.get_content(), html.get_content()


async def test_an_alert_arrives_with_headers_and_both_parts(smtp: SmtpServer) -> None:
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        await notifier.send(delivery())
    [received] = smtp.wait_for(1)
    assert received.mail_from == "monitor@alerts.example"
    assert received.rcpt_tos == ("desk@example.com",)
    message = received.message
    assert message["From"] == "Monitor <monitor@alerts.example>"
    assert message["To"] == "desk@example.com"
    assert message["Subject"] == "[news] Talks resume"
    assert message["Date"].datetime.tzinfo is not None
    assert message["Message-ID"].startswith("<monitor.alert.")
    assert message["Message-ID"].endswith("@alerts.example>")
    assert message.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"]  # the richest last, as clients expect
    assert all(part.get_content_charset() == "utf-8" for part in message.iter_parts())
    text, html = parts(message)
    assert "Talks resume" in text
    assert "https://news.example/1" in text
    assert '<a href="https://news.example/1">Talks resume</a>' in html


async def test_a_hostile_title_injects_no_header(smtp: SmtpServer) -> None:
    title = "<script>x</script> a & b\r\nBcc: evil@example.com\nX-Evil: 1\u2028=?UTF-8?Q?=0A?="
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        await notifier.send(delivery(title))
    [received] = smtp.wait_for(1)
    message = received.message
    assert message["Bcc"] is None
    assert message["X-Evil"] is None
    assert message["Message-ID"] is not None  # the header block was not cut short
    assert message.get_content_type() == "multipart/alternative"
    assert len(message.get_all("Subject") or []) == 1
    subject = str(message["Subject"])
    assert "\n" not in subject
    assert "\r" not in subject
    assert subject.startswith("[news] <script>x</script> a & b Bcc: evil@example.com X-Evil: 1")
    header_block = received.data.split(b"\r\n\r\n", 1)[0]
    assert b"\n" not in header_block.replace(b"\r\n", b"")  # no bare LF in the headers
    assert received.rcpt_tos == ("desk@example.com",)
    _, html = parts(message)
    assert "<script>" not in html
    assert "&lt;script&gt;x&lt;/script&gt; a &amp; b" in html


@pytest.mark.parametrize("title", ["Переговоры возобновились", "Talks 🕊️ resume 👍🏽", "محادثات"])
async def test_non_ascii_subjects_round_trip(smtp: SmtpServer, title: str) -> None:
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        await notifier.send(delivery(title))
    [received] = smtp.wait_for(1)
    assert received.data.split(b"\r\n\r\n", 1)[0].isascii()  # RFC 2047 encoded words
    assert received.message["Subject"] == f"[news] {title}"
    text, html = parts(received.message)
    assert title in text
    assert title in html


def test_the_message_id_is_the_same_for_the_same_deliveries() -> None:
    notifier = EmailNotifier(spec(25), UTC_TZ)
    one, two, three = (delivery(id=n) for n in (1, 2, 3))
    first = notifier.message_id("burst", [one, two, three], "desk@example.com")
    again = [delivery(id=n) for n in (1, 2, 3)]  # the same rows, read again for a retry
    assert first == notifier.message_id("burst", again, "desk@example.com")
    assert first != notifier.message_id("burst", [one, two], "desk@example.com")
    assert first != notifier.message_id("burst", [one, two, three], "other@example.com")
    assert first != notifier.message_id("digest", [one, two, three], "desk@example.com")


async def test_message_ids_are_not_reused_after_the_state_file_is_reset(
    smtp: SmtpServer,
) -> None:
    """A new state file numbers deliveries from 1 again; a mail client that saw an old
    Message-ID would drop the new email as a duplicate."""
    before = delivery("Talks resume", id=1)
    # After the reset: delivery 1 again, another story, found later.
    story = replace(alert("Strike called", "2"), seen_at=T0 + timedelta(days=200))
    after = replace(before, alert=story)
    # Even the same story alerting again (once forgotten) is seen at another instant.
    again = replace(before, alert=replace(before.alert, seen_at=T0 + timedelta(days=200)))
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        for sent in (before, after, again):
            await notifier.send(sent)
    ids = [r.message["Message-ID"] for r in smtp.wait_for(3)]
    assert len(set(ids)) == 3


async def test_a_retry_repeats_the_message_id(smtp: SmtpServer) -> None:
    smtp.fail_next(421, "4.7.0 Try again later")
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        with pytest.raises(DeliveryError, match="421") as caught:
            await notifier.send(delivery())
        assert not caught.value.permanent
        assert smtp.received == []
        await notifier.send(delivery())
        await notifier.send(delivery())  # a duplicate after an ambiguous failure
    first, second = smtp.wait_for(2)
    assert first.message["Message-ID"] == second.message["Message-ID"]


@pytest.mark.parametrize(("code", "stage"), [(451, "DATA"), (452, "RCPT"), (450, "MAIL")])
async def test_a_transient_refusal_is_retried(smtp: SmtpServer, code: int, stage: str) -> None:
    smtp.fail_next(code, "4.3.0 busy", stage=stage)
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(delivery())
        assert not caught.value.permanent
        await notifier.send(delivery())
    assert len(smtp.wait_for(1)) == 1


async def test_a_refused_recipient_fails_only_its_own_delivery(smtp: SmtpServer) -> None:
    smtp.fail_next(550, "5.1.1 No such user", stage="RCPT", rcpt="gone@example.com")
    targets = ("gone@example.com", "desk@example.com")
    async with EmailNotifier(spec(smtp.port, to=targets), UTC_TZ) as notifier:
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(delivery(target="gone@example.com"))
        await notifier.send(delivery(target="desk@example.com"))
    assert caught.value.permanent
    assert not isinstance(caught.value, ChannelError)
    assert "gone@example.com" in str(caught.value)
    assert "550 5.1.1 No such user" in str(caught.value)
    [received] = smtp.wait_for(1)
    assert received.rcpt_tos == ("desk@example.com",)


async def test_a_rejected_message_fails_for_good(smtp: SmtpServer) -> None:
    smtp.fail_next(554, "5.7.1 Rejected as spam")
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        with pytest.raises(DeliveryError, match=r"554 5\.7\.1 Rejected as spam") as caught:
            await notifier.send(delivery())
    assert caught.value.permanent


async def test_a_burst_goes_as_one_email(smtp: SmtpServer) -> None:
    deliveries = [delivery(f"Talks round {n}", id=n) for n in range(1, 8)]
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        assert notifier.group_threshold == 5
        assert await notifier.send_group(deliveries) == 7
    [received] = smtp.wait_for(1)
    assert received.message["Subject"] == "[news] 7 new alerts: Talks round 1…"
    assert received.message["Message-ID"].startswith("<monitor.burst.")
    text, _ = parts(received.message)
    assert all(f"Talks round {n}" in text for n in range(1, 8))


async def test_a_digest_is_sent_through_the_same_path(smtp: SmtpServer) -> None:
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        rendered = notifier.render_digest([alert("Talks")], since=None, until=T0)
        target = "desk@example.com"
        message_id = notifier.message_id("digest", [delivery()], target)
        await notifier.send_email(target, rendered, message_id)
    [received] = smtp.wait_for(1)
    assert received.message["Subject"] == "[news] Digest: 1 alert (2026-11-28)"


async def test_login_works_and_a_wrong_password_pauses_the_channel(
    smtp_auth: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with EmailNotifier(spec(smtp_auth.port, password=PASSWORD), UTC_TZ) as notifier:
        await notifier.send(delivery())
    assert len(smtp_auth.wait_for(1)) == 1

    wrong = "wrong-secret-value"
    with caplog.at_level(logging.DEBUG), pytest.raises(ChannelError) as at_start:
        async with EmailNotifier(spec(smtp_auth.port, password=wrong), UTC_TZ):
            pass
    notifier = EmailNotifier(spec(smtp_auth.port, password=wrong), UTC_TZ)
    with caplog.at_level(logging.DEBUG), pytest.raises(ChannelError) as at_send:
        await notifier.send(delivery())
    for error in (at_start.value, at_send.value):
        assert "535" in str(error)
        assert wrong not in str(error)
        assert error.__cause__ is None  # no library text (which may quote it) chained on
    assert wrong not in caplog.text
    assert (USER, False) in smtp_auth.logins


async def test_no_login_where_one_is_required_pauses_the_channel(smtp_auth: SmtpServer) -> None:
    notifier = EmailNotifier(spec(smtp_auth.port), UTC_TZ)
    with pytest.raises(ChannelError, match="530"):
        await notifier.send(delivery())


async def test_an_unreachable_server_is_retried_and_does_not_stop_the_start() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    async with EmailNotifier(spec(port, password=PASSWORD), UTC_TZ) as notifier:
        with pytest.raises(DeliveryError, match="cannot reach") as caught:
            await notifier.send(delivery())
    assert not caught.value.permanent
    assert not isinstance(caught.value, ChannelError)
    assert PASSWORD not in str(caught.value)


async def test_bodies_are_never_sent_as_raw_8bit(smtp: SmtpServer) -> None:
    """aiosmtplib sends the message as it is, without BODY=8BITMIME: an 8-bit body would reach
    a server that never agreed to it. Non-ASCII text goes quoted-printable or base64."""
    title = "Переговоры возобновились: ÉÀ ü"
    async with EmailNotifier(spec(smtp.port), UTC_TZ) as notifier:
        await notifier.send(delivery(title))
        await notifier.send(delivery("Plain ASCII talks"))
    russian, ascii_only = smtp.wait_for(2)
    for received in (russian, ascii_only):
        assert received.data.isascii()
        encodings = {part["Content-Transfer-Encoding"] for part in received.message.iter_parts()}
        assert "8bit" not in encodings
    text, html = parts(russian.message)
    assert title in text
    assert title in html


def test_the_tls_context_is_built_once_per_channel() -> None:
    settings = replace(spec(587).options["email"], smtp=SmtpSettings("127.0.0.1", 587))  # type: ignore[type-var]
    notifier = EmailNotifier(ChannelSpec("mail", "email", {"email": settings}), UTC_TZ)
    first, second = notifier._client(), notifier._client()
    assert first.tls_context is not None
    assert first.tls_context is second.tls_context
