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
from monitor.digest import Digester
from monitor.dispatch import Dispatcher
from monitor.errors import ChannelError, DeliveryError, TargetError
from monitor.metrics import Metrics, alert_age, status_class
from monitor.models import Alert, DeliveryPolicy, Match
from monitor.store import SQLiteStore, Store
from monitor.store.protocol import OutboxStat
from tests import test_digest as digests
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
    assert labels_of(found, "monitor_deliveries_total", "channel") == {"out"}
    assert value(found, "monitor_deliveries_total", channel="out", outcome="queued") == 0
    assert ("monitor_deliveries_total", (("channel", "out"), ("outcome", "sent"))) in found
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
    metrics.set_outbox(stats, T0, ["out", "idle"])
    found = samples(metrics)
    assert value(found, "monitor_outbox_pending", channel="out") == 3
    assert value(found, "monitor_outbox_oldest_pending_age_seconds", channel="out") == 300
    assert value(found, "monitor_outbox_pending", channel="removed") == 1  # still waiting
    assert ("monitor_outbox_pending", (("channel", "idle"),)) in found
    assert value(found, "monitor_outbox_oldest_pending_age_seconds", channel="idle") == 0
    metrics.set_outbox([], T0, ["out"])
    assert labels_of(samples(metrics), "monitor_outbox_pending", "channel") == {"out"}
    # Due now: instant channels only (digest, paused, removed ones have no series).
    metrics.set_due({"out": T0 - timedelta(minutes=20), "idle": None}, T0)
    found = samples(metrics)
    assert value(found, "monitor_outbox_oldest_due_age_seconds", channel="out") == 1200
    assert value(found, "monitor_outbox_oldest_due_age_seconds", channel="idle") == 0
    metrics.set_channels(["out", "idle"], ["out"], {"idle": 2})
    found = samples(metrics)
    assert value(found, "monitor_channel_paused", channel="out") == 1
    assert value(found, "monitor_channel_paused", channel="idle") == 0
    assert value(found, "monitor_channel_blocked_targets", channel="idle") == 2
    # The store could not be read: no figures rather than stale ones.
    metrics.clear_outbox()
    found = samples(metrics)
    for name in (
        "monitor_outbox_pending",
        "monitor_outbox_oldest_pending_age_seconds",
        "monitor_outbox_oldest_due_age_seconds",
    ):
        assert labels_of(found, name, "channel") == set()


def test_store_failures_stand_per_operation_and_are_said_once_a_minute() -> None:
    clock = [1000.0]
    metrics = Metrics(process=False)
    metrics.clock = lambda: clock[0]
    assert metrics.store_failed("claim", "disk full")  # news: said
    clock[0] += 1
    assert not metrics.store_failed("claim", "disk full")  # the same, a second later
    assert metrics.store_failed("claim", "read-only")  # another reason: said
    clock[0] += metrics_module.REPEAT_LOG
    assert metrics.store_failed("claim", "read-only")  # still failing a minute on: said again
    assert metrics.store_failed("prune", "disk I/O error")
    assert metrics.store_problem == "claim: read-only; prune: disk I/O error"
    assert metrics.store_failures()["claim"] == ("read-only", 1000.0)  # failing since
    metrics.store_ok("claim")  # a claim works: pruning is still failing
    assert metrics.store_problem == "prune: disk I/O error"
    metrics.store_ok("prune")
    assert metrics.store_problem == ""
    assert metrics.store_failed("claim", "read-only")  # a new failure: said at once
    assert value(samples(metrics), "monitor_store_errors_total") == 6


