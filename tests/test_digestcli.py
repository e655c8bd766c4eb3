"""`monitor digest` as a user runs it: a real process, a real config and state file, a
loopback SMTP server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.models import Alert, CacheInfo, FeedSpec, Item, Match
from monitor.store import SQLiteStore
from tests.builders import write_config
from tests.smtpserver import SmtpServer
from tests.test_cli import ROOT

NOW = datetime.now(UTC)
ANN, BOB = "ann@example.org", "bob@example.org"


def digest_config(tmp_path: Path, port: int = 2525) -> Path:
    return write_config(
        tmp_path / "monitor.yaml",
        f"""
timezone: Europe/Berlin
state: {tmp_path / "state.db"}
feeds:
  - name: wire
    url: https://news.example/feed.xml
rules:
  - name: ferries
    any: [ferry]
    notify: [mail]
channels:
  mail:
    type: email
    smtp: {{host: 127.0.0.1, port: {port}, security: none}}
    from: monitor@example.org
    to: [{ANN}, {BOB}]
    digest: daily
  screen: {{type: console}}
""",
    )


async def _seed(state: Path) -> None:
    """One story waiting for the digest of channel "mail", for both recipients."""
    feed = FeedSpec(name="wire", url="https://news.example/feed.xml", interval=timedelta(hours=1))
    match = Match("ferries", ("ferry",), ("title",), ("mail",))
    alert = Alert("wire", "k1", "Night ferry approved", "", "", None, NOW, (match,))
    async with SQLiteStore(state) as store:
        await store.sync_feeds([feed], NOW)
        await store.record_items(
            "wire",
            [Item(feed="wire", key="k1", title="Night ferry approved", link="")],
            [alert],
            cache=CacheInfo(),
            now=NOW,
            next_poll_at=NOW + timedelta(hours=1),
            targets={"mail": [ANN, BOB]},
        )


def seed(tmp_path: Path) -> None:
    asyncio.run(_seed(tmp_path / "state.db"))


def run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "digest", "-c", str(path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_preview_writes_the_html_and_sends_nothing(tmp_path: Path) -> None:
    path = digest_config(tmp_path)
    seed(tmp_path)
    out = tmp_path / "digest.html"
    result = run(path, "--channel", "mail", "--preview", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mail: wrote the digest for {ANN} (1 alert) to {out}"
    assert "Night ferry approved" in out.read_text(encoding="utf-8")


def test_now_sends_one_digest_per_recipient(tmp_path: Path) -> None:
    with SmtpServer() as server:
        path = digest_config(tmp_path, server.port)
        seed(tmp_path)
        result = run(path, "--channel", "mail", "--now")
        assert result.returncode == 0, result.stderr
        received = server.wait_for(2)
        again = run(path, "--channel", "mail", "--now")
    assert [r.rcpt_tos for r in received] == [(ANN,), (BOB,)]
    assert result.stdout.splitlines() == [
        f"mail {ANN}: sent (1 alert)",
        f"mail {BOB}: sent (1 alert)",
    ]
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "mail: nothing pending, no digest sent"
    assert len(server.received) == 2


def test_a_refused_digest_fails_the_command(tmp_path: Path) -> None:
    with SmtpServer() as server:
        server.fail_next(550, "5.1.1 no such user", stage="RCPT", rcpt=BOB)
        path = digest_config(tmp_path, server.port)
        seed(tmp_path)
        result = run(path, "--channel", "mail", "--now")
    assert result.returncode == 1
    assert f"mail {BOB}: FAILED (1 alert): mail server refused recipient {BOB}" in result.stdout


def test_a_channel_that_is_not_a_digest_channel_is_refused(tmp_path: Path) -> None:
    path = digest_config(tmp_path)
    for channel in ("screen", "nope"):
        result = run(path, "--channel", channel, "--now")
        assert result.returncode == 2
        assert "is not an email channel in digest mode" in result.stderr
        assert "(digest channels: mail)" in result.stderr


def test_now_refuses_while_a_daemon_holds_the_state_file(tmp_path: Path) -> None:
    path = digest_config(tmp_path)
    seed(tmp_path)

    async def held() -> subprocess.CompletedProcess[str]:
        async with SQLiteStore(tmp_path / "state.db"):
            return await asyncio.to_thread(run, path, "--channel", "mail", "--now")

    result = asyncio.run(held())
    assert result.returncode == 1
    assert "in use by another monitor process" in result.stderr
