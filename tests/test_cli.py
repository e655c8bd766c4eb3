"""The command line as a user runs it: real processes, real files, a real feed server."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.builders import rss, write_config
from tests.fakebot import FakeBot
from tests.feedserver import FeedServer
from tests.smtpserver import SmtpServer

ROOT = Path(__file__).resolve().parents[1]
#: Escape sequences (colour, cursor movement) and carriage returns: a progress display's marks.
TERMINAL_CONTROL = re.compile(r"\x1b\[|\r")
#: Environment variables that would make rich draw for a terminal where there is none.
FORCING = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "NO_COLOR")


HEADER = re.compile(r"[A-Z]+(?: [A-Z]+)*(?:  +[A-Z]+(?: [A-Z]+)*)*")


def plain_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FORCING}
    return {**env, **extra}


def tables(out: str) -> dict[str, list[dict[str, str]]]:
    """Each piped table in `out` (blocks of lines after a blank line, the first one a header
    of capitalised words) as rows of {column: cell}, by its first column's name; cells are
    cut at the header's column starts."""
    found: dict[str, list[dict[str, str]]] = {}
    for block in out.split("\n\n")[1:]:
        header, *lines = block.strip("\n").splitlines()
        if not HEADER.fullmatch(header):
            continue
        names = re.findall(r"[A-Z]+(?: [A-Z]+)*", header)
        starts = [header.index(n) for n in names]
        ends = [*starts[1:], None]
        found[names[0]] = [
            {n: line[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)}
            for line in lines
        ]
    return found


