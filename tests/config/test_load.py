"""Loading real YAML files: the domain objects they become, and the problems users see."""

from __future__ import annotations

import os
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import find_config, load_config
from monitor.errors import ConfigError
from monitor.match.compile import make_term
from monitor.match.parse import parse_query
from monitor.match.query import structured
from monitor.models import (
    DEFAULT_FIELDS,
    ChannelSpec,
    DeliveryPolicy,
    FeedScope,
    FeedSpec,
    FetchLimits,
    FirstFetch,
    PollPolicy,
    Retention,
)

FULL = """\
state: sqlite:///var/lib/monitor/state.db
timezone: Europe/Berlin
defaults:
  interval: 5m
  first_fetch: seed
  timeout: {connect: 10s, read: 20s, total: 60s}
  max_size: 10MiB
  max_redirects: 5
poll:
  concurrency: 20
  per_host: 2
  jitter: 0.1
  backoff_cap: 6h
  max_items: 500
  user_agent: "monitor/0.1 (+https://example.org/bot)"
delivery:
  retry_base: 10s
  retry_cap: 30m
  max_attempts: 12
retention:
  seen: 180d
  text: 30d
  deliveries: 30d
feeds:
  - url: https://example.org/rss.xml
    name: Example World
    tags: [world, europe]
    interval: 2m
    first_fetch: {backfill: 3}
    timeout: {total: 30s}
    max_size: 5MiB
    max_redirects: 3
  - url: https://example.net/politics.atom
channels:
  desk:
    type: console
  file:
    type: jsonl
    path: alerts.jsonl
rules:
  - name: russia-sanctions
    any: [sanctions, '"security guarantees"']
    all: [russia]
    none: [sport]
    regex: 'sanction(s|ed)'
    fields: [title, summary]
    feeds: [Example World]
    notify: [desk]
  - name: everything-on-talks
    any: talks
"""


