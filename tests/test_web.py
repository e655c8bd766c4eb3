"""The HTTP endpoint over real HTTP on 127.0.0.1, against a running daemon (a `Supervisor`, as
`monitor run` runs it): a real feed server, a real SQLite file, a jsonl channel, httpx as the
client, and the metrics read back with prometheus_client's own parser.

Every wait watches state (a file, a counter, an answer) and ends as soon as it holds; the
timeout is a safety net, never an assertion about speed. Feeds poll every hour: after the first
poll at start, each poll is made due explicitly (`poll_now`), so counts are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor import __version__, cli
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.models import HttpSettings
from monitor.redact import safe_dsn, safe_url
from monitor.reload import Supervisor
from monitor.store import SQLiteStore, open_store
from monitor.web import Response, Site, WebServer, parse_address
from tests.builders import rss, write_config
from tests.fakebot import FakeBot
from tests.feedserver import FeedServer

PATIENCE = 45.0
WIRE = [("w1", "Ceasefire talks open in Geneva"), ("w2", "Sanctions on steel eased")]
EPHEMERAL = HttpSettings("127.0.0.1", 0)


# --- helpers -----------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    give_up = time.monotonic() + PATIENCE
    while not await check():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def wire_config(path: Path, server: FeedServer, more: str = "") -> Path:
    return write_config(
        path,
        f"""
