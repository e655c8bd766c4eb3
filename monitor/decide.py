"""Turn matches on new items into alerts: first-fetch policy and routing (pure).

Later stages (mutes, cooldowns, quiet hours) belong here too: everything that decides whether
a match becomes an alert now, taking `now` and data and doing no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime

from monitor.models import Alert, FirstFetch, Item, Match


def eligible(items: Sequence[Item], *, seeded: bool, first_fetch: FirstFetch) -> list[Item]:
    """The new items that may alert.

    After the first successful poll every new item may. On the first one (not `seeded`) only
    the newest `first_fetch.backfill` do; the rest are remembered silently, so subscribing to
    a feed does not flood the channel with its backlog.
    """
    if seeded:
        return list(items)
    if first_fetch.backfill <= 0:
        return []
    return _newest(items, first_fetch.backfill)


def _newest(items: Sequence[Item], n: int) -> list[Item]:
    """The `n` newest items; undated ones count by their position (feeds list newest first)."""
    floor = datetime.min.replace(tzinfo=UTC)
    order = sorted(
        range(len(items)),
        key=lambda i: (items[i].published or floor, -i),
        reverse=True,
    )
    chosen = set(order[:n])
    return [item for i, item in enumerate(items) if i in chosen]


def alerts_for(
    items: Sequence[Item],
    matches: Mapping[str, Sequence[Match]],
    now: datetime,
    muted: Collection[str] = (),
) -> list[Alert]:
    """One alert per item that matched a rule notifying at least one channel; matches of
    `muted` rules (a bot's /mute) do not count."""
    result = []
    for item in items:
        found = tuple(m for m in matches.get(item.key, ()) if m.channels and m.rule not in muted)
        if not found:
            continue
        result.append(
            Alert(
                feed=item.feed,
                item_key=item.key,
                title=item.title,
                link=item.link,
                summary=item.summary,
                published=item.published,
                seen_at=item.seen_at or now,
                matches=found,
            )
        )
    return result