def write(tmp_path: Path, text: str, name: str = "monitor.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    return [str(p) for p in info.value.problems]


def only_problem(path: Path, env: dict[str, str] | None = None) -> str:
    found = problems(path, env)
    assert len(found) == 1, found
    return found[0]


# --- valid files -------------------------------------------------------------------------------


def test_full_example_becomes_the_expected_domain_objects(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path, env={})

    assert config.path == str(path)
    assert config.state == "sqlite:///var/lib/monitor/state.db"
    assert config.timezone == "Europe/Berlin"
    assert config.feeds == (
        FeedSpec(
            name="Example World",
            url="https://example.org/rss.xml",
            interval=timedelta(minutes=2),
            tags=frozenset({"world", "europe"}),
            first_fetch=FirstFetch(backfill=3),
            limits=FetchLimits(10.0, 20.0, 30.0, 5 * 1024 * 1024, 3),
        ),
        FeedSpec(
            name="https://example.net/politics.atom",
            url="https://example.net/politics.atom",
            interval=timedelta(minutes=5),
            first_fetch=FirstFetch(backfill=0),
            limits=FetchLimits(10.0, 20.0, 60.0, 10 * 1024 * 1024, 5),
        ),
    )
    assert [(c.name, c.type, c.options) for c in config.channels] == [
        ("desk", "console", {}),
        ("file", "jsonl", {"path": str(tmp_path / "alerts.jsonl")}),
    ]
    first, second = config.rules
    assert first.name == "russia-sanctions"
    assert first.query == structured(
        ["sanctions", '"security guarantees"'], ["russia"], ["sport"], ["sanction(s|ed)"]
    )
    assert first.fields == ("title", "summary")
    assert first.feeds == FeedScope(names=frozenset({"Example World"}))
    assert first.notify == ("desk",)
    assert second.query == structured(any_=["talks"])
    assert second.fields == DEFAULT_FIELDS
    assert second.feeds == FeedScope()
    assert second.notify == ("desk", "file")
    assert config.poll == PollPolicy(
        20, 2, 0.1, timedelta(hours=6), 500, "monitor/0.1 (+https://example.org/bot)"
    )
    assert config.delivery == DeliveryPolicy(timedelta(seconds=10), timedelta(minutes=30), 12)
    assert config.retention == Retention(timedelta(days=180), timedelta(days=30), timedelta(30))


def test_minimal_file_gets_defaults_and_an_implicit_console(tmp_path: Path) -> None:
    path = write(tmp_path, "feeds: []\n")
    config = load_config(path, env={})
    assert config.state == "sqlite://" + str(tmp_path / "monitor.db")
    assert config.state.startswith("sqlite:///")
    assert config.timezone == "UTC"
    assert config.channels == (ChannelSpec(name="console", type="console"),)
    assert config.feeds == config.rules == ()
    assert config.poll == PollPolicy()
    assert config.delivery == DeliveryPolicy()
    assert config.retention == Retention()


def test_rules_without_channels_notify_the_implicit_console(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "channels:\nrules:\n  - {name: r, any: x}\n  - {name: s, any: y, notify: console}\n",
    )
    config = load_config(path, env={})
    assert [r.notify for r in config.rules] == [("console",), ("console",)]


def test_feed_defaults_apply_partially(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        defaults: {interval: 90s, first_fetch: {backfill: 2}, timeout: {read: 5s}, max_size: 1MB}
        feeds:
          - url: https://a.example/feed
            timeout: {connect: 1s}
            first_fetch: seed
        """,
    )
    (feed,) = load_config(path, env={}).feeds
    assert feed.interval == timedelta(seconds=90)
    assert feed.first_fetch == FirstFetch(0)
    assert feed.limits == FetchLimits(1.0, 5.0, 60.0, 1_000_000, 5)


def test_rule_scope_forms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        feeds:
          - {url: "https://a.example/", name: A, tags: world}
          - {url: "https://b.example/", name: B, tags: [sport, world]}
        rules:
          - {name: one, any: x, feeds: A}
          - {name: two, any: x, feeds: [A, B]}
          - {name: three, any: x, feeds: {names: [A], tags: [sport]}}
          - {name: four, any: x, feeds: {tags: world}}
        """,
    )
    scopes = [r.feeds for r in load_config(path, env={}).rules]
    assert scopes == [
        FeedScope(names=frozenset({"A"})),
        FeedScope(names=frozenset({"A", "B"})),
        FeedScope(names=frozenset({"A"}), tags=frozenset({"sport"})),
        FeedScope(tags=frozenset({"world"})),
    ]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("memory:", "memory:"),
        ("sqlite:///abs/path.db", "sqlite:///abs/path.db"),
        ("sqlite:relative.db", "sqlite://{dir}/relative.db"),
        ("sqlite:data/x.db", "sqlite://{dir}/data/x.db"),
        ("state.db", "sqlite://{dir}/state.db"),
        ("data/state.db", "sqlite://{dir}/data/state.db"),
        ("../up/state.db", "sqlite://{parent}/up/state.db"),
        ("/abs/state.db", "sqlite:///abs/state.db"),
    ],
)
def test_state_forms(tmp_path: Path, state: str, expected: str) -> None:
    path = write(tmp_path, f"state: '{state}'\n", name="conf/monitor.yaml")
    config = load_config(path, env={})
    here = tmp_path / "conf"
    assert config.state == expected.format(dir=here, parent=tmp_path)


def test_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "channels: {f: {type: jsonl, path: out/a.jsonl}}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("monitor.yaml", env={})
    assert config.path == str(tmp_path / "monitor.yaml")
    assert config.state == "sqlite://" + str(tmp_path / "monitor.db")
    assert config.channels[0].options == {"path": str(tmp_path / "out" / "a.jsonl")}


def test_yaml_merge_keys_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        base: &base {interval: 1m, tags: [x]}
        """,
    )
    assert "unknown key 'base'" in only_problem(path)
    path = write(
        tmp_path,
        """\
        feeds:
          - &first {url: "https://a.example/", interval: 1m, tags: [x]}
          - <<: *first
            url: https://b.example/
        """,
    )
    _, second = load_config(path, env={}).feeds
    assert second.url == "https://b.example/"
    assert second.interval == timedelta(minutes=1)
    assert second.tags == frozenset({"x"})


# --- environment variables ---------------------------------------------------------------------


def test_env_variables_are_substituted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        poll: {user_agent: "bot ${NAME}/${VERSION}", concurrency: "${N}"}
        feeds: [{url: "https://${HOST}/rss"}]
        """,
    )
    env = {"NAME": "mon", "VERSION": "1.0", "N": "7", "HOST": "news.example"}
    config = load_config(path, env=env)
    assert config.poll.user_agent == "bot mon/1.0"
    assert config.poll.concurrency == 7
    assert config.feeds[0].url == "https://news.example/rss"


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_TEST_UA", "from-os")
    path = write(tmp_path, "poll: {user_agent: '${MONITOR_TEST_UA}'}\n")
    assert load_config(path).poll.user_agent == "from-os"
    assert os.environ["MONITOR_TEST_UA"] == "from-os"


