"""End to end through email: feed server -> daemon -> a real SMTP server (aiosmtpd) on
loopback, instant and as a digest caught up after a missed schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.config import load_config
from monitor.daemon import Daemon
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
            # The daemon "was down" over the last full hour: its digest was missed.
            two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
            await daemon.store.set_last_digest("analysts", two_hours_ago)
            first = await daemon.digester.catch_up(datetime.now(UTC))
            second = await daemon.digester.catch_up(datetime.now(UTC))
        assert [r.channel for r in first] == ["analysts"]
        assert second == []
        received = list(smtp.received)
    assert sorted(r.rcpt_tos[0] for r in received) == ["a@desk.example", "b@desk.example"]
    assert all("Digest" in r.message["Subject"] for r in received)
    assert all("Talks stall" in r.message.get_body(("plain",)).get_content() for r in received)