state: state.db
feeds:
  - {{name: wire, url: '{server.url("/wire.xml")}', interval: 1h}}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - {{name: talks, any: [talks], notify: [out]}}
  - {{name: steel, any: [steel], notify: [out]}}
{more}
""",
    )


@asynccontextmanager
async def serving(
    path: Path, http: HttpSettings | None = EPHEMERAL, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Supervisor, httpx.AsyncClient]]:
    """`path`'s config running under a Supervisor with its endpoint on a free port, and an
    HTTP client for it; stopped (its errors raised) at the end."""
    stop = asyncio.Event()
    supervisor = Supervisor(load_config(path, env=env), stop, http=http)
    supervisor.site.feeds_every = 0.0  # read the feeds' health at every scrape
    supervisor.site.cache_for = 0.0  # every request computes its answer
    task = asyncio.create_task(supervisor.run())
    try:
        await until(_listening(supervisor, task), "the endpoint to listen")
        assert supervisor.web is not None
        base = f"http://127.0.0.1:{supervisor.web.port}"
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=PATIENCE) as client:
            yield supervisor, client
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=PATIENCE)


def _listening(supervisor: Supervisor, task: asyncio.Task[None]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        if task.done():
            task.result()  # raises what stopped it
            raise AssertionError("the supervisor stopped")
        return supervisor.web is not None and supervisor.web.port != 0

    return check


def ready(client: httpx.AsyncClient) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await client.get("/readyz")).status_code == 200

    return check


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def alerts(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["title"] for line in path.read_text(encoding="utf-8").splitlines()]


async def poll_now(path: Path, *names: str) -> None:
    """Make feeds due now from beside the daemon, as `monitor feeds --retry` does."""
    async with open_store(load_config(path).state, shared=True) as store:
        await store.revive_feeds(names, datetime.now(UTC))


async def raw(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()  # all of the request there is
        await writer.drain()
        return await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        writer.close()
        await writer.wait_closed()


# --- the endpoints follow a running daemon -----------------------------------------------------


async def test_counters_move_as_a_feed_is_polled_and_an_alert_delivered(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(WIRE))
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    async with serving(path) as (_, client):
        health = await client.get("/healthz")
        assert (health.status_code, health.text) == (200, "ok\n")
        await until(ready(client), "/readyz to answer 200")

        async def seeded() -> bool:
            return value(await scrape(client), "monitor_items_new_total", feed="wire") == 2

        await until(seeded, "the first poll to be counted")
        before = await scrape(client)
        assert value(before, "monitor_polls_total", feed="wire", outcome="ok") == 1
        assert value(before, "monitor_http_responses_total", feed="wire", **{"class": "2xx"}) == 1
        assert value(before, "monitor_rule_matches_total", rule="talks") == 0  # seeded, not new
        assert value(before, "monitor_deliveries_total", channel="out", outcome="sent") == 0
        assert value(before, "monitor_build_info", version=__version__) == 1
        assert value(before, "monitor_ready") == 1

        # A new story: polled again at once, matched, queued, delivered.
        feed_server.set("/wire.xml", rss([("w3", "Border talks stalled"), *WIRE]))
        await poll_now(path, "wire")
        await until(lambda: asyncio.sleep(0, alerts(tmp_path / "alerts.jsonl") != []), "the alert")

        async def delivered() -> bool:
            samples = await scrape(client)
            return value(samples, "monitor_deliveries_total", channel="out", outcome="sent") == 1

        await until(delivered, "the delivery to be counted")
        after = await scrape(client)

    assert alerts(tmp_path / "alerts.jsonl") == ["Border talks stalled"]
    assert value(after, "monitor_polls_total", feed="wire", outcome="ok") == 2
    assert value(after, "monitor_http_responses_total", feed="wire", **{"class": "2xx"}) == 2
    assert value(after, "monitor_items_new_total", feed="wire") == 3
    assert value(after, "monitor_rule_matches_total", rule="talks") == 1
    assert value(after, "monitor_rule_matches_total", rule="steel") == 0
    assert value(after, "monitor_deliveries_total", channel="out", outcome="queued") == 1
    assert value(after, "monitor_delivery_attempts_total", channel="out", outcome="sent") == 1
    assert value(after, "monitor_delivery_retries_total", channel="out") == 0
    assert value(after, "monitor_alert_latency_seconds_count", channel="out") == 1
    assert value(after, "monitor_alert_delivery_seconds_count", channel="out") == 1
    assert value(after, "monitor_poll_duration_seconds_count", outcome="ok") == 2
    assert value(after, "monitor_feed_poll_seconds_total", feed="wire") > 0
    # Read from the store at scrape time.
    assert value(after, "monitor_outbox_pending", channel="out") == 0
    assert value(after, "monitor_outbox_oldest_pending_age_seconds", channel="out") == 0
    assert value(after, "monitor_outbox_oldest_due_age_seconds", channel="out") == 0
    assert value(after, "monitor_channel_paused", channel="out") == 0
    assert value(after, "monitor_channel_blocked_targets", channel="out") == 0
    assert value(after, "monitor_feeds", health="ok") == 1
    assert value(after, "monitor_store_errors_total") == 0
    # No label grows with URLs: feeds, rules and channels by their configured names only.
    feeds = {dict(labels).get("feed") for (_, labels) in after} - {None}
    assert feeds == {"wire"}


async def test_status_lists_feeds_rules_and_channels(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(WIRE))
    feed_server.set("/gone.xml", "gone", status=410)
    more = "  - {name: nothing, any: [zzz], notify: [out]}"
    path = wire_config(tmp_path / "monitor.yaml", feed_server, more)
    text = path.read_text(encoding="utf-8").replace(
        "feeds:\n",
        f"feeds:\n  - {{name: gone, url: '{feed_server.url('/gone.xml')}', interval: 1h}}\n",
    )
    path.write_text(text, encoding="utf-8")
    async with serving(path) as (_, client):

        async def polled() -> bool:
            samples = await scrape(client)
            return (
                value(samples, "monitor_polls_total", feed="wire", outcome="ok") == 1
                and value(samples, "monitor_polls_total", feed="gone", outcome="http_error") == 1
            )

        await until(polled, "both feeds to be polled")
        feed_server.set("/wire.xml", rss([("w3", "Steel talks resume"), *WIRE]))
        await poll_now(path, "wire")
        await until(lambda: asyncio.sleep(0, len(alerts(tmp_path / "alerts.jsonl")) == 1), "alert")

        async def sent() -> bool:
            status = (await client.get("/status")).json()
            return bool(status.get("channels", [{}])[0].get("sent") == 1)

        await until(sent, "/status to show the delivery")
        response = await client.get("/status")
        metrics = await scrape(client)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    status: dict[str, Any] = response.json()
    assert status["version"] == __version__
    assert status["uptime_seconds"] >= 0
    assert status["ready"] is True
    assert set(status["checks"]) == {"config", "scheduler", "store"}
    assert status["config"]["state"] == f"sqlite://{tmp_path / 'state.db'}"
    feeds = {f["name"]: f for f in status["feeds"]}
    assert list(feeds) == ["gone", "wire"]  # config order
    assert feeds["wire"]["health"] == "ok"
    assert feeds["wire"]["items_seen"] == 3
    assert feeds["wire"]["polls"] == {"ok": 2}
    assert feeds["gone"]["health"] == "dead"  # 410 Gone
    assert feeds["gone"]["last_error"] == "HTTP 410"
    assert feeds["gone"]["next_poll_at"] is None
    assert value(metrics, "monitor_http_responses_total", feed="gone", **{"class": "4xx"}) == 1
    assert value(metrics, "monitor_feeds", health="dead") == 1
    rules = {r["name"]: r for r in status["rules"]}
    assert {n: r["matches"] for n, r in rules.items()} == {"talks": 1, "steel": 1, "nothing": 0}
    assert rules["talks"]["notify"] == ["out"]
    assert "since this process started" in status["rules_note"]
    [channel] = status["channels"]
    assert channel["name"] == "out"
    assert channel["type"] == "jsonl"
    assert (channel["pending"], channel["sent"], channel["failed"]) == (0, 1, 0)
    assert channel["oldest_pending"] is None
    assert channel["paused"] is None
    assert channel["since_start"] == {"queued": 1, "sent": 1, "failed": 0}


async def test_no_secret_reaches_any_endpoint(tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.set("/wire.xml", rss(WIRE))
    with FakeBot() as bot:
        bot.fail("sendMessage", status=403, description="Forbidden: bot was blocked by the user")
        url = feed_server.url("/wire.xml").replace("http://", "http://reader:pa55word-xyz@")
        path = write_config(
            tmp_path / "monitor.yaml",
            f"""
