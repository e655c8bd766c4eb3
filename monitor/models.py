"""Domain data: frozen dataclasses shared by every stage of the pipeline.

Pydantic lives at the edge (config); everything past `monitor.config` sees only these types.
All datetimes are timezone-aware UTC. Durations are `timedelta`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.match.query import Node

#: The item fields a rule can look at.
FIELDS: tuple[str, ...] = ("title", "summary", "content", "author", "tags", "link")
#: The fields a rule looks at when it names none.
DEFAULT_FIELDS: tuple[str, ...] = ("title", "summary")


# --- feeds -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirstFetch:
    """What to do with the items a feed already holds when it is fetched for the first time."""

    #: How many of the newest existing items to alert on; 0 means "seed": remember, alert none.
    backfill: int = 0


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Bounds on one fetch; shared defaults, overridable per feed."""

    #: Seconds to establish the TCP/TLS connection.
    connect_timeout: float = 10.0
    #: Seconds to wait for any single read.
    read_timeout: float = 20.0
    #: Seconds for the whole fetch, redirects and body included (catches slow drips).
    deadline: float = 60.0
    #: Largest body accepted, counted after decompression.
    max_bytes: int = 10 * 1024 * 1024
    #: Redirect hops followed before giving up.
    max_redirects: int = 5