def test_missing_env_variable_names_it_at_its_line_without_leaking_others(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        poll:
          user_agent: "${AGENT}"
        timezone: "${TZNAME}"
        channels:
          desk:
            type: jsonl
            path: "${SECRET_DIR}/${NOT_SET}"
        """,
    )
    env = {"AGENT": "s3cr3t-agent", "TZNAME": "Hunter2/Zone", "SECRET_DIR": "/very/secret"}
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    text = str(info.value)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:3: timezone: unknown timezone '${{TZNAME}}': use an IANA name such as "
        "Europe/Berlin or UTC",
        f"{path}:7: channels.desk.path: environment variable NOT_SET is not set",
    ]
    for value in env.values():
        assert value not in text


def test_dollar_dollar_brace_is_a_literal(tmp_path: Path) -> None:
    path = write(tmp_path, "poll: {user_agent: 'a $${HOME} b $$ c $x'}\n")
    assert load_config(path, env={"HOME": "/root"}).poll.user_agent == "a ${HOME} b $$ c $x"


def test_malformed_reference_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "poll:\n  user_agent: 'a ${not valid} b'\n")
    assert only_problem(path) == (
        f"{path}:2: poll.user_agent: '${{' must start ${{NAME}} (write $${{ for a literal ${{)"
    )


# --- keys and types ----------------------------------------------------------------------------


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path, "feeds:\n  - url: https://a.example/\n    intervl: 2m\n")
    assert (
        only_problem(path)
        == f"{path}:3: feeds[0].intervl: unknown key 'intervl'; did you mean 'interval'?"
    )


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, "feeds: []\nwebhook: {port: 8080}\n")
    assert only_problem(path) == f"{path}:2: webhook: unknown key 'webhook'"


def test_misspelt_required_key_is_reported_once(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - nam: r\n    any: x\n")
    assert only_problem(path) == f"{path}:2: rules[0].nam: unknown key 'nam'; did you mean 'name'?"


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, "feeds:\n  - name: no url\n    tags: [a]\n")
    assert only_problem(path) == f"{path}:2: feeds[0].url: missing required key 'url'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "feeds:\n  - url: https://a.example/\n    tags: {a: 1}\n",
            "3: feeds[0].tags: expected a list of strings, got a mapping",
        ),
        ("feeds: {a: 1}\n", "1: feeds: expected a list, got a mapping"),
        (
            "poll:\n  concurrency: many\n",
            "2: poll.concurrency: expected a whole number, got a string",
        ),
        ("poll:\n  jitter: [1]\n", "2: poll.jitter: expected a number, got a list"),
        ("defaults: [1]\n", "1: defaults: expected a mapping, got a list"),
        (
            "feeds:\n  - url: https://a.example/\n    name: yes\n",
            "3: feeds[0].name: expected a string, got a boolean "
            "(put it in quotes if you meant text)",
        ),
        (
            "feeds:\n  - url: https://a.example/\n    tags: [a, [b]]\n",
            "3: feeds[0].tags[1]: expected a string, got a list",
        ),
        (
            "defaults:\n  first_fetch: everything\n",
            "2: defaults.first_fetch: expected 'seed' or {backfill: N}",
        ),
        (
            "defaults:\n  first_fetch: {backfill: -1}\n",
            "2: defaults.first_fetch.backfill: must be at least 0",
        ),
        ("defaults:\n  max_redirects: 21\n", "2: defaults.max_redirects: must be at most 20"),
        ("poll:\n  jitter: 0.9\n", "2: poll.jitter: must be at most 0.5"),
        (
            "feeds:\n  - url: https://a.example/\n    name: ''\n",
            "3: feeds[0].name: must not be empty",
        ),
        (
            "rules:\n  - name: r\n    any: x\n    fields: [title, body]\n",
            "4: rules[0].fields[1]: unknown field 'body' (valid: title, summary, content, author, "
            "tags, link)",
        ),
        (
            "rules:\n  - name: r\n    any: x\n    fields: []\n",
            "4: rules[0].fields: must not be empty",
        ),
    ],
)
def test_wrong_types_and_ranges(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert only_problem(path) == f"{path}:{expected}"


# --- feeds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "unsupported scheme 'file': only http and https feeds are fetched"),
        ("ftp://a.example/x", "unsupported scheme 'ftp': only http and https feeds are fetched"),
        (
            "feed:https://a.example/",
            "unsupported scheme 'feed': only http and https feeds are fetched",
        ),
        (
            "data:text/xml,<rss/>",
            "unsupported scheme 'data': only http and https feeds are fetched",
        ),
        (
            "javascript:alert(1)",
            "unsupported scheme 'javascript': only http and https feeds are fetched",
        ),
        ("example.org/rss.xml", "not an absolute URL: write it with http:// or https://"),
        ("//example.org/rss.xml", "not an absolute URL: write it with http:// or https://"),
        ("https:///rss.xml", "URL has no host"),
        ("http://a.example:99999/", "URL has an invalid port"),
        ("http://a.example/a b", "URL contains spaces or control characters"),
    ],
)
def test_bad_feed_urls(tmp_path: Path, url: str, message: str) -> None:
    path = write(tmp_path, f"feeds:\n  - name: x\n    url: '{url}'\n")
    assert only_problem(path) == f"{path}:3: feeds[0].url: {message}"


def test_duplicate_feed_names_point_at_the_second(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        feeds:
          - url: https://a.example/
            name: Same
          - url: https://b.example/
            name: Same
          - url: https://c.example/
          - url: https://c.example/
        """,
    )
    assert problems(path) == [
        f"{path}:5: feeds[1].name: duplicate feed name 'Same' (first at line 3)",
        f"{path}:7: feeds[3].url: duplicate feed URL 'https://c.example/' (no name given) "
        "(first at line 6)",
    ]


