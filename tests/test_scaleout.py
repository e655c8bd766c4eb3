"""Scale-out on PostgreSQL: three real `monitor run` workers share one feed set.

Three worker processes, one PostgreSQL schema of this test's own, a loopback feed server with
300 feeds (every answer held a little, so each worker always has polls in flight) and a jsonl
channel all workers append to. Checked: no feed is fetched twice within one interval, every
expected alert is delivered exactly once; then one worker is killed with SIGKILL, and the
feeds it had claimed are polled by the others once its leases expire, while all the other
feeds keep being polled meanwhile. Runs when MONITOR_TEST_POSTGRES holds a DSN.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.builders import rss, write_config
from tests.faultrun import DaemonProcess
from tests.feedserver import CLIENT_GONE, FeedServer, stopping

DSN = os.environ.get("MONITOR_TEST_POSTGRES", "")
pytestmark = [
    pytest.mark.skipif(not DSN, reason="set MONITOR_TEST_POSTGRES to run the scale-out test"),
    pytest.mark.slow,
]

FEEDS = 300
WORKERS = 3
#: Seconds between polls of a feed (the shortest the config allows).
INTERVAL = 10.0
#: Seconds every feed answer is held: longer than the daemon's 1 s tick, so every worker
#: always holds claims, and a killed one leaves some behind.
HOLD = 1.2
#: The fetch deadline (`timeout.total`); the scheduler's lease is 2 × deadline + 60 s.
DEADLINE = 5.0
LEASE = 2 * DEADLINE + 60


class Feeds:
    """Feeds f000…f299; each answer is held `HOLD` s, and logged (time.time()) by feed."""

    def __init__(self, server: FeedServer) -> None:
        self.names = [f"f{i:03}" for i in range(FEEDS)]
        self.fetches: dict[str, list[float]] = defaultdict(list)
        self._entries: dict[str, list[tuple[str, str]]] = {n: [] for n in self.names}
        self._lock = threading.Lock()
        for name in self.names:
            server.handle(f"/{name}.xml", self._handler(name))

    def add(self, name: str, guid: str, title: str) -> None:
        with self._lock:
            self._entries[name].insert(0, (guid, title))

    def fetched_since(self, since: float) -> set[str]:
        with self._lock:
            return {n for n, times in self.fetches.items() if any(t >= since for t in times)}

    def gaps(self) -> dict[str, float]:
        """The shortest time between two fetches of each feed fetched twice or more."""
        with self._lock:
            return {
                n: min(b - a for a, b in itertools.pairwise(times))
                for n, times in self.fetches.items()
                if len(times) > 1
            }

    def _handler(self, name: str) -> Callable[[BaseHTTPRequestHandler], None]:
        def handler(h: BaseHTTPRequestHandler) -> None:
            with self._lock:
                self.fetches[name].append(time.time())
                entries = list(self._entries[name])
            etag = f'"{name}.{len(entries)}"'
            if stopping(h).wait(HOLD):
                h.close_connection = True
                return
            try:
                if h.headers.get("If-None-Match") == etag:
                    h.send_response(304)
                    h.send_header("ETag", etag)
                    h.end_headers()
                    return
                body = rss(entries, title=f"Feed {name}").encode()
                h.send_response(200)
                h.send_header("Content-Type", "application/rss+xml; charset=utf-8")
                h.send_header("ETag", etag)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
            except CLIENT_GONE:  # a worker killed mid-fetch
                h.close_connection = True

        return handler


def query(schema: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(DSN, autocommit=True, options=f"-csearch_path={schema}") as conn:
        return conn.execute(sql, params or None).fetchall()


def wait_until(
    what: Callable[[], bool], label: str, timeout: float, workers: list[DaemonProcess]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        for worker in workers:
            if not worker.alive():
                pytest.fail(f"a worker exited while waiting for {label}:\n{worker.tail()}")
        time.sleep(0.25)
    logs = "\n---\n".join(w.tail(15) for w in workers)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {label}\n{logs}")


def recent_polls(worker: DaemonProcess, seconds: float = 3.0) -> int:
    """Polls the worker finished in the last `seconds` (its debug log has one line each)."""
    since = time.time() - seconds
    return sum(
        1
        for r in worker.records()
        if r.get("logger") == "monitor.poll"
        and datetime.fromisoformat(str(r["time"])).timestamp() >= since
    )


def delivered(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(json.loads(line)["item"] for line in path.read_text().splitlines() if line)


@pytest.fixture
def schema() -> Iterator[str]:
    import psycopg
    from psycopg import sql

    name = f"scaleout_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def test_three_workers_share_the_feeds_and_survive_a_killed_one(
    tmp_path: Path, schema: str
) -> None:
    with FeedServer() as server:
        feeds = Feeds(server)
        config = tmp_path / "monitor.yaml"
        lines = "\n".join(
            f"  - {{name: {n}, url: '{server.url(f'/{n}.xml')}'}}" for n in feeds.names
        )
        write_config(
            config,
            f"""\