@dataclass(frozen=True, slots=True)
class FeedSpec:
    """A feed as the user configured it."""

    #: Unique name from the config (the URL when the user gave none).
    name: str
    #: Absolute http(s) URL.
    url: str
    #: Time between polls.
    interval: timedelta
    #: Free-form labels; rules can select feeds by tag.
    tags: frozenset[str] = frozenset()
    #: First-fetch policy.
    first_fetch: FirstFetch = FirstFetch()
    #: Bounds on each fetch.
    limits: FetchLimits = FetchLimits()
    #: Shortest time between polls when adapting (None: `interval`; never polled faster).
    min_interval: timedelta | None = None
    #: Longest time between polls a server hint (max-age, Expires, RSS ttl) or a quiet feed
    #: may stretch the interval to (None: 4 x `interval`).
    max_interval: timedelta | None = None
    #: Follow the feed's observed posting rate within [min_interval, max_interval].
    adaptive: bool = False
    #: May this feed's fetches (redirects included) connect to loopback, private, link-local
    #: and other non-public addresses? None: only when the URL itself names such an address
    #: (an IP literal or `localhost`), so a public feed can never lead us inside the network.
    allow_private: bool | None = None

    @property
    def interval_floor(self) -> timedelta:
        return min(self.min_interval or self.interval, self.interval)

    @property
    def interval_ceiling(self) -> timedelta:
        return max(self.max_interval or 4 * self.interval, self.interval)


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """HTTP validators from the last 200 response, sent back as a conditional GET."""

    #: `ETag` response header, verbatim.
    etag: str | None = None
    #: `Last-Modified` response header, verbatim.
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a fetch returned: a body to parse, or "not modified"."""

    #: URL after redirects (the base for relative links).
    url: str
    #: Final HTTP status (200 or 304).
    status: int
    #: Decoded body; empty when not modified.
    body: bytes
    #: Response headers, names lower-cased.
    headers: dict[str, str]
    #: Validators to store for the next conditional GET.
    cache: CacheInfo

    @property
    def not_modified(self) -> bool:
        return self.status == 304


@dataclass(frozen=True, slots=True)
class Item:
    """One entry of a feed, reduced to plain text for matching."""

    #: Name of the feed it came from.
    feed: str
    #: Stable identity within the feed: "id:<guid>", "link:<normalised url>" or "hash:<sha256>".
    key: str
    #: Plain-text title (HTML stripped, entities decoded, whitespace collapsed).
    title: str
    #: Absolute http(s) link to the story, or "" when the feed gave none that is safe.
    link: str
    #: Plain-text summary.
    summary: str = ""
    #: Plain-text full content, when the feed carries it.
    content: str = ""
    #: Author names, plain text.
    author: str = ""
    #: Categories/tags of the entry.
    tags: tuple[str, ...] = ()
    #: Publication (or update) time the feed claims, if it gave a parseable one.
    published: datetime | None = None
    #: When we first saw the item.
    seen_at: datetime | None = None

    @property
    def time(self) -> datetime | None:
        """Published time, falling back to first-seen time."""
        return self.published or self.seen_at

    def text(self, field_name: str) -> str:
        """The plain text of one matchable field."""
        if field_name == "tags":
            return " ".join(self.tags)
        value: str = getattr(self, field_name)
        return value


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A parsed document: its metadata and items, newest first as the feed listed them."""

    #: Feed format, e.g. "rss20", "atom10", "json11".
    version: str
    #: Feed title, plain text.
    title: str
    #: Items with a usable identity; duplicates within the document are dropped (first wins).
    items: tuple[Item, ...]
    #: Non-fatal problem noticed while parsing (malformed XML recovered, wrong charset...).
    warning: str | None = None
    #: Items skipped because they had no identity at all (no id, link, title or summary).
    skipped: int = 0
    #: RSS `<ttl>` in minutes, when present (adaptive polling uses it later).
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class FeedState:
    """What the store remembers about a feed between polls."""

    #: Feed name (primary key).
    name: str
    #: URL the state belongs to; a changed URL resets the validators.
    url: str
    #: Validators for the next conditional GET.
    cache: CacheInfo = CacheInfo()
    #: When the feed should next be polled.
    next_poll_at: datetime | None = None
    #: Last poll attempt, whatever its outcome.
    last_polled_at: datetime | None = None
    #: Last poll that got a 200 or 304.
    last_success_at: datetime | None = None
    #: Operator-readable description of the last failure ("" after a success).
    last_error: str = ""
    #: Failures since the last success.
    consecutive_failures: int = 0
    #: True once a poll succeeded: the first-fetch policy has been applied.
    seeded: bool = False
    #: Items ever recorded for this feed.
    items_seen: int = 0
    #: Last non-fatal parse warning ("" when the last parse was clean).
    last_warning: str = ""
    #: First failure of the current run of failures (None while the feed is healthy).
    failing_since: datetime | None = None
    #: When the feed was declared dead (410 Gone, or failing for `poll.dead_after`); a dead
    #: feed is never claimed until revived (`monitor feeds --retry`, or a new URL).
    dead_since: datetime | None = None
    #: Why it was declared dead.
    dead_reason: str = ""
    #: Last poll that stored new items (after the first fetch).
    last_new_at: datetime | None = None
    #: Usual time between polls that found new items (moving average), once known.
    cadence: timedelta | None = None
    #: Last feed-health notice sent to the admin channel ("" none, or "failing", "dead",
    #: "silent", "churn"); a notice is sent once per change of this value.
    notice: str = ""
    #: RSS `<ttl>` (minutes) of the last document fetched, if it had one: a 304 carries no
    #: document, so polling after one honours this.
    ttl: int | None = None