def test_two_feeds_with_one_url_point_at_the_second(tmp_path: Path) -> None:
    # Every match would alert twice, and the publisher is polled twice as often.
    path = write(
        tmp_path,
        """\
        feeds:
          - url: https://a.example/rss.xml
            name: World
            tags: [world]
          - name: Europe
            url: https://a.example/rss.xml
            tags: [europe]
          - url: "https://a.example/rss.xml"
          - url: https://a.example/rss.xml?page=1
          - url: https://a.example/rss.xml/
          - url: HTTPS://A.example/rss.xml
        rules:
          - name: r
            any: x
            feeds: {names: [Europe], tags: [europe]}
        """,
    )
    message = (
        "same URL as feed 'World' (line 2): each feed is polled once; give it more tags instead"
    )
    # Compared as written: other spellings of the URL are other feeds as far as config goes,
    # and the rule naming the second feed is not reported as well.
    assert problems(path) == [
        f"{path}:6: feeds[1].url: {message}",
        f"{path}:8: feeds[2].url: {message}",
    ]


@pytest.mark.parametrize(
    ("retention", "message"),
    [
        (
            "{seen: 47h}",
            "retention.seen: must be at least 2d: items are remembered for at least as long as "
            "their feed may go quiet",
        ),
        ("{text: 59m}", "retention.text: must be at least 1h"),
        ("{deliveries: 30s}", "retention.deliveries: must be at least 1h"),
    ],
)
def test_retention_minimums(tmp_path: Path, retention: str, message: str) -> None:
    path = write(tmp_path, f"retention: {retention}\n")
    assert only_problem(path) == f"{path}:1: {message}"


def test_retention_at_the_minimums_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "retention: {seen: 2d, text: 1h, deliveries: 60m}\n")
    assert load_config(path, env={}).retention == Retention(
        timedelta(days=2), timedelta(hours=1), timedelta(hours=1)
    )


