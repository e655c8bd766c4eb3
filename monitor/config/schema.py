"""Pydantic models of the YAML file, and their errors rewritten as plain-word problems."""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import UTC, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    model_validator,
)

from monitor.config.units import Duration, Interval, Size, at_least
from monitor.config.yamlsource import kind
from monitor.digest import cron_trigger
from monitor.match.stem import LANGUAGES
from monitor.models import (
    FIELDS,
    AdminSettings,
    DeliveryPolicy,
    FetchLimits,
    HttpSettings,
    PollPolicy,
    Retention,
)

_POLL, _DELIVERY, _RETENTION, _LIMITS = PollPolicy(), DeliveryPolicy(), Retention(), FetchLimits()
_ADMIN = AdminSettings(channel="")
_HTTP = HttpSettings()
_HOUR_FLOOR = timedelta(hours=1)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
M = TypeVar("M", bound=BaseModel)


def _str_list(value: object) -> object:
    # A single string is the one-item list users obviously mean.
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a list of strings, got {kind(value)}")
    return value


def _id_list(value: object) -> object:
    # Chat ids: one or a list, numbers or @names (YAML reads -100123 as a number).
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a chat id or a list of them, got {kind(value)}")
    if any(isinstance(v, bool) or not isinstance(v, str | int) for v in value):
        raise ValueError("chat ids are numbers such as -1001234567890, or @channelname")
    return [str(v) for v in value]


def _first_fetch(value: object) -> object:
    if value == "seed":
        return {"backfill": 0}
    if not isinstance(value, dict):
        raise ValueError("expected 'seed' or {backfill: N}")
    return value


def _url(value: str) -> str:
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError("URL contains spaces or control characters")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if not scheme:
        raise ValueError("not an absolute URL: write it with http:// or https://")
    if scheme not in ("http", "https"):
        shown = scheme if len(scheme) <= 20 else scheme[:20] + "..."
        raise ValueError(f"unsupported scheme '{shown}': only http and https feeds are fetched")
    try:
        parts.port  # noqa: B018 - reading the property validates the port
    except ValueError:
        raise ValueError("URL has an invalid port") from None
    if not parts.hostname:
        raise ValueError("URL has no host")
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        msg = f"unknown timezone {value!r}: use an IANA name such as Europe/Berlin or UTC"
        raise ValueError(msg) from None
    return value


def _header(value: str) -> str:
    # A line break here would inject headers into every request.
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain line breaks or control characters")
    return value


def listen_host(value: str) -> str:
    """An address to listen on: an IP address (IPv6 with or without brackets) or a host name;
    "" is refused (it would mean every interface, which must be asked for as 0.0.0.0 or ::)."""
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError("empty address: use 127.0.0.1 (this machine only) or 0.0.0.0 (all)")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"not an IP address or host name: {value!r}")
    return host


def _field(value: str) -> str:
    if value not in FIELDS:
        raise ValueError(f"unknown field {value!r} (valid: {', '.join(FIELDS)})")
    return value


def _stem(value: str) -> str:
    if value not in LANGUAGES:
        raise ValueError(f"unknown stem language {value!r} (known: {', '.join(sorted(LANGUAGES))})")
    return value


def channel_name(value: str) -> str | None:
    """Why `value` is not a usable channel name, or None when it is."""
    return None if _NAME.fullmatch(value) else "channel names use letters, digits and _ - . only"


Redirects = Annotated[int, Field(ge=0, le=20)]
Text = Annotated[str, Field(min_length=1)]
StrList = Annotated[tuple[Text, ...], BeforeValidator(_str_list)]
# Terms stay plain: the query compiler explains an empty or wordless term better.
Terms = Annotated[tuple[str, ...], BeforeValidator(_str_list)]
Fields = Annotated[
    tuple[Annotated[str, AfterValidator(_field)], ...],
    BeforeValidator(_str_list),
    Field(min_length=1),
]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, numbers are accepted as text."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class Backfill(Strict):
    backfill: int = Field(ge=0)


FirstFetch = Annotated[Backfill, BeforeValidator(_first_fetch)]


class Timeout(Strict):
    connect: Duration | None = None
    read: Duration | None = None
    total: Duration | None = None


class Defaults(Strict):
    interval: Interval = timedelta(minutes=5)
    min_interval: Interval | None = None
    max_interval: Interval | None = None
    adaptive: bool = False
    allow_private: bool | None = None
    first_fetch: FirstFetch = Backfill(backfill=0)
    timeout: Timeout = Timeout()
    max_size: Size = _LIMITS.max_bytes
    max_redirects: Redirects = _LIMITS.max_redirects


