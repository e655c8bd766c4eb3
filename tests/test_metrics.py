"""Metric wiring, unit by unit: each stage counts what it did under bounded labels.

Polls go through the real fetcher and parser against a loopback feed server; sends through
the real dispatcher and digest-free channels against a real SQLite store; the registry is
read back with prometheus_client's parser, as Prometheus would.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor import metrics as metrics_module
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.dispatch import Dispatcher
from monitor.errors import ChannelError, DeliveryError, TargetError
from monitor.metrics import Metrics, alert_age, status_class
from monitor.models import Alert, DeliveryPolicy, Match
from monitor.store import SQLiteStore, Store
from monitor.store.protocol import OutboxStat
from tests.builders import rss, write_config
from tests.feedserver import FeedServer, never_answer
from tests.test_dispatch import ChatChannel, Clock, ScriptedChannel, seed

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
POLICY = DeliveryPolicy(
    retry_base=timedelta(seconds=10), retry_cap=timedelta(minutes=5), max_attempts=3
)


def samples(metrics: Metrics) -> Samples:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def labels_of(found: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in found if n == name and label in dict(labels)}


# --- pure parts --------------------------------------------------------------------------------


def test_status_classes() -> None:
    assert [status_class(s) for s in (100, 200, 304, 404, 503)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
    ]
    assert status_class(99) is None
    assert status_class(600) is None


def _alert(published: datetime | None, seen_at: datetime = T0) -> Alert:
    return Alert("wire", "k", "t", "", "", published, seen_at, (Match("r", (), (), ("c",)),))


def test_alert_age_counts_from_publication_else_first_sight() -> None:
    sent = T0 + timedelta(minutes=2)
    assert alert_age(_alert(T0 - timedelta(minutes=3)), sent) == 300.0
    assert alert_age(_alert(None), sent) == 120.0
    # A date after the item was first seen (a clock ahead): from first sight.
    assert alert_age(_alert(T0 + timedelta(hours=1)), sent) == 120.0
    assert alert_age(_alert(None), T0 - timedelta(seconds=1)) == 0.0


def test_registries_are_per_instance_not_global() -> None:
    one, two = Metrics(process=False), Metrics(process=False)
    one.matched(["talks"])
    assert value(samples(one), "monitor_rule_matches_total", rule="talks") == 1
    assert value(samples(two), "monitor_rule_matches_total", rule="talks") == 0


def test_configure_keeps_only_configured_names_and_starts_them_at_zero(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""
state: "memory:"
feeds:
  - {{name: wire, url: '{feed_server.url("/wire.xml")}'}}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - {{name: talks, any: [talks]}}
""",
    )
    metrics = Metrics(process=False)
    metrics.polled("old-feed", "ok", 0.1, status=200, new_items=3)
    metrics.polled("wire", "ok", 0.1, status=200, new_items=1)
    metrics.matched(["old-rule"])
    metrics.queued("old-channel", 2)
    metrics.configure(load_config(path))
    found = samples(metrics)
    assert labels_of(found, "monitor_polls_total", "feed") == {"wire"}
    assert labels_of(found, "monitor_items_new_total", "feed") == {"wire"}
    assert labels_of(found, "monitor_http_responses_total", "feed") == {"wire"}
    assert labels_of(found, "monitor_rule_matches_total", "rule") == {"talks"}
    assert labels_of(found, "monitor_alerts_total", "channel") == {"out"}
    assert value(found, "monitor_alerts_total", channel="out", outcome="queued") == 0
    assert ("monitor_alerts_total", (("channel", "out"), ("outcome", "sent"))) in found
    assert value(found, "monitor_items_new_total", feed="wire") == 1  # kept, not reset