def test_bad_interval_duration_and_size(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        defaults:
          interval: 5s
          max_size: 10 parsecs
          timeout: {total: soon}
        retention: {seen: 0}
        """,
    )
    assert problems(path) == [
        f"{path}:2: defaults.interval: must be at least 10s",
        f"{path}:3: defaults.max_size: invalid size '10 parsecs': use e.g. 500KB, 10MiB, 1GB",
        f"{path}:4: defaults.timeout.total: invalid duration 'soon': use e.g. 90s, 5m, 2h",
        f"{path}:5: retention.seen: invalid duration 0: must be more than zero, e.g. 90s, 5m, 2h",
    ]


def test_invalid_timezone(tmp_path: Path) -> None:
    path = write(tmp_path, "timezone: Europe/Berlinn\n")
    assert only_problem(path) == (
        f"{path}:1: timezone: unknown timezone 'Europe/Berlinn': use an IANA name such as "
        "Europe/Berlin or UTC"
    )


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            "mysql://user:pw@db/monitor",
            "unsupported state 'mysql:...': use a file path, sqlite:///abs/path.db or memory:",
        ),
        (
            "sqlite://host/x.db",
            "unsupported state 'sqlite:...': use a file path, sqlite:///abs/path.db or memory:",
        ),
    ],
)
def test_unusable_state(tmp_path: Path, state: str, message: str) -> None:
    path = write(tmp_path, f"state: '{state}'\n")
    found = only_problem(path)
    assert found == f"{path}:1: state: {message}"
    assert "pw" not in found


@pytest.mark.parametrize("state", ["postgresql://user:pw@db/monitor", "postgres://db/m?schema=x"])
def test_postgresql_state_is_kept_for_the_store_to_open(tmp_path: Path, state: str) -> None:
    # Several workers share one database; the URL is checked when the store connects.
    path = write(tmp_path, f"state: '{state}'\n")
    assert load_config(path).state == state


def test_retry_base_must_not_exceed_cap(tmp_path: Path) -> None:
    path = write(tmp_path, "delivery:\n  retry_base: 1h\n  retry_cap: 10m\n")
    assert (
        only_problem(path) == f"{path}:2: delivery.retry_base: retry_base is longer than retry_cap"
    )


# --- channels ----------------------------------------------------------------------------------


def test_channel_problems_hide_the_union_tag(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        channels:
          desk: {type: pager}
          notype: {path: x}
          file: {type: jsonl}
          extra:
            type: jsonl
            path: a.jsonl
            pth: b
          quiet: {type: console, path: x}
          "bad name": {type: console}
          flat: console
        """,
    )
    assert problems(path) == [
        f"{path}:2: channels.desk.type: unknown type 'pager' (known: console, jsonl, telegram, "
        "email)",
        f"{path}:3: channels.notype.type: missing required key 'type' (known: console, jsonl, "
        "telegram, email)",
        f"{path}:4: channels.file.path: missing required key 'path'",
        f"{path}:8: channels.extra.pth: unknown key 'pth'; did you mean 'path'?",
        f"{path}:9: channels.quiet.path: unknown key 'path'",
        f"{path}:10: channels.bad name: channel names use letters, digits and _ - . only",
        f"{path}:11: channels.flat: expected a mapping, got a string",
    ]


# --- rules -------------------------------------------------------------------------------------


