"""SMTP refusals that are about the channel, not about one email or one recipient: a 5xx
greeting, a 5xx to EHLO/HELO, a sender refused at MAIL FROM, pause the channel (ChannelError,
alerts kept) instead of failing alerts for good; a temporary login failure (454) is retried.

Real servers on loopback: aiosmtpd with refusing hooks, and for the greeting (which aiosmtpd
always answers 220) a bare TCP server that speaks the one line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from monitor.errors import ChannelError, DeliveryError
from monitor.models import Alert, ChannelSpec, Delivery, EmailSettings, Match, SmtpSettings
from monitor.notify.email import EmailNotifier
from tests.smtpserver import SmtpServer, _Controller

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
UTC_TZ = ZoneInfo("UTC")
TARGET = "desk@example.com"


def spec(port: int, *, user: str | None = None, password: str | None = None) -> ChannelSpec:
    settings = EmailSettings(
        smtp=SmtpSettings(
            "127.0.0.1",
            port,
            security="none",
            user=user,
            password=password,
            timeout=timedelta(seconds=5),
        ),
        sender="Monitor <monitor@alerts.example>",
        to=(TARGET,),
    )
    return ChannelSpec("mail", "email", {"email": settings}, targets=settings.to)


def delivery() -> Delivery:
    match = Match("talks", ("talks",), ("title",), ("mail",))
    alert = Alert("wire", "id:1", "Talks resume", "https://news.example/1", "", T0, T0, (match,))
    return Delivery(id=1, channel="mail", alert=alert, target=TARGET)


# --- a greeting that refuses ------------------------------------------------------------------


class Greeter:
    """What the bare server greets each client with (`line`), and where it listens."""

    def __init__(self) -> None:
        self.line = "220 smtp.test ESMTP"
        self.port = 0


@pytest.fixture
async def greeting() -> AsyncIterator[Greeter]:
    """A TCP server on loopback that greets each client with `Greeter.line`, then reads until
    the client leaves."""
    greeter = Greeter()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{greeter.line}\r\n".encode("ascii"))
        try:
            await writer.drain()
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    greeter.port = server.sockets[0].getsockname()[1]
    async with server:
        yield greeter


async def test_a_5xx_greeting_pauses_the_channel(greeting: Greeter) -> None:
    greeting.line = "554 5.7.1 No SMTP service for you"
    notifier = EmailNotifier(spec(greeting.port), UTC_TZ)
    with pytest.raises(ChannelError, match=r"refused the connection: 554 5\.7\.1 No SMTP"):
        await notifier.send(delivery())


async def test_a_5xx_greeting_at_start_is_logged_not_fatal(
    greeting: Greeter, caplog: pytest.LogCaptureFixture
) -> None:
    """A server refusing service may change its mind; a refused login is what stops a start."""
    greeting.line = "554 5.7.1 No SMTP service for you"
    async with EmailNotifier(spec(greeting.port), UTC_TZ):
        pass
    assert "554 5.7.1 No SMTP service" in caplog.text


async def test_a_4xx_greeting_is_retried(greeting: Greeter) -> None:
    greeting.line = "421 4.3.2 Too busy, come back later"
    notifier = EmailNotifier(spec(greeting.port), UTC_TZ)
    with pytest.raises(DeliveryError, match="421") as caught:
        await notifier.send(delivery())
    assert not isinstance(caught.value, ChannelError)
    assert not caught.value.permanent


# --- EHLO/HELO and login, on aiosmtpd ----------------------------------------------------------


class _Refusing:
    """aiosmtpd hooks answering EHLO and HELO with `helo` when set; accepting mail else."""

    def __init__(self) -> None:
        self.helo: str | None = None
        self.received = 0

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if self.helo:
            return [self.helo]
        session.host_name = hostname
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        if self.helo:
            return self.helo
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received += 1
        return "250 2.0.0 Message accepted"


class _Server:
    def __init__(self, handler: _Refusing, controller: _Controller) -> None:
        self.handler = handler
        self.controller = controller

    @property
    def port(self) -> int:
        return int(self.controller.port)


@pytest.fixture
def refusing() -> Iterator[_Server]:
    handler = _Refusing()
    controller = _Controller(handler, hostname="127.0.0.1", port=0, server_hostname="smtp.test")
    controller.start()
    try:
        yield _Server(handler, controller)
    finally:
        controller.stop()


async def test_a_5xx_to_ehlo_and_helo_pauses_the_channel(refusing: _Server) -> None:
    refusing.handler.helo = "550 5.7.1 Your host is not welcome"
    notifier = EmailNotifier(spec(refusing.port), UTC_TZ)
    with pytest.raises(ChannelError, match=r"EHLO/HELO\): 550 5\.7\.1 Your host"):
        await notifier.send(delivery())
    refusing.handler.helo = None
    await notifier.send(delivery())
    assert refusing.handler.received == 1


@pytest.fixture
def flaky_login() -> Iterator[_Server]:
    """aiosmtpd offering AUTH, answering every login "454 temporary failure"."""

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        return AuthResult(
            success=False, handled=False, message="454 4.7.0 Temporary authentication failure"
        )

    handler = _Refusing()
    controller = _Controller(
        handler,
        hostname="127.0.0.1",
        port=0,
        server_hostname="smtp.test",
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield _Server(handler, controller)
    finally:
        controller.stop()


async def test_a_temporary_login_failure_is_retried_not_a_paused_channel(
    flaky_login: _Server,
) -> None:
    settings = spec(flaky_login.port, user="monitor", password="correct-horse")
    async with EmailNotifier(settings, UTC_TZ) as notifier:  # not a refused login: starts
        with pytest.raises(DeliveryError, match=r"454 4\.7\.0") as caught:
            await notifier.send(delivery())
    assert not isinstance(caught.value, ChannelError)
    assert not caught.value.permanent
    assert "correct-horse" not in str(caught.value)


# --- the sender ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [550, 553])
async def test_a_refused_sender_pauses_the_channel(code: int) -> None:
    with SmtpServer() as smtp:
        smtp.fail_next(code, "5.7.1 Sender address rejected: not owned by user", stage="MAIL")
        notifier = EmailNotifier(spec(smtp.port), UTC_TZ)
        with pytest.raises(
            ChannelError, match=r"refused the sender monitor@alerts\.example"
        ) as caught:
            await notifier.send(delivery())
        assert f"{code} 5.7.1 Sender address rejected" in str(caught.value)
        await notifier.send(delivery())  # the next one is accepted: nothing was lost
        assert len(smtp.wait_for(1)) == 1