def _zero(value: object) -> object:
    """0 (`0`, `"0"`, `"0s"`) as a duration, where it turns a floor off; else unchanged."""
    if isinstance(value, int | float | str) and str(value).strip() in ("0", "0s", "0ms", "0.0"):
        return timedelta(0)
    return value


class Poll(Strict):
    concurrency: int = Field(default=_POLL.concurrency, ge=1)
    per_host: int = Field(default=_POLL.per_host, ge=1)
    jitter: float = Field(default=_POLL.jitter, ge=0, le=0.5)
    backoff_cap: Duration = _POLL.backoff_cap
    max_items: int = Field(default=_POLL.max_items, ge=1)
    user_agent: Annotated[str, AfterValidator(_header)] = _POLL.user_agent
    host_interval: Annotated[Duration, BeforeValidator(_zero)] = _POLL.host_interval
    dead_after: Annotated[Duration, at_least(_HOUR_FLOOR)] = _POLL.dead_after


class Admin(Strict):
    """Where feed-health notices go."""

    channel: Text
    failing_after: Annotated[Duration, at_least(timedelta(minutes=1))] = _ADMIN.failing_after
    silent_factor: float = Field(default=_ADMIN.silent_factor, ge=2)
    silent_min: Annotated[Duration, at_least(timedelta(hours=1))] = _ADMIN.silent_min


class Http(Strict):
    """The HTTP endpoint (/healthz, /readyz, /metrics, /status); absent: none."""

    host: Annotated[str, AfterValidator(listen_host)] = _HTTP.host
    #: 0 picks a free port (logged at start).
    port: int = Field(default=_HTTP.port, ge=0, le=65535)


class Delivery(Strict):
    retry_base: Duration = _DELIVERY.retry_base
    retry_cap: Duration = _DELIVERY.retry_cap
    max_attempts: int = Field(default=_DELIVERY.max_attempts, ge=1)


# The store refreshes an item's last-seen time at most daily and forgets it only when it is
# also missing from its feed's latest document; a shorter `seen` cannot be honoured.
_SEEN_WHY = "items are remembered for at least as long as their feed may go quiet"
_HOUR = timedelta(hours=1)


class Retain(Strict):
    seen: Annotated[Duration, at_least(timedelta(days=2), _SEEN_WHY)] = _RETENTION.seen
    text: Annotated[Duration, at_least(_HOUR)] = _RETENTION.text
    deliveries: Annotated[Duration, at_least(_HOUR)] = _RETENTION.deliveries


class Top(Strict):
    """The top level; `feeds`, `channels` and `rules` entries are validated one by one."""

    state: Text | None = None
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    defaults: Defaults = Defaults()
    poll: Poll = Poll()
    delivery: Delivery = Delivery()
    retention: Retain = Retain()
    admin: Admin | None = None
    http: Http | None = None
    feeds: list[Any] = []
    channels: dict[str, Any] = {}
    rules: list[Any] = []

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: object) -> object:
        # `channels:` with every entry commented out reads as null: treat it as absent.
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class Feed(Strict):
    url: Annotated[str, AfterValidator(_url)]
    name: Text | None = None
    tags: StrList = ()
    interval: Interval | None = None
    min_interval: Interval | None = None
    max_interval: Interval | None = None
    adaptive: bool | None = None
    allow_private: bool | None = None
    first_fetch: FirstFetch | None = None
    timeout: Timeout | None = None
    max_size: Size | None = None
    max_redirects: Redirects | None = None


class Console(Strict):
    """Prints alerts to standard output."""

    type: Literal["console"]

    def options(self, base: Path) -> dict[str, object]:
        return {}


class Jsonl(Strict):
    """Appends one JSON object per alert to a file."""

    type: Literal["jsonl"]
    path: Text

    def options(self, base: Path) -> dict[str, object]:
        return {"path": os.path.normpath(base / self.path)}


_TOKEN = re.compile(r"\d{3,}:[A-Za-z0-9_-]{20,}")
_USERNAME = re.compile(r"@[A-Za-z][A-Za-z0-9_]{3,31}")


def _token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        # Never echo the value: it is a secret, and a malformed one is likely a pasted secret.
        raise ValueError("does not look like a bot token from @BotFather (digits:letters)")
    return value


def _chat(value: str) -> str:
    value = value.strip()
    if re.fullmatch(r"-?\d{1,20}", value) or _USERNAME.fullmatch(value):
        return value
    raise ValueError(f"not a chat id: {value!r} (a number such as -1001234567890, or @channelname)")


def _api_url(value: str) -> str:
    _url(value)
    if urlsplit(value).query or urlsplit(value).fragment:
        raise ValueError("the Bot API root URL takes no query or fragment")
    return value.rstrip("/")


Chat = Annotated[str, AfterValidator(_chat)]