def test_duplicate_rule_names(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - {name: r, any: a}\n  - name: r\n    any: b\n")
    assert (
        only_problem(path) == f"{path}:3: rules[1].name: duplicate rule name 'r' (first at line 2)"
    )


def test_undefined_channel(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        channels: {desk: {type: console}, file: {type: jsonl, path: a.jsonl}}
        rules:
          - name: r
            any: a
            notify: [desk, dsk]
          - {name: s, any: b, notify: nowhere}
        """,
    )
    defined = "(defined: desk, file)"
    assert problems(path) == [
        f"{path}:5: rules[0].notify[1]: rule notifies undefined channel 'dsk' {defined}",
        f"{path}:6: rules[1].notify: rule notifies undefined channel 'nowhere' {defined}",
    ]


def test_undefined_channel_with_only_the_implicit_console(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - {name: r, any: a, notify: [desk]}\n")
    assert only_problem(path) == (
        f"{path}:2: rules[0].notify[0]: rule notifies undefined channel 'desk' (defined: console)"
    )


def test_empty_notify_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - name: r\n    any: a\n    notify: []\n")
    assert "rules[0].notify: empty notify list" in only_problem(path)


def test_unknown_feed_names_and_tags_in_scope(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        feeds:
          - {url: "https://a.example/", name: Example World, tags: [world]}
        rules:
          - name: r
            any: a
            feeds: [Exmaple World]
          - name: s
            any: a
            feeds:
              names: [Example World, Other]
              tags: [world, sport]
          - {name: t, any: a, feeds: Nope}
        """,
    )
    assert problems(path) == [
        f"{path}:6: rules[0].feeds[0]: unknown feed 'Exmaple World'; did you mean 'Example World'?",
        f"{path}:10: rules[1].feeds.names[1]: unknown feed 'Other'",
        f"{path}:11: rules[1].feeds.tags[1]: no feed has tag 'sport'",
        f"{path}:12: rules[2].feeds: unknown feed 'Nope'",
    ]


def test_invalid_regex_shows_position_and_caret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: fine
            any: a
          - name: broken
            regex: ['ok', 'x(a+']
        """,
    )
    assert only_problem(path) == (
        f"{path}:5: rules[1].regex[1]: invalid regex 'x(a+': missing ), unterminated subpattern "
        "at position 1\n    x(a+\n     ^"
    )


def test_invalid_single_regex_is_placed_on_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - name: r\n    regex: 'a[b'\n")
    found = only_problem(path)
    assert found.startswith(f"{path}:3: rules[0].regex: invalid regex 'a[b': ")
    assert found.endswith("at position 1\n    a[b\n     ^")


def test_empty_terms_and_regex(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: r
            any: ['', ok]
            none: ['!!!']
            regex: ''
          - name: nothing
            fields: [title]
        """,
    )
    assert problems(path) == [
        f"{path}:3: rules[0].any[0]: term '' contains no word to match",
        f"{path}:4: rules[0].none[0]: term '!!!' contains no word to match",
        f"{path}:5: rules[0].regex: empty regex would match everything",
        f"{path}:6: rules[1]: rule has no terms: give any, all, none or regex",
    ]


def test_query_rule_compiles_with_its_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: q
            query: 'russia AND (sanctions OR "security guarantees") -sport'
          - name: stemmed
            query: title:Sanctioned
            stem: en
          - name: cased
            all: [Apple]
            case_sensitive: true
          - name: structured-stem
            any: [sanctions]
            stem: en
        """,
    )
    q, stemmed, cased, structured_stem = load_config(path, env={}).rules
    assert q.query == parse_query('russia AND (sanctions OR "security guarantees") -sport')
    assert stemmed.query == parse_query("title:Sanctioned", stem="en")
    assert cased.query == make_term("Apple", case_sensitive=True)
    assert structured_stem.query == make_term("sanctions", stem="en")
    assert structured_stem.query.words == ("sanction",)


def test_query_and_structured_forms_give_the_same_rule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - {name: lists, any: [a, b], all: [c], none: [d]}
          - {name: query, query: c AND (a OR b) AND NOT d}
        """,
    )
    lists, query = load_config(path, env={}).rules
    assert lists.query == query.query


def test_query_excludes_the_lists(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - name: r\n    any: x\n    query: y\n")
    assert only_problem(path) == (
        f"{path}:4: rules[0].query: use either query or any/all/none/regex, not both"
    )


def test_unknown_stem_language_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - name: r\n    query: x\n    stem: english\n")
    found = only_problem(path)
    assert found.startswith(
        f"{path}:4: rules[0].stem: unknown stem language 'english' (known: ar, ca, cs, da, de, "
    )
    assert " en, " in found


def test_case_sensitive_and_stem_conflict(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rules:\n  - name: r\n    any: [x]\n    case_sensitive: true\n    stem: en\n",
    )
    assert only_problem(path) == (
        f"{path}:5: rules[0].stem: case_sensitive and stem cannot be combined"
    )


def test_case_sensitive_must_be_a_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - name: r\n    query: x\n    case_sensitive: maybe\n")
    assert only_problem(path) == (
        f"{path}:4: rules[0].case_sensitive: expected true or false, got a string"
    )


def test_invalid_query_names_the_rule_with_a_caret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: fine
            query: a
          - name: russia-sanctions
            fields: [title]
            query: russia AND
        """,
    )
    assert only_problem(path) == (
        f"{path}:6: rules[1].query: rule 'russia-sanctions': expected a term after AND "
        "at position 10\n    russia AND\n              ^"
    )


def test_invalid_query_positions_point_into_the_query(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - {name: a, query: 'titel:x OR y'}
          - {name: b, query: 'x /(/'}
          - {name: c, query: ''}
        """,
    )
    assert problems(path) == [
        f"{path}:2: rules[0].query: rule 'a': unknown field 'titel' (fields: title, summary, "
        "content, author, tags, link) at position 0\n    titel:x OR y\n    ^",
        f"{path}:3: rules[1].query: rule 'b': invalid regex '(': missing ), unterminated "
        "subpattern at position 3\n    x /(/\n       ^",
        f"{path}:4: rules[2].query: rule 'c': empty query",
    ]


