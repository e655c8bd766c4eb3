"""The `email` channel: alerts, bursts and digests as emails over SMTP (aiosmtplib).

Each recipient of the channel is a delivery target of its own and gets its own copy, so one
refused address never holds up the others. One SMTP connection per email: alerts are rare
enough that a pooled connection would mostly be a dead one. Every SMTP answer is mapped to
what the dispatcher should do (BAD-INPUTS E01-E10):

- 4xx anywhere (421 at connect, 450/451/452 on RCPT or DATA), timeouts, refused or dropped
  connections: retried. A drop after DATA is ambiguous; the retry carries the same
  Message-ID, so a mail client or filter can drop the duplicate;
- 454 (temporary authentication failure) is a 4xx like the others: retried;
- a 5xx on RCPT: this delivery fails for good, with the server's code and text; so does a
  5xx answering the message itself (DATA: 552 too big, 554 rejected as spam);
- any other 5xx is not about this email but about the channel: a 5xx greeting, a 5xx to
  EHLO/HELO, a sender refused at MAIL FROM (550/553), 530/534/535/538 (authentication
  required or refused): `ChannelError`, the channel pauses with its alerts kept pending; so
  does a server without STARTTLS or AUTH when the config asks for them, and a certificate
  that does not verify.

Bodies are never sent as raw 8-bit: plain ASCII goes as 7bit, anything else as
quoted-printable or base64, whichever is shorter, so a server without 8BITMIME gets them intact.

aiosmtplib's errors are classified by their SMTP code before anything looks at their Python
type (`SMTPServerDisconnected` is a `ConnectionError`: a generic `except OSError: retry` would
retry a 550 forever). The password never appears in an error or log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import cast
from zoneinfo import ZoneInfo

import aiosmtplib

from monitor.errors import ChannelError, DeliveryError
from monitor.models import Alert, ChannelSpec, Delivery, EmailSettings, Rule
from monitor.notify.email_render import (
    EmailTemplates,
    RenderedEmail,
    TemplateProblem,
    clean_header,
    compile_templates,
    render_alert_email,
    render_burst_email,
    render_digest,
)

log = logging.getLogger("monitor.email")

#: SMTP codes meaning our credentials (or lack of them) are the problem.
AUTH_CODES = frozenset({530, 534, 535, 538})
#: The email package's SMTP policy, but never 8-bit bodies (see the module docstring).
POLICY = SMTP.clone(cte_type="7bit")

_Renderer = Callable[[EmailTemplates], RenderedEmail]


def settings_of(spec: ChannelSpec) -> EmailSettings:
    return cast(EmailSettings, spec.options["email"])


class EmailNotifier:
    """Sends alerts of one channel to its recipients (`Delivery.target`), grouped in bursts."""

    def __init__(
        self, spec: ChannelSpec, tz: ZoneInfo, rules: Mapping[str, Rule] | None = None
    ) -> None:
        self.spec = spec
        self.settings = settings_of(spec)
        self.group_threshold = self.settings.group_threshold
        self.templates = compile_templates(self.settings.templates)
        self._tz = tz
        self._rules = dict(rules or {})
        self._sender = parseaddr(self.settings.sender)[1] or self.settings.sender
        self._domain = self._sender.rpartition("@")[2] or "localhost"
        # Verified certificates and host names, always (E08); built once (it loads the
        # system's trust store), shared by every connection of the channel.
        secure = self.settings.smtp.security in ("tls", "starttls")
        self._tls = ssl.create_default_context() if secure else None

    async def __aenter__(self) -> EmailNotifier:
        """Logs in once to check the settings: refused credentials raise ChannelError at
        startup; an unreachable server is only logged (sends retry later)."""
        try:
            async with asyncio.timeout(self.settings.smtp.timeout.total_seconds()):
                async with self._client():
                    pass
        except Exception as exc:  # mapped below; only refused settings stop the start
            error = self._error(exc, "")
            # A server refusing service (5xx greeting or EHLO) may change its mind: sends
            # find out later, like with an unreachable one. Refused settings stop the start.
            refusing = isinstance(
                exc, aiosmtplib.SMTPConnectResponseError | aiosmtplib.SMTPHeloError
            )
            if isinstance(error, ChannelError) and not refusing:
                raise error from None
            log.warning(
                "cannot reach the mail server yet (%s); alerts wait in the outbox",
                error,
                extra={"channel": self.spec.name},
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None  # nothing stays open between sends

    # --- the Notifier contract ---------------------------------------------------------------

    async def send(self, delivery: Delivery) -> None:
        rendered = self._render(lambda t: self._alert(delivery.alert, t), delivery)
        await self.send_email(
            delivery.target, rendered, self.message_id("alert", [delivery], delivery.target)
        )

    async def send_group(self, deliveries: Sequence[Delivery]) -> int:
        alerts = [d.alert for d in deliveries]
        rendered = self._render(lambda t: self._burst(alerts, t), deliveries[0])
        target = deliveries[0].target
        await self.send_email(target, rendered, self.message_id("burst", deliveries, target))
        return len(deliveries)

    def render_digest(
        self, alerts: Sequence[Alert], *, since: datetime | None, until: datetime
    ) -> RenderedEmail:
        """The digest email for `alerts` (the user's templates, or the built-in ones when
        those fail on these alerts)."""
        try:
            return self._digest(alerts, self.templates, since, until)
        except TemplateProblem as exc:
            log.error(
                "the channel's digest template failed (%s); sent with the built-in one",
                exc,
                extra={"channel": self.spec.name},
            )
            return self._digest(alerts, compile_templates({}), since, until)

    # --- sending ------------------------------------------------------------------------------

    def message_id(self, kind: str, deliveries: Sequence[Delivery], target: str) -> str:
        """A Message-ID that is the same for the same deliveries, so a retry after an
        ambiguous failure repeats it and the duplicate can be recognised.

        Made of each delivery's id and its alert's identity (feed, item key, and the instant
        it was first seen): ids start again at 1 in a new state file, and a mail client drops
        a message whose Message-ID it has seen; the alerts of a new state file were seen at
        other instants, so their emails never reuse an old Message-ID.
        """
        parts = [self.spec.name, kind, target]
        for d in deliveries:
            seen = d.alert.seen_at.astimezone(UTC).isoformat()
            parts.append(f"{d.id}\x1f{d.alert.feed}\x1f{d.alert.item_key}\x1f{seen}")
        digest = hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:32]
        return f"<monitor.{kind}.{digest}@{self._domain}>"

    def message(self, target: str, rendered: RenderedEmail, message_id: str) -> EmailMessage:
        """A multipart/alternative email (text, then HTML) for one recipient. Raises
        DeliveryError(permanent) for an address the email package refuses."""
        msg = EmailMessage(policy=POLICY)
        try:
            msg["From"] = self.settings.sender
            msg["To"] = Address(addr_spec=target)
        except (ValueError, IndexError) as exc:  # IndexError: an empty or broken address
            raise DeliveryError(f"not a usable address: {exc}", permanent=True) from None
        msg["Subject"] = header_text(rendered.subject)
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = message_id
        msg.set_content(rendered.text, charset="utf-8")
        msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
        return msg

    async def send_email(self, target: str, rendered: RenderedEmail, message_id: str) -> None:
        """Send one email to `target`; returns once the server accepted it (250 after DATA).
        Raises DeliveryError / ChannelError as the module docstring describes."""
        if not target:
            raise DeliveryError("the delivery has no recipient", permanent=True)
        msg = self.message(target, rendered, message_id)
        try:
            async with asyncio.timeout(self.settings.smtp.timeout.total_seconds()):
                async with self._client() as client:
                    refused, _ = await client.send_message(
                        msg, sender=self._sender, recipients=[target]
                    )
        except Exception as exc:  # every failure becomes one of ours
            raise self._error(exc, target) from None
        if target in refused:  # unreachable with one recipient; kept for safety
            code, text = refused[target]
            raise self._error(aiosmtplib.SMTPRecipientRefused(code, text, target), target)

    def _client(self) -> aiosmtplib.SMTP:
        smtp = self.settings.smtp
        return aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.user,
            password=smtp.password,
            timeout=smtp.timeout.total_seconds(),
            use_tls=smtp.security == "tls",
            start_tls=smtp.security == "starttls",
            tls_context=self._tls,
        )

    def _error(self, exc: BaseException, target: str) -> DeliveryError:
        """What the dispatcher should do about an SMTP failure, as one of our errors."""
        server = f"{self.settings.smtp.host}:{self.settings.smtp.port}"
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
            exc = exc.recipients[0]
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return self._answer(exc, target, server)
        if _certificate_problem(exc):
            return ChannelError(f"mail server {server}: certificate not trusted: {self._why(exc)}")
        if isinstance(exc, aiosmtplib.SMTPNotSupported) or type(exc) is aiosmtplib.SMTPException:
            # No STARTTLS or AUTH where the config asks for them: a config problem.
            return ChannelError(f"mail server {server}: {self._why(exc)}")
        if isinstance(exc, TimeoutError):
            return DeliveryError(f"mail server {server} did not answer in time")
        if isinstance(exc, OSError | aiosmtplib.SMTPException):
            return DeliveryError(f"cannot reach mail server {server}: {self._why(exc)}")
        if isinstance(exc, DeliveryError):
            return exc
        return DeliveryError(f"sending email failed: {type(exc).__name__}: {self._why(exc)}")

    def _answer(
        self, exc: aiosmtplib.SMTPResponseException, target: str, server: str
    ) -> DeliveryError:
        """An SMTP reply that was not the one expected, by its code first (see the module
        docstring): 4xx retried; 5xx fails this recipient (RCPT) or this email (DATA), or
        else pauses the channel."""
        said = self._clean(f"{exc.code} {exc.message}")
        if not 500 <= exc.code < 600:  # 4xx (454 too), or nonsense: try again later
            return DeliveryError(f"mail server answered {said} (retrying)")
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError) or exc.code in AUTH_CODES:
            return ChannelError(
                f"mail server {server} refused the login of channel {self.spec.name!r}: {said}"
            )
        if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
            return DeliveryError(f"mail server refused recipient {target}: {said}", permanent=True)
        if isinstance(exc, aiosmtplib.SMTPDataError):
            return DeliveryError(f"mail server refused the email: {said}", permanent=True)
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):
            return ChannelError(
                f"mail server {server} refused the sender {self._sender} of channel "
                f"{self.spec.name!r}: {said}"
            )
        if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
            return ChannelError(f"mail server {server} refused the connection: {said}")
        if isinstance(exc, aiosmtplib.SMTPHeloError):
            return ChannelError(f"mail server {server} refused our greeting (EHLO/HELO): {said}")
        return ChannelError(f"mail server {server} answered {said}")

    def _why(self, exc: BaseException) -> str:
        return self._clean(getattr(exc, "message", None) or str(exc) or type(exc).__name__)

    def _clean(self, text: str) -> str:
        """`text` with the password masked (a server may quote what it was sent)."""
        password = self.settings.smtp.password
        return text.replace(password, "<password>") if password else text

    # --- rendering ----------------------------------------------------------------------------

    def _render(self, render: _Renderer, delivery: Delivery) -> RenderedEmail:
        try:
            return render(self.templates)
        except TemplateProblem as exc:
            # The user's template passed the check at load but fails on this alert (a
            # missing value): the alert still goes out, in the built-in shape.
            log.error(
                "the channel's template failed on an alert (%s); sent with the built-in one",
                exc,
                extra={"channel": self.spec.name, "delivery": delivery.id},
            )
            return render(compile_templates({}))

    def _alert(self, alert: Alert, templates: EmailTemplates) -> RenderedEmail:
        return render_alert_email(
            alert,
            self.spec.name,
            self._tz,
            templates,
            self._rules,
            self.settings.subject_prefix,
        )

    def _burst(self, alerts: Sequence[Alert], templates: EmailTemplates) -> RenderedEmail:
        return render_burst_email(
            alerts, self.spec.name, self._tz, templates, self._rules, self.settings.subject_prefix
        )

    def _digest(
        self,
        alerts: Sequence[Alert],
        templates: EmailTemplates,
        since: datetime | None,
        until: datetime,
    ) -> RenderedEmail:
        return render_digest(
            alerts,
            self.spec.name,
            self._tz,
            templates,
            since=since,
            until=until,
            rules=self._rules,
            subject_prefix=self.settings.subject_prefix,
        )


def header_text(value: str) -> str:
    """`value` safe as an unstructured header: one line, and no RFC 2047 encoded word of its
    own. The email package decodes "=?UTF-8?Q?=0A?=" in a value it is given and writes the
    newline back out bare, ending the header block early (CVE-2024-6923, BAD-INPUTS E01); a
    word joiner after "=" keeps such text literal and looks the same."""
    return clean_header(value).replace("=?", "=\u2060?")


def _certificate_problem(exc: BaseException) -> bool:
    """Whether a certificate check failed somewhere in the chain of `exc`."""
    seen: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(seen) < 10:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return False
