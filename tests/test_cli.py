"""The command line as a user runs it: real processes, real files, a real feed server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.builders import rss, write_config
from tests.feedserver import FeedServer

ROOT = Path(__file__).resolve().parents[1]


def monitor(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=timeout,
        check=False,
    )


def test_version() -> None:
    result = monitor("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("monitor ")


def test_check_accepts_the_example_config() -> None:
    result = monitor("check", "-c", "config/monitor.yaml")
    assert result.returncode == 0, result.stderr
    assert "config/monitor.yaml: valid" in result.stdout
    assert "feeds" in result.stdout
    assert "sanctions" in result.stdout
    assert "talks" in result.stdout


def test_check_finds_the_default_config_from_the_project_root() -> None:
    result = monitor("check")
    assert result.returncode == 0, result.stderr


def test_check_rejects_an_invalid_config_with_file_and_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "bad.yaml",
        """\
feeds:
  - url: https://example.org/feed.xml
    intervl: 5m
rules:
  - name: r
    any: [talks]
    notify: [nowhere]
""",
    )
    result = monitor("check", "-c", str(path))
    assert result.returncode == 2
    assert f"{path}:3: feeds[0].intervl: unknown key 'intervl'" in result.stderr
    assert f"{path}:7: rules[0].notify[0]:" in result.stderr
    assert "nowhere" in result.stderr


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    result = monitor("check", cwd=tmp_path)
    assert result.returncode == 2
    assert "monitor.yaml" in result.stderr


def test_run_prints_alerts_on_the_console_and_stops_on_sigterm(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss([("c1", "Sanctions talks collapse")]))
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""\
feeds:
  - name: wire
    url: {feed_server.url("/wire.xml")}
    first_fetch: {{backfill: 1}}
rules:
  - name: sanctions
    any: [sanction*]
""",
    )
    with subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        watchdog = threading.Timer(60, proc.kill)  # never hang the suite if no alert comes
        watchdog.start()
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            first = proc.stdout.readline()  # blocks until the alert is printed
            assert first.strip() == "Sanctions talks collapse"
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)  # "within a few seconds"
            out, err = proc.stdout.read(), proc.stderr.read()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "matched: sanctions (sanction*)" in first + out
    assert "shutting down" in err
    assert (tmp_path / "monitor.db").exists()


def test_once_reports_what_it_did(tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.set("/a.xml", rss([("x", "Nothing here")]))
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""\
feeds:
  - {{name: a, url: '{feed_server.url("/a.xml")}'}}
  - {{name: gone, url: '{feed_server.url("/gone.xml")}'}}
rules:
  - {{name: r, any: [talks]}}
""",
    )
    result = monitor("once", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "polled 2 feeds (1 failed)" in result.stderr
    assert "failed: gone: HTTP 404" in result.stderr


def test_second_process_on_the_same_state_refuses(tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.set("/a.xml", rss([("x", "Nothing here")]))
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""\
feeds:
  - {{name: a, url: '{feed_server.url("/a.xml")}', interval: 1h}}
rules:
  - {{name: r, any: [talks]}}
""",
    )
    with subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "running:" in line:
                    break
            else:
                raise AssertionError("the daemon exited before it started running")
            result = monitor("once", "-c", str(path))
            assert result.returncode == 1
            assert "in use by another monitor process" in result.stderr
            assert f"pid {proc.pid}" in result.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


def test_environment_secrets_never_reach_the_logs(tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.set("/private.xml", "no", status=500)
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""\
feeds:
  - name: private
    url: '{feed_server.url("/private.xml")}?key=${{FEED_KEY}}'
rules:
  - {{name: r, any: [talks]}}
""",
    )
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "once", "-c", str(path), "--log-level", "debug"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "FEED_KEY": "kq93-secret-token-77"},
    )
    assert result.returncode == 0, result.stderr
    assert "HTTP 500" in result.stderr
    assert "kq93-secret-token-77" not in result.stderr + result.stdout
    assert feed_server.requests[-1][0].endswith("key=kq93-secret-token-77")


def test_check_lists_regex_rules_as_slower_and_rejects_a_bad_query(tmp_path: Path) -> None:
    good = write_config(
        tmp_path / "good.yaml",
        """\
feeds:
  - url: https://example.org/feed.xml
rules:
  - {name: codes, query: '/\\b[A-Z]{3}-\\d{3}\\b/ OR title:UN'}
  - {name: plain, query: 'talks'}
""",
    )
    result = monitor("check", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert "codes (regex rules are slower)" in result.stdout
    bad = write_config(
        tmp_path / "bad.yaml",
        """\
feeds:
  - url: https://example.org/feed.xml
rules:
  - name: broken
    query: 'sanction* AND'
""",
    )
    result = monitor("check", "-c", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines()[1:] == [
        f"{bad}:5: rules[0].query: rule 'broken': expected a term after AND at position 13",
        "    sanction* AND",
        "                 ^",
    ]
