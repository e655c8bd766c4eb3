"""First-fetch policy and alert building."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.decide import alerts_for, eligible
from monitor.models import FirstFetch, Item, Match

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def item(n: int, published: datetime | None = None) -> Item:
    return Item(feed="f", key=f"id:{n}", title=f"t{n}", link="", published=published, seen_at=NOW)


def test_seeded_feed_makes_every_new_item_eligible() -> None:
    items = [item(1), item(2)]
    assert eligible(items, seeded=True, first_fetch=FirstFetch()) == items


def test_first_fetch_seeds_silently_by_default() -> None:
    assert eligible([item(1), item(2)], seeded=False, first_fetch=FirstFetch()) == []


def test_backfill_takes_the_newest_by_date_then_feed_order() -> None:
    old, new = NOW - timedelta(days=2), NOW - timedelta(hours=1)
    items = [item(1, old), item(2, new), item(3), item(4)]
    chosen = eligible(items, seeded=False, first_fetch=FirstFetch(backfill=2))
    assert [i.key for i in chosen] == ["id:1", "id:2"]
    undated = [item(1), item(2), item(3)]
    chosen = eligible(undated, seeded=False, first_fetch=FirstFetch(backfill=2))
    assert [i.key for i in chosen] == ["id:1", "id:2"]


def test_one_alert_per_item_with_all_its_matches() -> None:
    m1 = Match("a", ("talks",), ("title",), ("desk",))
    m2 = Match("b", ("geneva",), ("title",), ("desk", "mail"))
    silent = Match("c", ("x",), ("title",), ())
    [alert] = alerts_for([item(1), item(2)], {"id:1": [m1, m2, silent]}, NOW)
    assert alert.item_key == "id:1"
    assert alert.matches == (m1, m2)
    assert alert.channels == ("desk", "mail")
    assert alert.matches_for("mail") == (m2,)


def test_muted_rules_create_no_alerts() -> None:
    m1 = Match("a", ("talks",), ("title",), ("desk",))
    m2 = Match("b", ("geneva",), ("title",), ("desk",))
    [alert] = alerts_for([item(1), item(2)], {"id:1": [m1, m2], "id:2": [m2]}, NOW, {"b"})
    assert alert.item_key == "id:1"
    assert alert.matches == (m1,)