state: state.db
feeds:
  - url: '{url}?api_key=${{FEED_KEY}}&edition=world&token=literal-token-abc'
    interval: 1h
    first_fetch: {{backfill: 1}}
channels:
  desk:
    type: telegram
    token: ${{BOT_TOKEN}}
    chat_id: 42
    api_url: {bot.api_url}
rules:
  - {{name: talks, any: [talks], notify: [desk]}}
""",
        )
        secrets = {"pa55word-xyz", "feed-key-0123456789", "literal-token-abc", bot.token}
        env = {"FEED_KEY": "feed-key-0123456789", "BOT_TOKEN": bot.token}
        async with serving(path, env=env) as (_, client):

            async def refused() -> bool:
                status = (await client.get("/status")).json()
                return bool(status.get("channels", [{}])[0].get("failed") == 1)

            await until(refused, "the blocked chat's delivery to fail")
            bodies = [(await client.get(p)).text for p in ("/status", "/readyz", "/metrics")]
    status = json.loads(bodies[0])
    [feed] = status["feeds"]
    assert feed["url"].startswith("http://127.0.0.1:")
    assert feed["name"] == feed["url"]  # named by its URL in the config, shown without secrets
    assert "api_key=%3Credacted%3E" in feed["url"] or "api_key=<redacted>" in feed["url"]
    assert "edition=world" in feed["url"]
    assert status["channels"][0]["blocked_targets"]  # the reason is shown, without the token
    for body in bodies:
        for secret in secrets:
            assert secret not in body


async def test_a_failing_store_fails_readiness_with_the_reason_until_it_recovers(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """BAD-INPUTS S06: a state file that refuses writes (read-only, as a disk remounted
    read-only or chmod'ed does; `query_only` makes every write fail with SQLITE_READONLY, also
    as root) stops the daemon advancing, and /readyz says so; once writes work, it is ready."""
    feed_server.set("/wire.xml", rss(WIRE))
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    async with serving(path) as (supervisor, client):
        await until(ready(client), "ready")
        daemon = supervisor.site.daemon
        assert daemon is not None
        store = daemon.store
        assert isinstance(store, SQLiteStore)

        async def seeded() -> bool:
            return (
                value(await scrape(client), "monitor_polls_total", feed="wire", outcome="ok") == 1
            )

        await until(seeded, "the first poll")
        await store._run(lambda c: c.execute("PRAGMA query_only = ON"))
        await poll_now(path, "wire")  # another connection: due now, the claim must write

        async def unready() -> bool:
            return (await client.get("/readyz")).status_code == 503

        await until(unready, "/readyz to answer 503")
        response = await client.get("/readyz")
        body = response.json()
        assert body["ready"] is False
        assert body["checks"]["store"]["ok"] is False
        assert "read-only" in body["checks"]["store"]["detail"]
        assert body["checks"]["config"]["ok"] is True
        assert (await client.get("/healthz")).status_code == 200  # alive all the same
        samples = await scrape(client)
        assert value(samples, "monitor_ready") == 0
        assert value(samples, "monitor_store_errors_total") >= 1
        status = (await client.get("/status")).json()
        assert status["ready"] is False

        await store._run(lambda c: c.execute("PRAGMA query_only = OFF"))
        await until(ready(client), "/readyz to answer 200 again")
        await until(seeded_twice(client), "the poll the failure held back")


def memory_config(path: Path, server: FeedServer) -> Path:
    wire_config(path, server)
    path.write_text(
        path.read_text(encoding="utf-8").replace("state: state.db", 'state: "memory:"'),
        encoding="utf-8",
    )
    return path


async def test_a_closed_store_fails_readiness(tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.set("/wire.xml", rss(WIRE))
    path = memory_config(tmp_path / "monitor.yaml", feed_server)
    async with serving(path) as (supervisor, client):
        await until(ready(client), "ready")
        daemon = supervisor.site.daemon
        assert daemon is not None
        await daemon.store.close()  # every call now fails with StoreError
        try:
            response = await client.get("/readyz")
            status = (await client.get("/status")).json()
            metrics = await client.get("/metrics")
        finally:
            await daemon.store.open()
    assert response.status_code == 503
    assert response.json()["checks"]["store"] == {"ok": False, "detail": "the store is not open"}
    assert status["ready"] is False
    assert status["feeds"][0]["health"] == "unknown"  # its state could not be read
    assert "pending" not in status["channels"][0]
    assert metrics.status_code == 200  # what the process knows, still served


def seeded_twice(client: httpx.AsyncClient) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        samples = await scrape(client)
        # Unchanged since the first poll: the server answers 304.
        return value(samples, "monitor_polls_total", feed="wire", outcome="not_modified") == 1

    return check


async def test_the_endpoint_survives_a_reload_and_shows_the_new_config(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(WIRE))
    feed_server.set("/extra.xml", rss([("e1", "Markets calm")]))
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    async with serving(path) as (supervisor, client):
        await until(ready(client), "ready")
        port = supervisor.web.port if supervisor.web else 0
        text = path.read_text(encoding="utf-8").replace(
            "feeds:\n",
            f"feeds:\n  - {{name: extra, url: '{feed_server.url('/extra.xml')}', interval: 1h}}\n",
        )
        path.write_text(text.replace("{name: steel", "{name: metal"), encoding="utf-8")
        supervisor.request_reload()

        async def reloaded() -> bool:
            status = (await client.get("/status")).json()
            return [f["name"] for f in status.get("feeds", [])] == ["extra", "wire"]

        await until(reloaded, "/status to show the new config")
        await until(ready(client), "ready after the reload")
        assert supervisor.site.handover_since is None  # over: the new config claims feeds
        status = (await client.get("/status")).json()
        samples = await scrape(client)
        assert supervisor.web is not None
        assert supervisor.web.port == port
    assert status["config"]["reloads"] == 1
    assert [r["name"] for r in status["rules"]] == ["talks", "metal"]
    assert value(samples, "monitor_config_reloads_total", outcome="applied") == 1
    # The removed rule's series went with it; the new one starts at 0.
    assert ("monitor_rule_matches_total", (("rule", "steel"),)) not in samples
    assert ("monitor_rule_matches_total", (("rule", "metal"),)) in samples


# --- HTTP itself -------------------------------------------------------------------------------


async def test_unknown_paths_other_methods_and_bad_requests(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(WIRE))
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    async with serving(path) as (supervisor, client):
        assert supervisor.web is not None
        port = supervisor.web.port
        missing = await client.get("/admin")
        assert missing.status_code == 404
        posted = await client.post("/metrics", content=b"x=1")
        assert posted.status_code == 405
        assert posted.headers["allow"] == "GET, HEAD"
        head = await client.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) > 0
        assert (await client.get("/healthz?verbose=1")).status_code == 200

        garbage = await raw(port, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        huge = await raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000)
        assert huge.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert await raw(port, b"") == b""  # connected, closed, said nothing

        # A client that connects and never sends holds no one else up.
        _, silent = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert (await client.get("/healthz")).status_code == 200
            plain = await raw(port, b"GET /healthz HTTP/1.0\r\n\r\n")
            assert plain.startswith(b"HTTP/1.1 200 ")
            assert b"connection: close" in plain.lower()
        finally:
            silent.close()
            await silent.wait_closed()


async def test_readyz_is_503_until_a_config_runs(tmp_path: Path) -> None:
    """Before the daemon has started (channels opening, bot tokens checked) the endpoint
    answers, and says it is not ready."""
    async with WebServer(EPHEMERAL, Site(Metrics(process=False))) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
            assert (await client.get("/healthz")).status_code == 200
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["checks"]["config"]["detail"].startswith("no config running")
            status = (await client.get("/status")).json()
            assert status["ready"] is False
            assert "feeds" not in status
            metrics = await scrape(client)
            assert value(metrics, "monitor_ready") == 0


async def test_a_port_in_use_is_a_config_error_at_start(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = Supervisor(
            load_config(path), asyncio.Event(), http=HttpSettings("127.0.0.1", port)
        )
        with pytest.raises(ConfigError) as caught:
            await supervisor.run()
    assert str(caught.value) == (
        f"--http: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another process listens there)"
    )
    assert not (tmp_path / "state.db").exists()  # refused before the store was opened


def test_monitor_run_exits_2_when_its_port_is_taken(
    tmp_path: Path, feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path.write_text(
            path.read_text(encoding="utf-8") + f"http: {{host: 127.0.0.1, port: {port}}}\n",
            encoding="utf-8",
        )
        assert cli.main(["run", "-c", str(path)]) == cli.INVALID
    err = capsys.readouterr().err
    assert f"http: cannot listen on 127.0.0.1:{port}: address already in use" in err
    assert "Traceback" not in err


def test_monitor_run_refuses_a_malformed_http_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--http", "localhost"])
    assert exited.value.code == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


# --- addresses, URLs, config -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8080", HttpSettings("0.0.0.0", 8080)),
        ("127.0.0.1:0", HttpSettings("127.0.0.1", 0)),
        ("[::1]:9000", HttpSettings("::1", 9000)),
        (":9100", HttpSettings("127.0.0.1", 9100)),
        ("monitor.internal:80", HttpSettings("monitor.internal", 80)),
    ],
)
def test_parse_address(text: str, expected: HttpSettings) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["8080", "host:", "host:port", "h:70000", "bad host:80", ":-1"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|not an IP address|empty address"):
        parse_address(text)


def test_safe_url_and_dsn_drop_credentials() -> None:
    assert safe_url("https://u:p@feeds.example:8443/a.xml?token=t0k&x=1#frag") == (
        "https://feeds.example:8443/a.xml?token=<redacted>&x=1"
    )
    assert safe_url("http://[::1]/f.xml") == "http://[::1]/f.xml"
    assert safe_dsn("postgresql://monitor:s3cret@db:5432/news?sslpassword=x") == (
        "postgresql://db:5432/news"
    )
    assert safe_dsn("sqlite:///var/lib/monitor/state.db") == "sqlite:///var/lib/monitor/state.db"
    assert safe_dsn("memory:") == "memory:"


def test_config_http_key(tmp_path: Path) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text("feeds: []\n", encoding="utf-8")
    assert load_config(path).http is None  # off unless asked for
    path.write_text("feeds: []\nhttp: {}\n", encoding="utf-8")
    assert load_config(path).http == HttpSettings("127.0.0.1", 8080)
    path.write_text("feeds: []\nhttp: {host: 0.0.0.0, port: 9100}\n", encoding="utf-8")
    assert load_config(path).http == HttpSettings("0.0.0.0", 9100)
    path.write_text("feeds: []\nhttp:\n  host: 127.0.0.1\n  port: 65536\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}:4: http.port: must be at most 65535"
    path.write_text("feeds: []\nhttp: {host: 'not a host', prot: 1}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).splitlines() == [
        f"{path}:2: http.host: not an IP address or host name: 'not a host'",
        f"{path}:2: http.prot: unknown key 'prot'; did you mean 'port'?",
    ]


# --- secrets, readiness, load ------------------------------------------------------------------


async def test_short_and_quoted_secrets_keep_the_json_valid_and_hidden(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """Strings are redacted before serialising: a `${VAR}` holding a quote or a backslash is
    found (JSON would escape it out of reach), and one shorter than 6 characters is no secret
    (replacing `587` in the text would corrupt numbers)."""
    feed_server.set("/wire.xml", rss(WIRE))
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""
state: state.db
feeds:
  - name: 'wire ${{QUOTED}}'
    url: '{feed_server.url("/wire.xml")}?edition=${{EDITION}}'
    interval: 1h
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - {{name: talks, any: [talks], notify: [out]}}
""",
    )
    quoted = 'pa"ss\\word-123'
    env = {"QUOTED": quoted, "EDITION": "587"}
    async with serving(path, env=env) as (_, client):

        async def polled() -> bool:
            samples = await scrape(client)
            return value(samples, "monitor_polls_total", feed="wire <redacted>", outcome="ok") == 1

        await until(polled, "the first poll")
        bodies = {p: (await client.get(p)).text for p in ("/status", "/readyz", "/metrics")}
    status = json.loads(bodies["/status"])
    assert json.loads(bodies["/readyz"])["ready"] is True
    [feed] = status["feeds"]
    assert feed["name"] == "wire <redacted>"
    assert feed["url"].endswith("/wire.xml?edition=587")
    assert isinstance(status["uptime_seconds"], float)
    for body in bodies.values():
        assert quoted not in body
        assert json.dumps(quoted)[1:-1] not in body  # nor in its escaped form