def test_invalid_block_query_shows_the_line_of_the_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: block
            query: |
              russia AND
                (sanctions OR "security
              guarantees") AND
        """,
    )
    assert only_problem(path) == (
        f"{path}:3: rules[0].query: rule 'block': expected a term after AND "
        'at line 3, column 17 of the query\n    guarantees") AND\n                    ^'
    )


def test_block_query_with_an_unclosed_parenthesis(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: block
            query: |
              a OR
              (b AND	c
        """,
    )
    assert only_problem(path) == (
        f"{path}:3: rules[0].query: rule 'block': unclosed parenthesis "
        "at line 2, column 1 of the query\n    (b AND  c\n    ^"
    )


# --- the YAML layer ----------------------------------------------------------------------------


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = write(tmp_path, "poll:\n  concurrency: 4\n  per_host: 1\n  concurrency: 8\n")
    assert (
        only_problem(path)
        == f"{path}:4: poll.concurrency: duplicate key 'concurrency' (first at line 2)"
    )


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "feeds:\n  - url: https://a.example/\n    name: [unclosed\nrules: []\n")
    found = only_problem(path)
    assert found.startswith(f"{path}:4: YAML syntax error: ")


def test_python_tags_are_rejected_cleanly(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(
        tmp_path,
        f"""\
        feeds: []
        poll:
          user_agent: !!python/object/apply:os.system ["touch {marker}"]
        timezone: !!python/name:os.system
        """,
    )
    assert problems(path) == [
        f"{path}:3: poll.user_agent: unknown YAML tag '!!python/object/apply:os.system'",
        f"{path}:4: timezone: unknown YAML tag '!!python/name:os.system'",
    ]
    assert not marker.exists()


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = write(tmp_path, "\n".join(levels) + "\n")
    found = problems(path)
    assert any("document too large (aliases expand too far)" in p for p in found)


def test_recursive_alias_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "feeds: &loop [*loop]\n")
    assert any("recursive YAML alias" in p for p in problems(path))