# --- rules and matches -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedScope:
    """Which feeds a rule looks at: everything, or feeds named or tagged."""

    #: Feed names; empty with empty `tags` means every feed.
    names: frozenset[str] = frozenset()
    #: Feed tags; a feed with any of them is in scope.
    tags: frozenset[str] = frozenset()

    def covers(self, feed: FeedSpec) -> bool:
        if not self.names and not self.tags:
            return True
        return feed.name in self.names or bool(self.tags & feed.tags)


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule: a query tree, where to look, and whom to tell."""

    #: Unique name from the config.
    name: str
    #: The boolean query every item in scope is tested against.
    query: Node
    #: Item fields the query looks at.
    fields: tuple[str, ...] = DEFAULT_FIELDS
    #: Feeds in scope.
    feeds: FeedScope = FeedScope()
    #: Channel names to alert.
    notify: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Match:
    """One rule matching one item, with what made it match."""

    #: Rule name.
    rule: str
    #: The query terms that were found, as written in the rule.
    terms: tuple[str, ...]
    #: The fields they were found in.
    fields: tuple[str, ...]
    #: Channels this rule notifies.
    channels: tuple[str, ...]
    #: A short excerpt of plain text around the first hit ("" when none, e.g. a pure NOT).
    snippet: str = ""


# --- alerts and deliveries ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """An item worth telling someone about: every rule it matched, and a copy of its text.

    One alert per item (never one per rule), so two rules matching one story send one message
    per channel. The text is copied so pending deliveries render after item text is pruned.
    """

    #: Feed name.
    feed: str
    #: Item identity within the feed.
    item_key: str
    #: Item title, plain text.
    title: str
    #: Item link ("" when none).
    link: str
    #: Item summary, plain text.
    summary: str
    #: Item publication time, if known.
    published: datetime | None
    #: When the item was first seen (the alert's creation time).
    seen_at: datetime
    #: Matches, in rule order.
    matches: tuple[Match, ...]

    @property
    def channels(self) -> tuple[str, ...]:
        """Every channel some match notifies, in first-mention order."""
        return tuple(dict.fromkeys(c for m in self.matches for c in m.channels))

    def matches_for(self, channel: str) -> tuple[Match, ...]:
        """The matches whose rule notifies `channel`."""
        return tuple(m for m in self.matches if channel in m.channels)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert bound for one destination of one channel: a row of the outbox."""

    #: Store-assigned id, unique per store.
    id: int
    #: Channel name.
    channel: str
    #: What to send.
    alert: Alert
    #: Current status.
    status: DeliveryStatus = DeliveryStatus.PENDING
    #: Send attempts so far.
    attempts: int = 0
    #: Last error, "" when none.
    last_error: str = ""
    #: When the row was written.
    created_at: datetime | None = None
    #: The destination within the channel (a Telegram chat id); "" for a channel's only one.
    target: str = ""


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A configured channel; `type` picks the notifier, `options` are its typed settings."""

    #: Channel name from the config.
    name: str
    #: Notifier type: "console", "jsonl", "telegram", "email".
    type: str
    #: Type-specific settings, already validated (paths resolved, secrets substituted).
    options: dict[str, object] = field(default_factory=dict, hash=False, compare=False)
    #: Destinations that each get their own delivery (Telegram chat ids); () for one.
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BotCommands:
    """Bot commands (/status, /mute ...) answered in a channel's chats."""

    #: User or chat ids whose commands are answered; everyone else is ignored (and logged).
    allow: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TelegramSettings:
    """A `telegram` channel, validated (`ChannelSpec.options["telegram"]`)."""

    #: Bot token from @BotFather (a secret: never logged).
    token: str = field(repr=False)
    #: Chat ids ("-1001234567890", "123456") or public "@channel" names; each a target.
    chats: tuple[str, ...]
    #: Bot API server root; the daemon appends /bot<token>/<method>.
    api_url: str = "https://api.telegram.org"
    #: Forum topic to post in, when set.
    message_thread_id: int | None = None
    #: Turn off link previews (feed links are not ours to preview).
    disable_web_page_preview: bool = True
    #: Send without a notification sound.
    silent: bool = False
    #: Jinja2 template source for one alert (HTML parse mode); None for the built-in one.
    template: str | None = None
    #: More alerts than this due at once for a chat go as one grouped message; 0: never.
    group_threshold: int = 5
    #: How long one Bot API request may take before it counts as failed.
    timeout: timedelta = timedelta(seconds=20)
    #: Bot commands, when enabled.
    commands: BotCommands | None = None


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """How to reach the mail server."""

    host: str
    port: int
    #: "starttls" (upgrade a plain connection, port 587), "tls" (implicit TLS, port 465) or
    #: "none" (plain, for a local relay).
    security: str = "starttls"
    user: str | None = None
    #: A secret: never logged.
    password: str | None = field(default=None, repr=False)
    #: How long one SMTP conversation may take.
    timeout: timedelta = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class DigestSettings:
    """Scheduled digests: one email per period instead of one per alert."""

    #: Five-field crontab expression, in the config's timezone ("hourly" and "daily" are
    #: stored as "0 * * * *" and "0 8 * * *").
    cron: str
    #: Send a digest even when nothing matched in its period.
    send_empty: bool = False