def _numeric_id(value: str) -> str:
    if not re.fullmatch(r"-?\d{1,20}", value.strip()):
        raise ValueError(f"not a user or chat id: {value!r} (numbers only, e.g. 123456789)")
    return value.strip()


class Commands(Strict):
    """Bot commands: who may use them (numeric user or chat ids: Telegram names the sender
    of a message by number)."""

    allow: Annotated[
        tuple[Annotated[str, AfterValidator(_numeric_id)], ...],
        BeforeValidator(_id_list),
        Field(min_length=1),
    ]


class Telegram(Strict):
    """Sends alerts to Telegram chats through a bot."""

    type: Literal["telegram"]
    token: Annotated[str, AfterValidator(_token)]
    chat_id: Annotated[tuple[Chat, ...], BeforeValidator(_id_list), Field(min_length=1)]
    message_thread_id: int | None = Field(default=None, ge=1)
    api_url: Annotated[str, AfterValidator(_api_url)] = "https://api.telegram.org"
    disable_web_page_preview: bool = True
    silent: bool = False
    template: Text | None = None
    group_threshold: int = Field(default=5, ge=0)
    timeout: Duration = timedelta(seconds=20)
    commands: Commands | None = None

    def options(self, base: Path) -> dict[str, object]:
        return {}  # built by convert._telegram: it reads the template and registers the token


_ADDRESS = re.compile(
    r"[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_SHORTHANDS = {"hourly": "0 * * * *", "daily": "0 8 * * *"}


def _address(value: str) -> str:
    value = value.strip()
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"not an email address: {value!r}")
    return value


def _cron(value: str) -> str:
    value = _SHORTHANDS.get(value.strip().lower(), value.strip())
    try:
        # Crontab weekdays (0 and 7 Sunday, not APScheduler's 0 = Monday); UTC, as any zone
        # validates the same and the local one may be unknown (tzlocal errors in containers).
        cron_trigger(value, UTC)
    except ValueError as exc:
        raise ValueError(
            f"invalid cron schedule {value!r}: {exc} (five fields: minute hour day month "
            "weekday, e.g. '0 8 * * mon-fri'; or hourly, daily)"
        ) from None
    return value


def _digest(value: object) -> object:
    return {"cron": value} if isinstance(value, str) else value


Address = Annotated[str, AfterValidator(_address)]


class Smtp(Strict):
    host: Annotated[Text, AfterValidator(_header)]
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    user: Text | None = None
    password: Text | None = None
    timeout: Duration = timedelta(seconds=30)

    @model_validator(mode="after")
    def _login_needs_both(self) -> Smtp:
        if (self.user is None) != (self.password is None):
            raise ValueError("give both user and password, or neither")
        return self


class Digest(Strict):
    cron: Annotated[str, AfterValidator(_cron)]
    send_empty: bool = False


class EmailTemplates(Strict):
    alert_html: Text | None = None
    alert_text: Text | None = None
    digest_html: Text | None = None
    digest_text: Text | None = None


class Email(Strict):
    """Sends alerts, or scheduled digests, by email over SMTP."""

    type: Literal["email"]
    smtp: Smtp
    from_: Address = Field(alias="from")
    to: Annotated[tuple[Address, ...], BeforeValidator(_str_list), Field(min_length=1)]
    subject_prefix: Annotated[str, AfterValidator(_header)] = ""
    digest: Annotated[Digest | None, BeforeValidator(_digest)] = None
    group_threshold: int = Field(default=5, ge=0)
    templates: EmailTemplates = EmailTemplates()

    def options(self, base: Path) -> dict[str, object]:
        return {}  # built by convert._email: it reads the templates and registers the password


class Channel(
    RootModel[Annotated[Console | Jsonl | Telegram | Email, Field(discriminator="type")]]
):
    """One `channels:` entry. A new type is one more small model with a `type` literal and
    `options(base)`, added to this union."""


def type_tags(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(map(str, get_args(model.model_fields["type"].annotation)))


CHANNEL_TYPES: tuple[str, ...] = tuple(
    t for m in get_args(Console | Jsonl | Telegram | Email) for t in type_tags(m)
)


class Scope(Strict):
    names: StrList = ()
    tags: StrList = ()


def _scope(value: object) -> object:
    return {"names": value} if isinstance(value, str | list) else value


class Rule(Strict):
    name: Text
    # Plain str: the query parser explains an empty query better (with a caret).
    query: str | None = None
    any_: Terms = Field((), alias="any")
    all_: Terms = Field((), alias="all")
    none: Terms = ()
    regex: Terms = ()
    fields: Fields | None = None
    feeds: Annotated[Scope, BeforeValidator(_scope)] = Scope()
    notify: StrList | None = None
    case_sensitive: bool = False
    stem: Annotated[str, AfterValidator(_stem)] | None = None
