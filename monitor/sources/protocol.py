"""The Fetcher contract."""

from __future__ import annotations

from typing import Protocol

from monitor.models import CacheInfo, FeedSpec, Fetched


class Fetcher(Protocol):
    """Gets a feed's bytes.

    Lifecycle: `async with fetcher:` opens shared connections and closes them. `fetch` may be
    called concurrently from one event loop; the fetcher applies its own global and per-host
    concurrency limits, and every bound in `feed.limits` (deadline, size, redirects).

    Returns `Fetched` for a 200 (body decoded, at most `max_bytes`) or a 304 (empty body).
    Raises `FetchError` (or `HTTPStatusError`) with an operator-readable reason for anything
    else: network errors, timeouts, oversize bodies, redirect loops, unusable statuses.
    Never raises anything but `FetchError` for a problem of the feed or its server.
    """

    async def fetch(self, feed: FeedSpec, cache: CacheInfo) -> Fetched: ...

    async def __aenter__(self) -> Fetcher: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