def test_feeds_past_the_cap_share_one_label(
    tmp_path: Path, feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "FEED_LABEL_CAP", 2)
    feeds = "\n".join(
        f"  - {{name: f{n}, url: '{feed_server.url(f'/{n}.xml')}'}}" for n in range(4)
    )
    path = write_config(tmp_path / "monitor.yaml", f'state: "memory:"\nfeeds:\n{feeds}\n')
    metrics = Metrics(process=False)
    metrics.configure(load_config(path))
    for n in range(4):
        metrics.polled(f"f{n}", "ok", 0.1, status=200, new_items=1)
    found = samples(metrics)
    assert labels_of(found, "monitor_polls_total", "feed") == {"f0", "f1", "_other"}
    assert value(found, "monitor_items_new_total", feed="_other") == 2


def test_outbox_gauges_follow_the_store_and_the_config() -> None:
    metrics = Metrics(process=False)
    stats = [
        OutboxStat("out", 3, 10, 1, T0 - timedelta(minutes=5)),
        OutboxStat("removed", 1, 0, 0, T0 - timedelta(hours=1)),
    ]
    metrics.outbox(stats, T0, ["out", "idle"])
    found = samples(metrics)
    assert value(found, "monitor_outbox_pending", channel="out") == 3
    assert value(found, "monitor_outbox_oldest_pending_age_seconds", channel="out") == 300
    assert value(found, "monitor_outbox_pending", channel="removed") == 1  # still waiting
    assert ("monitor_outbox_pending", (("channel", "idle"),)) in found
    assert value(found, "monitor_outbox_oldest_pending_age_seconds", channel="idle") == 0
    metrics.outbox([], T0, ["out"])
    assert labels_of(samples(metrics), "monitor_outbox_pending", "channel") == {"out"}


def test_store_failures_are_news_once_and_end_with_a_write() -> None:
    metrics = Metrics(process=False)
    assert metrics.store_failed("disk full")
    assert not metrics.store_failed("disk full")
    assert metrics.store_failed("read-only")
    assert metrics.store_problem == "read-only"
    metrics.store_ok()
    assert metrics.store_problem == ""
    assert value(samples(metrics), "monitor_store_errors_total") == 3


# --- polls -------------------------------------------------------------------------------------