state: '{DSN}?schema={schema}'
timezone: UTC
defaults: {{interval: {INTERVAL:g}s, timeout: {{total: {DEADLINE:g}s}}}}
poll: {{concurrency: 30, per_host: 30, host_interval: 0, jitter: 0.1}}
delivery: {{retry_base: 1s, retry_cap: 5s}}
feeds:
{lines}
channels:
  out: {{type: jsonl, path: {tmp_path / "alerts.jsonl"}}}
rules:
  - name: talks
    query: 'talks AND NOT sport'
""",
        )
        workers = [
            DaemonProcess(config, tmp_path / f"worker{i}.log", log_level="debug")
            for i in range(WORKERS)
        ]
        try:
            _run(feeds, schema, workers, tmp_path / "alerts.jsonl")
        finally:
            for worker in workers:
                worker.close()


def _run(feeds: Feeds, schema: str, workers: list[DaemonProcess], alerts: Path) -> None:
    def all_seeded() -> bool:
        import psycopg

        try:  # the first worker to start creates the tables
            return query(schema, "SELECT count(*) FROM feeds WHERE seeded") == [(FEEDS,)]
        except psycopg.errors.UndefinedTable:
            return False

    wait_until(all_seeded, "every feed seeded", 120, workers)

    # New stories: every tenth feed gets a matching one, every seventh one that is not.
    expected = {f"id:story-{n}" for n in feeds.names[::10]}
    for name in feeds.names[::10]:
        feeds.add(name, f"story-{name}", "talks resume in Geneva")
    for name in feeds.names[::7]:
        feeds.add(name, f"other-{name}", "sport: talks of a transfer")
    wait_until(lambda: set(delivered(alerts)) >= expected, "every alert delivered", 90, workers)
    time.sleep(INTERVAL + 2)  # one more round: a second delivery would show now
    counts = delivered(alerts)
    assert set(counts) == expected
    assert [item for item, n in counts.items() if n > 1] == []

    # One worker dies: the busiest (workers claim at their own 1 s ticks, so their shares
    # differ). The feeds it had claimed are held by their leases until they expire, then the
    # others poll them; all the other feeds go on being polled meanwhile.
    victim = max(workers, key=recent_polls)
    survivors = [w for w in workers if w is not victim]
    [(killed_at_db,)] = query(schema, "SELECT now()")
    killed_at = time.time()
    victim.kill()
    time.sleep(DEADLINE + 1.5)  # the survivors' polls claimed before the kill are finished
    held = {
        str(name)
        for (name,) in query(
            schema,
            "SELECT name FROM feeds WHERE lease_until > now()"
            " AND lease_until <= %s + make_interval(secs => %s)",
            killed_at_db,
            LEASE,
        )
    }
    assert held, "the killed worker held no claims: the test proves nothing"
    others = set(feeds.names) - held
    wait_until(
        lambda: feeds.fetched_since(killed_at + 1) >= others,
        "the other feeds polled on after the kill",
        3 * INTERVAL,
        survivors,
    )
    assert not feeds.fetched_since(killed_at + 1) & held  # still held by the dead worker
    wait_until(
        lambda: feeds.fetched_since(killed_at + LEASE - 2) >= held,
        "the killed worker's feeds polled after its leases expired",
        LEASE + 3 * INTERVAL,
        survivors,
    )

    # Over the whole run, no feed was fetched twice within one interval (jitter is 10%).
    gaps = feeds.gaps()
    assert len(gaps) == FEEDS
    assert {n: round(g, 2) for n, g in gaps.items() if g < 0.8 * INTERVAL} == {}
    for worker in survivors:
        assert worker.terminate() == 0, worker.tail()
    assert [n for n in delivered(alerts).values() if n > 1] == []