async def test_a_store_that_does_not_answer_fails_readiness(
    tmp_path: Path, feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed_server.set("/wire.xml", rss(WIRE))
    path = memory_config(tmp_path / "monitor.yaml", feed_server)
    async with serving(path) as (supervisor, client):
        await until(ready(client), "ready")
        daemon = supervisor.site.daemon
        assert daemon is not None
        before = await scrape(client)

        async def hang(*args: object, **kwargs: object) -> Any:
            await asyncio.Event().wait()  # never set: the store does not answer

        async def crash(*args: object, **kwargs: object) -> Any:
            raise RuntimeError("a bug in the store")

        supervisor.site.store_timeout = 0.1
        monkeypatch.setattr(daemon.store, "outbox_stats", hang)
        monkeypatch.setattr(daemon.store, "feed_states", crash)
        response = await client.get("/readyz")
        status = await client.get("/status")
        after = await scrape(client)
        monkeypatch.undo()
    assert response.status_code == 503
    assert response.json()["checks"]["store"] == {
        "ok": False,
        "detail": "did not answer within 0.1 s",
    }
    # A store helper failing otherwise leaves that part out; the answer is still given.
    assert status.status_code == 200
    assert status.json()["feeds"][0]["health"] == "unknown"
    # The outbox gauges go away rather than freeze at their last values.
    assert ("monitor_outbox_pending", (("channel", "out"),)) in before
    assert ("monitor_outbox_pending", (("channel", "out"),)) not in after
    assert ("monitor_outbox_oldest_pending_age_seconds", (("channel", "out"),)) not in after
    assert value(after, "monitor_ready") == 0
    # Probes and scrapes failing are no store errors of the daemon (they would count each).
    assert value(after, "monitor_store_errors_total") == 0


async def test_store_failures_are_judged_per_operation(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """A claim that completes, even finding nothing due, ends a claim failure; it says nothing
    about another operation's failure, which lasts until that operation succeeds."""
    feed_server.set("/wire.xml", rss(WIRE))
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    async with serving(path) as (supervisor, client):
        await until(ready(client), "ready")
        daemon = supervisor.site.daemon
        assert daemon is not None

        async def seeded() -> bool:
            samples = await scrape(client)
            return value(samples, "monitor_polls_total", feed="wire", outcome="ok") == 1

        await until(seeded, "the first poll (nothing is due for an hour after it)")
        metrics = supervisor.metrics
        metrics.store_failed("claim", "database is locked")
        await until(ready(client), "a claim finding nothing due to end the claim failure")

        # No poll is due for an hour: nothing ends a poll's failure but a poll that works.
        metrics.store_failed("poll", "disk I/O error")
        claims = daemon.scheduler.claims
        await until(
            lambda: asyncio.sleep(0, daemon.scheduler.claims > claims + 1), "claims to go on"
        )
        response = await client.get("/readyz")
        assert response.status_code == 503
        detail = response.json()["checks"]["store"]["detail"]
        assert detail.startswith("poll failing for ")
        assert detail.endswith(": disk I/O error")
        await poll_now(path, "wire")
        await until(ready(client), "ready once a poll is recorded")


async def test_readiness_across_a_hand_over(tmp_path: Path, feed_server: FeedServer) -> None:
    """A reload's new daemon that does not get to claim due feeds is ready for as long as a
    hand-over may take (the stall limit), then not: never "handing over" forever."""
    config = load_config(memory_config(tmp_path / "monitor.yaml", feed_server))
    site = Site(Metrics(process=False))
    site.cache_for = 0.0
    async with (
        Daemon(config, metrics=site.metrics) as daemon,  # started, not running
        WebServer(EPHEMERAL, site) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", trust_env=False) as client,
    ):
        site.daemon = daemon

        async def scheduler() -> tuple[int, dict[str, Any]]:
            response = await client.get("/readyz")
            return response.status_code, response.json()["checks"]["scheduler"]

        assert await scheduler() == (
            503,
            {"ok": False, "detail": "not running (starting or shutting down)"},
        )
        site.handover_since = time.monotonic()
        assert await scheduler() == (
            200,
            {"ok": True, "detail": "handing over to a reloaded config"},
        )
        site.handover_since = time.monotonic() - site.stall - 5  # began past the stall limit
        status, check = await scheduler()
        assert status == 503
        assert check["detail"].startswith("handing over to a reloaded config for ")
        daemon.running, daemon.last_tick = True, time.monotonic()  # its first claim
        status, check = await scheduler()
        assert (status, check["ok"]) == (200, True)
        assert check["detail"].startswith("running, ")
        assert site.handover_since is None
        daemon.running = False


async def test_idle_connections_never_keep_healthz_out() -> None:
    """At the connection cap, the oldest connection still sending its request makes room:
    any client holding connections open cannot fail the liveness probe."""
    site = Site(Metrics(process=False))
    async with WebServer(EPHEMERAL, site, max_connections=4) as server:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
        try:
            await until(lambda: asyncio.sleep(0, server.connections == 4), "4 connections")
            base = f"http://127.0.0.1:{server.port}"
            async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
                health = await client.get("/healthz")
            assert (health.status_code, health.text) == (200, "ok\n")
            assert server.dropped == 1
            # The first idle connection was the one dropped.
            try:
                dropped = await asyncio.wait_for(idle[0][0].read(), PATIENCE)
            except ConnectionResetError:
                dropped = b""
            assert dropped == b""
        finally:
            for _, writer in idle:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()


async def test_a_request_head_sent_too_slowly_gets_no_answer() -> None:
    site = Site(Metrics(process=False))
    async with WebServer(EPHEMERAL, site, head_timeout=0.2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(), PATIENCE)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # dropped at its head timeout, unanswered
            await until(lambda: asyncio.sleep(0, server.connections == 0), "the slot freed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_an_endpoint_that_fails_answers_500(caplog: pytest.LogCaptureFixture) -> None:
    site = Site(Metrics(process=False))

    async def broken() -> Response:
        raise RuntimeError("a bug")

    site._status = broken  # type: ignore[method-assign]

    class Crashing:
        async def respond(self, method: str, path: str) -> Response:
            raise RuntimeError("a bug in the app")

    async with (
        WebServer(EPHEMERAL, site) as server,
        WebServer(EPHEMERAL, Crashing()) as bare,
    ):
        with caplog.at_level(logging.ERROR, logger="monitor.web"):
            status = await raw(server.port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            crashed = await raw(bare.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            healthy = await raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert status.endswith(b"\r\n\r\ninternal error\n")
    assert crashed.startswith(b"HTTP/1.1 500 ")
    assert healthy.startswith(b"HTTP/1.1 200 ")
    assert "answering /status failed" in caplog.text
    assert "answering GET /healthz failed" in caplog.text


async def test_concurrent_requests_share_one_computation_and_reuse_it() -> None:
    site = Site(Metrics(process=False))
    site.cache_for = 3600.0
    calls = 0
    gate = asyncio.Event()
    compute = site._status

    async def counted() -> Response:
        nonlocal calls
        calls += 1
        await gate.wait()
        return await compute()

    site._status = counted  # type: ignore[method-assign]
    async with WebServer(EPHEMERAL, site) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=PATIENCE) as client:
            asking = [asyncio.create_task(client.get("/status")) for _ in range(3)]
            await until(lambda: asyncio.sleep(0, server.connections == 3), "3 requests waiting")
            gate.set()
            answers = await asyncio.gather(*asking)
            again = await client.get("/status")
    assert calls == 1
    assert {a.status_code for a in answers} == {200}
    assert {a.content for a in answers} == {again.content}  # the same uptime: one answer