def test_missing_empty_and_non_mapping_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert only_problem(missing) == f"{missing}: cannot read config file: No such file or directory"
    empty = write(tmp_path, "# nothing yet\n", name="empty.yaml")
    assert (
        only_problem(empty) == f"{empty}: the file is empty: expected keys such as feeds:, rules:"
    )
    listed = write(tmp_path, "- url: https://a.example/\n", name="list.yaml")
    assert only_problem(listed) == (
        f"{listed}:1: the top level must be a mapping with keys such as feeds:, got a list"
    )


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        timezone: Mars/Olympus
        feeds:
          - url: https://a.example/
            name: A
            tags: {x: 1}
          - url: https://b.example/
            name: A
            max_size: huge
          - url: ftp://c.example/
        rules:
          - name: r
            any: ['']
            notify: [nowhere]
            feeds: [Missing]
        """,
    )
    found = problems(path)
    assert [p.split(": ")[1] for p in found] == [
        "timezone",
        "feeds[0].tags",
        "feeds[1].name",
        "feeds[1].max_size",
        "feeds[2].url",
        "rules[0].any[0]",
        "rules[0].notify[0]",
        "rules[0].feeds[0]",
    ]
    assert found[2].endswith("duplicate feed name 'A' (first at line 4)")


# --- finding the file --------------------------------------------------------------------------


def test_find_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        find_config(None)
    assert str(info.value) == (
        "no config file: looked for ./monitor.yaml and ./config/monitor.yaml; pass -c FILE"
    )
    write(tmp_path, "feeds: []\n", name="config/monitor.yaml")
    assert find_config(None) == tmp_path / "config" / "monitor.yaml"
    write(tmp_path, "feeds: []\n")
    assert find_config(None) == tmp_path / "monitor.yaml"
    assert find_config("elsewhere.yaml") == Path("elsewhere.yaml")


def test_unquoted_trailing_colon_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "feeds: []\nstate: memory:\n")
    assert only_problem(path) == (
        f"{path}:2: YAML syntax error: mapping values are not allowed here "
        "(quote a value that contains ': ' or ends with ':', e.g. \"memory:\")"
    )


def test_user_agent_cannot_inject_headers(tmp_path: Path) -> None:
    path = write(tmp_path, 'poll:\n  user_agent: "bot\\r\\nX-Evil: 1"\n')
    assert only_problem(path) == (
        f"{path}:2: poll.user_agent: must not contain line breaks or control characters"
    )


def test_unreadable_yaml_bytes_and_shapes(tmp_path: Path) -> None:
    control = tmp_path / "control.yaml"
    control.write_text("feeds: []\npoll: {user_agent: 'a\x07b'}\n", encoding="utf-8")
    assert only_problem(control) == f"{control}:2: YAML syntax error: bad character #x0007"
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"feeds: []\n# caf\xe9\n")
    assert only_problem(latin) == f"{latin}:2: cannot read config file: not UTF-8 text"
    two = write(tmp_path, "feeds: []\n---\nrules: []\n", name="two.yaml")
    assert only_problem(two) == (
        f"{two}:2: YAML syntax error: expected a single document in the stream "
        "but found another document"
    )
    deep = write(tmp_path, "feeds: " + "[" * 5000 + "]" * 5000 + "\n", name="deep.yaml")
    assert only_problem(deep) == f"{deep}: YAML error: nesting too deep"


def test_explicit_tag_that_does_not_fit(tmp_path: Path) -> None:
    path = write(tmp_path, "poll:\n  concurrency: !!int many\n")
    assert only_problem(path) == f"{path}:2: poll.concurrency: value does not fit its tag '!!int'"


def test_a_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbftimezone: UTC\n")
    assert load_config(path, env={}).timezone == "UTC"


def test_long_or_escaped_secret_values_are_masked_too(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults:\n  interval: '${LONG}'\n  max_size: '${ESCAPED}'\n")
    env = {"LONG": "x" * 20 + "SECRET" * 20, "ESCAPED": "pass\\word"}
    found = problems(path, env)
    assert found == [
        f"{path}:2: defaults.interval: invalid duration '${{LONG}}...': use e.g. 90s, 5m, 2h",
        f"{path}:3: defaults.max_size: invalid size '${{ESCAPED}}': use e.g. 500KB, 10MiB, 1GB",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90", timedelta(seconds=90)),
        ("12.5", timedelta(seconds=12.5)),
        ("'1h30m'", timedelta(hours=1.5)),
    ],
)
def test_intervals_in_yaml(tmp_path: Path, value: str, expected: timedelta) -> None:
    path = write(
        tmp_path,
        f"defaults: {{interval: {value}, max_size: 2048}}\nfeeds: [{{url: 'http://a.b/'}}]\n",
    )
    (feed,) = load_config(path, env={}).feeds
    assert feed.interval == expected
    assert feed.limits.max_bytes == 2048


def test_duration_of_the_wrong_shape(tmp_path: Path) -> None:
    path = write(tmp_path, "poll:\n  backoff_cap: [1h]\n")
    assert only_problem(path) == (
        f"{path}:2: poll.backoff_cap: expected a duration such as 90s or 5m, got a list"
    )


def test_substituted_values_are_listed_as_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        feeds:
          - url: https://example.org/feed.xml?key=${FEED_KEY}
        """,
    )
    config = load_config(path, env={"FEED_KEY": "abc123secret"})
    assert config.feeds[0].url == "https://example.org/feed.xml?key=abc123secret"
    assert config.secrets == frozenset({"abc123secret"})
