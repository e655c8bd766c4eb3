"""End to end through email: feed server -> daemon -> a real SMTP server (aiosmtpd) on
loopback, instant and as a digest caught up after a missed schedule, across real restarts
(the daemon closed and a new one started on the same state file)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.digest import LEASE
from tests.builders import rss, write_config
from tests.feedserver import FeedServer
from tests.smtpserver import SmtpServer


def config(tmp_path: Path, feeds: FeedServer, smtp: SmtpServer, digest: str = "") -> Path:
    return write_config(
        tmp_path / "monitor.yaml",
        f"""
state: state.db
timezone: Europe/Berlin
feeds:
  - name: wire
    url: {feeds.url("/wire.xml")}
channels:
  analysts:
    type: email
    smtp: {{host: 127.0.0.1, port: {smtp.port}, security: none}}
    from: alerts@monitor.example
    to: [a@desk.example, b@desk.example]
    subject_prefix: "[monitor]"
    {digest}
rules:
  - name: talks
    any: [talks]
""",
    )


BACKLOG = [("g1", "Talks open in Geneva"), ("g2", "Weather: rain")]
NEW = [("g3", "Talks stall\r\nBcc: evil@example.com", "Envoys leave AT&T & go"), *BACKLOG]


async def test_each_recipient_gets_one_safe_multipart_email(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(BACKLOG), validators=False)
    with SmtpServer() as smtp:
        async with Daemon(load_config(config(tmp_path, feed_server, smtp))) as daemon:
            await daemon.once()
            feed_server.set("/wire.xml", rss(NEW), validators=False)
            report = await daemon.once()
            assert report.dispatch.sent == 2
            assert (await daemon.once()).dispatch.sent == 0
        received = list(smtp.received)
    assert sorted(r.rcpt_tos[0] for r in received) == ["a@desk.example", "b@desk.example"]
    for r in received:
        message = r.message
        assert message["Bcc"] is None
        assert message["Subject"].startswith("[monitor] Talks stall")
        assert "\n" not in message["Subject"]
        assert message["Message-ID"]
        assert message["Date"]
        html = message.get_body(("html",)).get_content()
        text = message.get_body(("plain",)).get_content()
        assert "AT&amp;T &amp; go" in html
        assert "Envoys leave AT&T & go" in text


async def start_and_stop(path: Path) -> None:
    """A daemon's whole start-up path on `path` (catch-up of missed digests included), then
    its shutdown: `run` with the stop already requested."""
    stop = asyncio.Event()
    stop.set()
    async with Daemon(load_config(path)) as daemon:
        await daemon.run(stop)


def digests_to(smtp: SmtpServer, recipient: str) -> list[str]:
    """The plain text of each digest `recipient` got, in order."""
    return [
        r.message.get_body(("plain",)).get_content()
        for r in smtp.received
        if r.rcpt_tos == (recipient,)
    ]


async def test_a_missed_digest_is_sent_once_after_a_restart(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(BACKLOG), validators=False)
    with SmtpServer() as smtp:
        path = config(tmp_path, feed_server, smtp, digest="digest: hourly")
        async with Daemon(load_config(path)) as daemon:
            await daemon.once()
            feed_server.set("/wire.xml", rss(NEW), validators=False)
            report = await daemon.once()
            assert report.dispatch.sent == 0  # digest channels wait for their schedule
            assert smtp.received == []
            # Its last digest was two hours ago, and the process dies in the middle of the
            # next one: its deliveries are claimed, nothing is marked.
            now = datetime.now(UTC)
            await daemon.store.set_last_digest("analysts", now - timedelta(hours=2))
            claimed = await daemon.store.claim_deliveries("analysts", now, 100, LEASE)
            assert len(claimed) == 2
        # Down over the last full hour. The next start sends the missed digest...
        await start_and_stop(path)
        assert sorted(r.rcpt_tos[0] for r in smtp.received) == ["a@desk.example", "b@desk.example"]
        # ...and the one after that does not send it again.
        await start_and_stop(path)
        assert len(smtp.received) == 2
        # A new story goes out with the next scheduled digest, alone.
        async with Daemon(load_config(path)) as daemon:
            newer = rss([("g4", "Talks resume in Oslo"), *NEW])
            feed_server.set("/wire.xml", newer, validators=False)
            await daemon.once()
            last = await daemon.store.last_digest("analysts")
            assert last is not None
            slot = daemon.digester.next_run("analysts", last)
            next_digest = await daemon.digester.run("analysts", datetime.now(UTC), scheduled=slot)
            assert next_digest.ok
        received = list(smtp.received)
    for recipient in ("a@desk.example", "b@desk.example"):
        first, second = digests_to(smtp, recipient)
        assert "Talks stall" in first
        assert "Talks resume in Oslo" not in first
        assert "Talks resume in Oslo" in second
        assert "Talks stall" not in second  # never in two digests
    assert all("Digest" in r.message["Subject"] for r in received)
    assert len({r.message["Message-ID"] for r in received}) == 4
