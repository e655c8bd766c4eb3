"""Errors the daemon raises on purpose, each carrying the data an operator needs.

    MonitorError
    ├── ConfigError          invalid configuration; holds every problem found, with file:line
    ├── FetchError           a feed could not be fetched (url, reason; retry_after when hinted)
    │   └── HTTPStatusError  the server answered with a non-success status
    ├── ParseError           fetched bytes are not a usable feed (not a feed, invalid JSON Feed)
    ├── StoreError           the state store failed or refused (locked by another instance)
    └── DeliveryError        a channel could not send; `permanent` says whether to retry
        ├── TargetError      one destination refuses us (bot blocked in a chat, chat gone)
        └── ChannelError     the whole channel is unusable (bad credentials)

Adapters catch their libraries' exceptions and raise these `from exc`; loops over feeds and
deliveries catch `MonitorError` per unit, so one failure never stops the others.
"""

from __future__ import annotations

from dataclasses import dataclass


class MonitorError(Exception):
    """Base of every error raised on purpose by the daemon."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in a configuration file."""

    #: File path.
    file: str
    #: 1-based line, or 0 when unknown.
    line: int
    #: Key path, e.g. "rules[2].notify[0]"; "" for the whole file.
    path: str
    #: What is wrong, in words.
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return ": ".join(part for part in (where, self.path, self.message) if part)


class ConfigError(MonitorError):
    """The configuration is invalid; `problems` lists everything found, in file order."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class FetchError(MonitorError):
    """A feed could not be fetched.

    `reason` is a short operator-facing phrase ("timed out after 60s", "body over 10 MiB").
    `retry_after` is the server's hint in seconds, when it gave one. `status` is the HTTP
    status of the final response when the server answered (then the fetch failed anyway: a
    body over the limit, an empty one), None when it did not.
    """

    def __init__(
        self,
        url: str,
        reason: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        self.url = url
        self.reason = reason
        self.retry_after = retry_after
        self.status = status
        super().__init__(reason)


class HTTPStatusError(FetchError):
    """The server answered with a status we cannot use (4xx, 5xx, unexpected 1xx/3xx)."""

    def __init__(self, url: str, status: int, *, retry_after: float | None = None) -> None:
        super().__init__(url, f"HTTP {status}", retry_after=retry_after, status=status)
        self.status: int = status


class ParseError(MonitorError):
    """Fetched bytes are not a usable feed; the message says why."""


class StoreError(MonitorError):
    """The state store failed, or refused to open (for example: locked by another instance)."""


class DeliveryError(MonitorError):
    """A send failed.

    `permanent` failures are not retried (the delivery is marked failed with this message);
    others are retried with backoff, no sooner than `retry_after` seconds when given.
    """

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        self.permanent = permanent
        self.retry_after = retry_after
        super().__init__(message)


class TargetError(DeliveryError):
    """One destination of a channel refuses us until the config changes (the bot was blocked
    or removed from a chat, the chat does not exist): this delivery fails for good, and the
    destination is paused; the channel's other destinations go on."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class ChannelError(DeliveryError):
    """The channel itself is unusable until its config changes (revoked token, bot removed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)
