"""`monitor test-rule` as a user runs it: queries and configured rules against text, and
backtests over a real state file filled by a real poll."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.builders import rss, write_config
from tests.feedserver import FeedServer


def run_test_rule(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "test-rule", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_matching_query_exits_0_and_explains_why() -> None:
    result = run_test_rule(
        "--query", 'sanction* AND (russia OR moscow) NOT sport',
        "--title", "Russia faces new sanctions", "--summary", "Moscow responds",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "match: yes" in result.stdout
    assert "terms:     sanction*, russia, moscow" in result.stdout
    assert "fields:    title, summary" in result.stdout
    assert "snippet:" in result.stdout


def test_a_non_matching_query_exits_1_and_lists_what_was_missing() -> None:
    result = run_test_rule("--query", '"dead end" AND talks', "--title", "Talks continue")
    assert result.returncode == 1
    assert "match: no" in result.stdout
    assert "found:     talks" in result.stdout
    assert 'not found: "dead end"' in result.stdout


def test_an_invalid_query_exits_2_with_a_caret() -> None:
    result = run_test_rule("--query", "talks AND (geneva", "--title", "x")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("invalid query:")
    assert lines[1] == "    talks AND (geneva"
    assert lines[2].strip() == "^"


def test_stemming_and_unicode() -> None:
    stemmed = run_test_rule("--query", "sanction", "--stem", "en", "--title", "Banks sanctioned")
    assert stemmed.returncode == 0, stemmed.stdout + stemmed.stderr
    cyrillic = run_test_rule("--query", "санкции", "--title", "Новые САНКЦИИ против банков")
    assert cyrillic.returncode == 0, cyrillic.stdout + cyrillic.stderr


def test_nothing_to_test_is_invalid() -> None:
    assert run_test_rule("--query", "talks").returncode == 2


def test_configured_rule_and_backtest(tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.set("/wire.xml", rss([
        ("w1", "Talks reach a dead end in Geneva"),
        ("w2", "Markets calm"),
        ("w3", "Peace talks resume"),
    ]))  # fmt: skip
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""\
feeds:
  - {{name: wire, url: '{feed_server.url("/wire.xml")}'}}
rules:
  - name: stalled
    query: 'talks AND ("dead end" OR stalled)'
""",
    )
    ok = run_test_rule("-c", str(path), "--rule", "stalled", "--title", "Talks stalled")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    unknown = run_test_rule("-c", str(path), "--rule", "nope", "--title", "x")
    assert unknown.returncode == 2
    assert "no rule named 'nope'" in unknown.stderr

    seeded = subprocess.run(
        [sys.executable, "-m", "monitor", "once", "-c", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr  # seeds silently: no alert, items stored

    replay = run_test_rule("-c", str(path), "--rule", "stalled", "--since", "7d")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "wire: Talks reach a dead end in Geneva" in replay.stdout
    assert "1 of 3 stored items matched stalled" in replay.stdout

    adhoc = run_test_rule("-c", str(path), "--query", "talks", "--since", "7d")
    assert "2 of 3 stored items matched (query)" in adhoc.stdout


def test_bad_options_are_invalid_input_without_a_traceback() -> None:
    for args in (
        ["--query", "talks", "--fields", "titel", "--title", "x"],
        ["--query", "talks", "--stem", "xx", "--title", "x"],
        ["--query", "talks", "--stem", "en", "--case-sensitive", "--title", "x"],
        ["--query", "talks", "--since", "7d", "--title", "x"],
    ):
        result = run_test_rule(*args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr
    spaced = run_test_rule("--query", "talks", "--fields", "title, summary", "--summary", "talks")
    assert spaced.returncode == 0, spaced.stderr


def test_html_in_the_given_text_is_reduced_like_feed_text() -> None:
    result = run_test_rule("--query", '"AT&T"', "--summary", "<b>AT&amp;T</b> deal")
    assert result.returncode == 0, result.stdout


def test_a_missing_state_file_is_exit_3_not_no_match(tmp_path: Path) -> None:
    path = write_config(tmp_path / "monitor.yaml", "feeds: []\nrules: [{name: r, query: x}]\n")
    result = run_test_rule("-c", str(path), "--rule", "r", "--since", "1d")
    assert result.returncode == 3
    assert "does not exist" in result.stderr
