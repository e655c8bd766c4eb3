"""`monitor check` as a user runs it: the tables of what a config holds, secrets never shown
(the command's errors and exits are in tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

from tests.builders import write_config
from tests.test_cli import TERMINAL_CONTROL, monitor, tables


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
    assert "regex rules are slower (searched item by item): codes" in result.stdout
    rules = tables(result.stdout)["RULE"]
    assert rules[0]["MATCHES"] == r"/\b[A-Z]{3}-\d{3}\b/ OR title:UN"
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


# --- tables, pipes and terminals ----------------------------------------------------------------


def test_check_prints_the_feeds_rules_and_channels_it_checked_as_tables(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "monitor.yaml",
        """\
feeds:
  - {name: Wire, url: 'https://news.example/wire.xml', tags: [world, markets], interval: 2m}
  - {name: '[Regional] Desk', url: 'https://news.example/regional.xml', adaptive: true}
channels:
  screen: {type: console}
  archive: {type: jsonl, path: alerts.jsonl}
admin: {channel: screen}
rules:
  - name: sanctions
    all: [russia]
    any: [sanction*, '"asset freeze"']
    none: [football]
    feeds: {tags: [world]}
    notify: [archive]
  - {name: talks, query: 'talks AND NOT sport', fields: [title]}
""",
    )
    result = monitor("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == [
        f"{path}: valid",
        "2 feeds, 2 rules, 2 channels",
        f"state sqlite://{tmp_path / 'monitor.db'}, timezone UTC",
    ]
    found = tables(result.stdout)
    assert set(found) == {"FEED", "RULE", "CHANNEL"}
    feeds = {row["FEED"]: row for row in found["FEED"]}
    assert feeds["Wire"] == {
        "FEED": "Wire",
        "URL": "https://news.example/wire.xml",
        "EVERY": "2 min",
        "TAGS": "markets, world",
    }
    assert feeds["[Regional] Desk"]["EVERY"] == "5 min adaptive"  # names are never markup
    rules = {row["RULE"]: row for row in found["RULE"]}
    assert rules["sanctions"]["MATCHES"] == (
        'russia AND (sanction* OR "asset freeze") AND NOT football'
    )
    assert rules["sanctions"]["FEEDS"] == "tag world"
    assert rules["sanctions"]["NOTIFY"] == "archive"
    assert rules["talks"] == {
        "RULE": "talks",
        "MATCHES": "talks AND NOT sport",
        "FIELDS": "title",
        "FEEDS": "every feed",
        "NOTIFY": "archive",  # every channel but the admin channel
    }
    channels = {row["CHANNEL"]: row for row in found["CHANNEL"]}
    assert channels["screen"]["SENDS TO"] == "standard output; feed-health notices"
    assert channels["archive"]["SENDS TO"] == str(tmp_path / "alerts.jsonl")
    assert not TERMINAL_CONTROL.search(result.stdout)
