"""A loopback SMTP server for tests (aiosmtpd, in its own thread), with scripted refusals.

    with SmtpServer(user="alice", password="s3cret") as server:
        server.fail_next(451, "4.3.0 try later")             # the next DATA: 451, then 250
        server.fail_next(550, "5.1.1 no such user", stage="RCPT", rcpt="gone@example.com")
        ... send to 127.0.0.1:server.port ...
        [received] = server.wait_for(1)
        received.message["Subject"]

Messages are recorded before the server answers 250, so once a client's send returned they
are there. Use it as a context manager, or import the `smtp_server` fixture:
`from tests.smtpserver import smtp_server  # noqa: F401`.
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    #: The DATA as sent (CRLF line ends).
    data: bytes
    message: EmailMessage


@dataclass
class _Failure:
    code: int
    text: str
    times: int
    stage: str
    rcpt: str | None


@dataclass
class _Handler:
    """aiosmtpd hooks; they run on the server's thread."""

    server: SmtpServer
    failures: list[_Failure] = field(default_factory=list)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.server.password is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        refusal = self.server.take("MAIL", None)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refusal = self.server.take("RCPT", address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        refusal = self.server.take("DATA", None)
        if refusal:
            return refusal
        data = cast(bytes, envelope.original_content or envelope.content)
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        self.server.record(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=data,
                message=cast(EmailMessage, parsed),
            )
        )
        return "250 2.0.0 Message accepted"


class _Session(Session):
    """aiosmtpd 1.4 itself sets the deprecated `Session.login_data` after every successful
    AUTH, which warns (an error under pytest) on the server's thread; keep it quiet here."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _SMTP(SMTP):
    def _create_session(self) -> Session:
        return _Session(self.loop)


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before aiosmtpd connects to itself.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpServer:
    """An SMTP server on 127.0.0.1 that records what it accepts (see the module docstring).

    With `user` and `password` it offers AUTH PLAIN/LOGIN on the plain connection and
    answers 530 to MAIL until the client logged in; a wrong login gets 535.
    """

    host = "127.0.0.1"

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.user = user
        self.password = password
        self.received: list[Received] = []
        #: AUTH attempts: (login, whether it succeeded).
        self.logins: list[tuple[str, bool]] = []
        self._handler = _Handler(self)
        self._changed = threading.Condition()
        options: dict[str, Any] = {}
        if password is not None:
            options = {"authenticator": self._authenticate, "auth_require_tls": False}
        self._controller = _Controller(
            self._handler, hostname=self.host, port=0, server_hostname="smtp.test", **options
        )

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._controller.stop()

    def fail_next(
        self,
        code: int,
        text: str,
        times: int = 1,
        stage: str = "DATA",
        rcpt: str | None = None,
    ) -> None:
        """Answer `code text` to the next `times` commands of `stage` ("MAIL", "RCPT" or
        "DATA"); for RCPT, only to recipient `rcpt` when given."""
        if stage not in ("MAIL", "RCPT", "DATA"):
            raise ValueError(f"unknown stage {stage!r}")
        with self._changed:
            self._handler.failures.append(_Failure(code, text, times, stage, rcpt))

    def take(self, stage: str, rcpt: str | None) -> str | None:
        """The scripted answer for this command, if one is due (used by the handler)."""
        with self._changed:
            for failure in self._handler.failures:
                if failure.stage == stage and failure.rcpt in (None, rcpt) and failure.times > 0:
                    failure.times -= 1
                    return f"{failure.code} {failure.text}"
        return None

    def record(self, received: Received) -> None:
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """The messages received, once there are at least `count`; AssertionError after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} messages received, not {count}")
                self._changed.wait(left)
            return list(self.received)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.user
            and data.password.decode() == self.password
        )
        with self._changed:
            login = data.login.decode() if isinstance(data, LoginPassword) else ""
            self.logins.append((login, ok))
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A started loopback SmtpServer without AUTH, stopped after the test."""
    with SmtpServer() as server:
        yield server