def monitor(
    *args: str, cwd: Path | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `monitor ARGS...` with its output piped (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=timeout,
        check=False,
        env=plain_env(**(env or {})),
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
    # Piped: log lines and the summary, and no progress display in between.
    assert not TERMINAL_CONTROL.search(result.stdout + result.stderr)
    assert "polling feeds" not in result.stderr


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


def test_check_into_a_pipe_closed_early_exits_quietly(tmp_path: Path) -> None:
    """`monitor check | head -1` on a config whose tables outgrow the pipe's buffer."""
    feeds = "\n".join(
        f"  - {{name: f{n}, url: 'https://news.example/{n}.xml'}}" for n in range(3000)
    )
    path = write_config(
        tmp_path / "big.yaml", f"feeds:\n{feeds}\nrules:\n  - {{name: r, any: [x]}}\n"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "monitor", "check", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=plain_env(),
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what `head -1` does after its line
        err = proc.stderr.read()
        code = proc.wait(timeout=60)
    assert first == f"{path}: valid\n"
    assert err == ""  # no traceback, no "Exception ignored"
    assert code == 141  # as a writer killed by SIGPIPE


def test_once_on_a_terminal_shows_progress_then_the_summary(
    tmp_path: Path, feed_server: FeedServer
) -> None:
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
    output = on_a_terminal("once", "-c", str(path))
    assert "polling feeds" in output or "sending alerts" in output  # the progress display
    assert "polled 2 feeds (1 failed)" in output
    assert "failed: gone: HTTP 404" in output


def on_a_terminal(*args: str) -> str:
    """Run `monitor ARGS...` with standard output and error on a pseudo-terminal: all it
    wrote there."""
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "monitor", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        cwd=ROOT,
        env=plain_env(TERM="xterm-256color", COLUMNS="100"),
    ) as proc:
        os.close(follower)
        watchdog = threading.Timer(60, proc.kill)  # never hang the suite
        watchdog.start()
        chunks = []
        try:
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            assert proc.wait(timeout=60) == 0
        finally:
            watchdog.cancel()
            os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


# --- JSON logs and secrets, end to end ----------------------------------------------------------

FEED_PASSWORD = "feed-Pa55-x7q"
SMTP_PASSWORD = "smtp-Pa55-w0rd-k4"


def secret_config(tmp_path: Path, feeds: FeedServer, bot: FakeBot, smtp: SmtpServer) -> Path:
    """A feed behind URL credentials with one matching item, alerting a Telegram channel
    (token from the environment) and an email channel (password from the environment)."""
    feeds.set("/wire.xml", rss([("c1", "Sanctions talks collapse")]))
    url = feeds.url("/wire.xml").replace("http://", f"http://reader:{FEED_PASSWORD}@")
    return write_config(
        tmp_path / "monitor.yaml",
        f"""\
state: state.db
feeds:
  - name: wire
    url: '{url}'
    first_fetch: {{backfill: 1}}
channels:
  desk:
    type: telegram
    token: ${{BOT_TOKEN}}
    chat_id: 42
    api_url: {bot.api_url}
  analysts:
    type: email
    smtp: {{host: 127.0.0.1, port: {smtp.port}, security: none, user: alerts,
            password: '${{SMTP_PASSWORD}}'}}
    from: alerts@monitor.example
    to: [desk@news.example]
rules:
  - {{name: sanctions, any: [sanction*]}}
""",
    )


def assert_no_secrets(text: str, bot: FakeBot) -> None:
    for secret in (bot.token, bot.token.partition(":")[2], SMTP_PASSWORD, FEED_PASSWORD):
        assert secret not in text


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line of `text` as a JSON log record (fails on any other line)."""
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    return records


def test_once_with_json_logs_delivers_and_never_shows_a_secret(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    with FakeBot() as bot, SmtpServer(user="alerts", password=SMTP_PASSWORD) as smtp:
        path = secret_config(tmp_path, feed_server, bot, smtp)
        env = {"BOT_TOKEN": bot.token, "SMTP_PASSWORD": SMTP_PASSWORD}
        once = monitor(
            "once", "-c", str(path), "--log-format", "json", "--log-level", "debug", env=env
        )
        assert once.returncode == 0, once.stderr
        assert [s.chat_id for s in bot.sent] == ["42"]
        assert len(smtp.received) == 1
        check = monitor("check", "-c", str(path), env=env)
        feeds = monitor("feeds", "-c", str(path), env=env)
        feeds_json = monitor("feeds", "-c", str(path), "--json", env=env)
    records = json_lines(once.stderr)  # standard error holds JSON lines only
    messages = [str(r["message"]) for r in records]
    assert any(r.get("feed") == "wire" and "polled" in str(r["message"]) for r in records)
    assert messages[-1].startswith("polled 1 feeds (0 failed): 1 new items, 1 alerts; sent 2")
    assert check.returncode == feeds.returncode == feeds_json.returncode == 0
    assert "<redacted>@127.0.0.1" in check.stdout  # the feed's URL, shown without its password
    for result in (once, check, feeds, feeds_json):
        assert_no_secrets(result.stdout + result.stderr, bot)


def test_run_with_json_logs_logs_json_lines_only_and_never_a_secret(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    with FakeBot() as bot, SmtpServer(user="alerts", password=SMTP_PASSWORD) as smtp:
        path = secret_config(tmp_path, feed_server, bot, smtp)
        with subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "-c", str(path), "--log-format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=plain_env(BOT_TOKEN=bot.token, SMTP_PASSWORD=SMTP_PASSWORD),
        ) as proc:
            try:
                bot.wait_for_sent(1, timeout=45)  # safety nets: both return once delivered
                smtp.wait_for(1, timeout=45)
            finally:
                proc.send_signal(signal.SIGTERM)
                out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    messages = [str(r["message"]) for r in json_lines(err)]
    assert any(m.startswith("running: 1 feeds") for m in messages)
    assert "shutting down" in messages
    assert_no_secrets(out + err, bot)


def test_an_invalid_config_is_a_json_record_with_json_logs(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "bad.yaml", "feeds:\n  - url: https://news.example/a.xml\n    intervl: 5m\n"
    )
    result = monitor("run", "-c", str(path), "--log-format", "json")
    assert result.returncode == 2
    (record,) = json_lines(result.stderr)
    assert record["level"] == "error"
    assert f"{path}:3: feeds[0].intervl: unknown key 'intervl'" in str(record["message"])