def test_latency_leaves_out_backfilled_items_and_dates_without_a_time() -> None:
    metrics = Metrics(process=False)
    sent = T0 + timedelta(minutes=1)
    old = Alert("wire", "old", "t", "", "", T0 - timedelta(days=3), T0, ())
    day = Alert("wire", "day", "t", "", "", T0.replace(hour=0), T0, ())
    fresh = Alert("wire", "fresh", "t", "", "", T0 - timedelta(minutes=4), T0, ())
    metrics.backfilled("wire", ["old"])
    metrics.delivered("out", [old, day, fresh], sent)
    found = samples(metrics)
    # From first sight: all three, a minute each.
    assert value(found, "monitor_alert_delivery_seconds_count", channel="out") == 3
    assert value(found, "monitor_alert_delivery_seconds_sum", channel="out") == 180
    # From publication: not the backfilled one; the date-only one from first sight.
    assert value(found, "monitor_alert_latency_seconds_count", channel="out") == 2
    assert value(found, "monitor_alert_latency_seconds_sum", channel="out") == 60 + 300
    assert alert_age(day, sent) == 60.0


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
    feed_server.set("/big.xml", "x" * 5000)
    feeds.append(f"  - {{name: big, url: '{feed_server.url('/big.xml')}', max_size: 1KB}}")
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
        "big": "fetch_error",
    }
    assert {p.feed: p.http_status for p in second.polls} == {
        "ok": 304,
        "five": 500,
        "four": 404,
        "page": 200,
        "hang": None,
        "big": 200,  # answered, then refused: over the size limit
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
        ("big", "2xx"): 2,
    }  # no response from "hang": no class
    # The same outcomes as monitor_polls_total.
    assert value(found, "monitor_poll_duration_seconds_count", outcome="http_error") == 4
    assert value(found, "monitor_poll_duration_seconds_count", outcome="fetch_error") == 4
    assert value(found, "monitor_poll_duration_seconds_count", outcome="parse_error") == 2
    assert value(found, "monitor_poll_duration_seconds_count", outcome="not_modified") == 1
    assert value(found, "monitor_feed_poll_seconds_total", feed="hang") > 0
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
    assert value(found, "monitor_delivery_attempts_total", channel="desk", outcome="retry") == 1
    assert value(found, "monitor_delivery_attempts_total", channel="desk", outcome="failed") == 1
    assert value(found, "monitor_delivery_attempts_total", channel="desk", outcome="sent") == 1
    assert value(found, "monitor_delivery_retries_total", channel="desk") == 1
    assert value(found, "monitor_deliveries_total", channel="desk", outcome="sent") == 1
    assert value(found, "monitor_deliveries_total", channel="desk", outcome="failed") == 1
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

    def attempts(channel: str, outcome: str) -> float:
        return value(found, "monitor_delivery_attempts_total", channel=channel, outcome=outcome)

    assert attempts("slow", "throttled") == 1
    assert value(found, "monitor_delivery_retries_total", channel="slow") == 1
    assert attempts("broken", "held") == 1
    assert value(found, "monitor_delivery_retries_total", channel="broken") == 0
    assert attempts("chats", "failed") == 1  # c1 refuses
    assert attempts("chats", "sent") == 1  # c2 takes it
    assert value(found, "monitor_deliveries_total", channel="chats", outcome="failed") == 1
    assert value(found, "monitor_deliveries_total", channel="chats", outcome="sent") == 1


async def test_a_refused_grouped_message_counts_as_a_retry(store: Store) -> None:
    """Everything in it goes again, one by one: nothing failed."""
    titles = [f"story {n}" for n in range(6)]
    await seed(store, titles, ("desk",), {"desk": ("-100",)})
    refused = DeliveryError("message is too long", permanent=True)
    desk = ChatChannel("desk", {"-100": [refused]}, group_threshold=5)
    metrics = Metrics(process=False)
    await _dispatcher(store, Clock(), metrics, desk).run_once()
    found = samples(metrics)
    assert value(found, "monitor_delivery_attempts_total", channel="desk", outcome="retry") == 1
    assert value(found, "monitor_delivery_attempts_total", channel="desk", outcome="failed") == 0
    assert value(found, "monitor_delivery_attempts_total", channel="desk", outcome="sent") == 6
    assert value(found, "monitor_deliveries_total", channel="desk", outcome="failed") == 0
    assert value(found, "monitor_deliveries_total", channel="desk", outcome="sent") == 6


async def test_digest_sends_retries_and_failures_are_counted(tmp_path: Path) -> None:
    """A digest is one attempt per recipient; its deliveries count one by one."""
    ann, bob = digests.ANN, digests.BOB
    async with SQLiteStore(tmp_path / "digest.db") as store:
        await store.sync_feeds([digests.FEED], digests.EIGHT - digests.DAY)
        await digests.alerts(store, [1, 2], digests.EIGHT - digests.HOUR)
        channel = digests.FakeEmail(
            digests.email_settings(),
            {
                ann: [DeliveryError("451 try later")],
                bob: [DeliveryError("550 no such user", permanent=True)],
            },
        )
        clock = digests.Clock(digests.EIGHT)
        metrics = Metrics(process=False)
        digester = Digester(
            store,
            {"mail": channel},
            digests.BERLIN,
            digests.POLICY,
            clock,
            rng=random.Random(1),
            metrics=metrics,
        )
        await digester.run("mail", clock.now, scheduled=clock.now)
        first = samples(metrics)
        clock.now += digests.HOUR
        [retried] = await digester.retry_due(clock.now)
        assert retried.ok
        found = samples(metrics)

    def attempts(data: Samples, outcome: str) -> float:
        return value(data, "monitor_delivery_attempts_total", channel="mail", outcome=outcome)

    assert (attempts(first, "retry"), attempts(first, "failed"), attempts(first, "sent")) == (
        1,
        1,
        0,
    )
    assert value(first, "monitor_delivery_retries_total", channel="mail") == 2  # Ann's two
    assert value(first, "monitor_deliveries_total", channel="mail", outcome="failed") == 2  # Bob's
    assert attempts(found, "sent") == 1  # Ann's digest, retried
    assert value(found, "monitor_deliveries_total", channel="mail", outcome="sent") == 2
    # Seen an hour before 08:00, sent at 09:00: two hours each, from first sight.
    assert value(found, "monitor_alert_delivery_seconds_count", channel="mail") == 2
    assert value(found, "monitor_alert_delivery_seconds_sum", channel="mail") == 2 * 7200
    assert value(found, "monitor_alert_latency_seconds_count", channel="mail") == 2