async def test_poll_outcomes_and_status_classes(tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.set("/ok.xml", rss([("a", "Talks open")]))
    feed_server.set("/500.xml", "oops", status=500)
    feed_server.set("/404.xml", "nope", status=404)
    feed_server.set("/page.html", "<html><body>Sign in</body></html>", content_type="text/html")
    feed_server.handle("/hang.xml", never_answer())
    names = {"ok": "/ok.xml", "five": "/500.xml", "four": "/404.xml", "page": "/page.html"}
    feeds = [f"  - {{name: {n}, url: '{feed_server.url(p)}'}}" for n, p in names.items()]
    feeds.append(
        f"  - {{name: hang, url: '{feed_server.url('/hang.xml')}', timeout: {{total: 1s}}}}"
    )
    path = write_config(
        tmp_path / "monitor.yaml",
        "state: state.db\nfeeds:\n" + "\n".join(feeds) + "\n",
    )
    metrics = Metrics(process=False)
    async with Daemon(load_config(path), metrics=metrics) as daemon:
        await daemon.once()
        second = await daemon.once()
    assert {p.feed: p.outcome for p in second.polls} == {
        "ok": "not_modified",
        "five": "http_error",
        "four": "http_error",
        "page": "parse_error",
        "hang": "fetch_error",
    }
    assert {p.feed: p.http_status for p in second.polls} == {
        "ok": 304,
        "five": 500,
        "four": 404,
        "page": 200,
        "hang": None,
    }
    found = samples(metrics)
    assert value(found, "monitor_polls_total", feed="ok", outcome="ok") == 1
    assert value(found, "monitor_polls_total", feed="ok", outcome="not_modified") == 1
    assert value(found, "monitor_polls_total", feed="five", outcome="http_error") == 2
    assert value(found, "monitor_polls_total", feed="page", outcome="parse_error") == 2
    assert value(found, "monitor_polls_total", feed="hang", outcome="fetch_error") == 2
    http = {
        (dict(labels)["feed"], dict(labels)["class"]): v
        for (name, labels), v in found.items()
        if name == "monitor_http_responses_total"
    }
    assert http == {
        ("ok", "2xx"): 1,
        ("ok", "3xx"): 1,
        ("five", "5xx"): 2,
        ("four", "4xx"): 2,
        ("page", "2xx"): 2,
    }  # no response from "hang": no class
    assert value(found, "monitor_poll_duration_seconds_count", outcome="error") == 8
    assert value(found, "monitor_poll_duration_seconds_count", outcome="not_modified") == 1
    assert value(found, "monitor_items_new_total", feed="ok") == 1
    assert value(found, "monitor_store_errors_total") == 0


# --- deliveries --------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(tmp_path / "state.db") as opened:
        yield opened


def _dispatcher(
    store: Store, clock: Clock, metrics: Metrics, *channels: ScriptedChannel
) -> Dispatcher:
    notifiers = {c.spec.name: c for c in channels}
    return Dispatcher(store, notifiers, POLICY, clock, random.Random(7), metrics)


async def test_sends_retries_and_failures_are_counted(store: Store) -> None:
    await seed(store, ["one", "two"], ("desk",))
    desk = ScriptedChannel("desk", [DeliveryError("timeout"), DeliveryError("bad", permanent=True)])
    clock, metrics = Clock(), Metrics(process=False)
    clock.now = T0 + timedelta(seconds=30)
    dispatcher = _dispatcher(store, clock, metrics, desk)
    await dispatcher.run_once()  # one: timeout (retry); two: refused for good
    clock.now += timedelta(minutes=10)
    await dispatcher.run_once()  # one: sent
    found = samples(metrics)
    assert value(found, "monitor_delivery_attempts_total", channel="desk", result="retry") == 1
    assert value(found, "monitor_delivery_attempts_total", channel="desk", result="failed") == 1
    assert value(found, "monitor_delivery_attempts_total", channel="desk", result="sent") == 1
    assert value(found, "monitor_delivery_retries_total", channel="desk") == 1
    assert value(found, "monitor_alerts_total", channel="desk", outcome="sent") == 1
    assert value(found, "monitor_alerts_total", channel="desk", outcome="failed") == 1
    # Seen at T0 (the seed), undated, sent 10.5 min later: the 900 s bucket, not the 600 s one.
    assert value(found, "monitor_alert_latency_seconds_count", channel="desk") == 1
    assert value(found, "monitor_alert_latency_seconds_sum", channel="desk") == 630
    assert value(found, "monitor_alert_latency_seconds_bucket", channel="desk", le="600.0") == 0
    assert value(found, "monitor_alert_latency_seconds_bucket", channel="desk", le="900.0") == 1


async def test_throttles_held_channels_and_refusing_targets_are_counted(store: Store) -> None:
    await seed(store, ["one"], ("slow", "broken", "chats"), {"chats": ("c1", "c2")})
    slow = ScriptedChannel("slow", [DeliveryError("429", retry_after=30)])
    broken = ScriptedChannel("broken", [ChannelError("token revoked")])
    chats = ChatChannel("chats", {"c1": [TargetError("bot blocked")]})
    clock, metrics = Clock(), Metrics(process=False)
    await _dispatcher(store, clock, metrics, slow, broken, chats).run_once()
    found = samples(metrics)

    def attempts(channel: str, result: str) -> float:
        return value(found, "monitor_delivery_attempts_total", channel=channel, result=result)

    assert attempts("slow", "throttled") == 1
    assert value(found, "monitor_delivery_retries_total", channel="slow") == 1
    assert attempts("broken", "held") == 1
    assert value(found, "monitor_delivery_retries_total", channel="broken") == 0
    assert attempts("chats", "failed") == 1  # c1 refuses
    assert attempts("chats", "sent") == 1  # c2 takes it
    assert value(found, "monitor_alerts_total", channel="chats", outcome="failed") == 1
    assert value(found, "monitor_alerts_total", channel="chats", outcome="sent") == 1