@dataclass(frozen=True, slots=True)
class EmailSettings:
    """An `email` channel, validated (`ChannelSpec.options["email"]`)."""

    smtp: SmtpSettings
    #: The From address.
    sender: str
    #: Recipients; each is a target (its own delivery and its own copy of every email).
    to: tuple[str, ...]
    subject_prefix: str = ""
    #: Digest mode when set; else one email per alert (a burst of more than
    #: `group_threshold` alerts goes as one email).
    digest: DigestSettings | None = None
    group_threshold: int = 5
    #: Template sources by name ("alert_html", "alert_text", "digest_html", "digest_text");
    #: a name absent uses the built-in template.
    templates: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the store keeps things."""

    #: Item identities not seen in any fetch for this long are forgotten.
    seen: timedelta = timedelta(days=180)
    #: Item text (title, summary, link) is kept this long, for backtests and digests.
    text: timedelta = timedelta(days=30)
    #: Sent and failed deliveries are kept this long.
    deliveries: timedelta = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How failed sends are retried."""

    #: First retry delay; doubles with each attempt, with jitter.
    retry_base: timedelta = timedelta(seconds=10)
    #: Longest delay between retries.
    retry_cap: timedelta = timedelta(minutes=30)
    #: Attempts before a delivery is marked failed for good.
    max_attempts: int = 12


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How feeds are scheduled and fetched."""

    #: Fetches running at once, over all feeds.
    concurrency: int = 20
    #: Fetches running at once against one host.
    per_host: int = 2
    #: Fraction of a feed's interval added or removed at random, so polls spread out.
    jitter: float = 0.1
    #: Longest delay after repeated failures.
    backoff_cap: timedelta = timedelta(hours=6)
    #: Most items considered from one document (the newest, in feed order).
    max_items: int = 500
    #: The User-Agent header sent with every fetch.
    user_agent: str = ""
    #: Shortest time between the starts of two fetches from one host (politeness floor).
    host_interval: timedelta = timedelta(milliseconds=200)
    #: A feed failing without a break for this long is declared dead (410 Gone at once).
    dead_after: timedelta = timedelta(days=3)


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """Where feed-health notices go (`admin:` in the config)."""

    #: A configured channel.
    channel: str
    #: A feed failing without a break for this long is reported (once per run of failures).
    failing_after: timedelta = timedelta(hours=1)
    #: A feed with no new item for this many times its usual cadence is reported as silent…
    silent_factor: float = 10.0
    #: …but never sooner than this after its last new item.
    silent_min: timedelta = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The HTTP endpoint: /healthz, /readyz, /metrics, /status (`http:` in the config)."""

    #: Address to listen on: 127.0.0.1 for this machine only, 0.0.0.0 or :: for every one.
    host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one (the daemon logs which).
    port: int = 8080


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated configuration."""

    #: The YAML file it came from.
    path: str
    #: Store location: "sqlite:///abs/path.db", "memory:", later "postgresql://...".
    state: str
    #: IANA timezone name used for display and schedules.
    timezone: str
    feeds: tuple[FeedSpec, ...]
    channels: tuple[ChannelSpec, ...]
    rules: tuple[Rule, ...]
    poll: PollPolicy = PollPolicy()
    delivery: DeliveryPolicy = DeliveryPolicy()
    retention: Retention = Retention()
    #: Feed-health notices; None when not configured.
    admin: AdminSettings | None = None
    #: The HTTP endpoint; None (the default) serves none.
    http: HttpSettings | None = None
    #: Values substituted from the environment (`${NAME}`): never to be printed.
    secrets: frozenset[str] = frozenset()
