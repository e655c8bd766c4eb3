"""Log lines: readable or JSON, with feed/channel fields, and secrets never printed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from monitor import logs
from monitor.redact import mask_target, redact, redact_data, register_secret, safe_dsn


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_text_lines_carry_fields(stream: io.StringIO) -> None:
    logs.setup("info", "text", stream)
    logging.getLogger("monitor.poll").info("polled: %d new", 3, extra={"feed": "BBC World"})
    line = stream.getvalue().strip()
    assert line.endswith('INFO    polled: 3 new  feed="BBC World"')


def test_json_lines_parse_and_carry_fields(stream: io.StringIO) -> None:
    logs.setup("debug", "json", stream)
    logging.getLogger("monitor.dispatch").warning("retry", extra={"channel": "desk", "delivery": 7})
    record = json.loads(stream.getvalue())
    assert record["level"] == "warning"
    assert record["message"] == "retry"
    assert (record["channel"], record["delivery"]) == ("desk", 7)


def test_tokens_credentials_and_registered_secrets_are_redacted(stream: io.StringIO) -> None:
    logs.setup("info", "text", stream)
    logs.register_secret("s3cr3t-value-from-env")
    log = logging.getLogger("monitor.test")
    log.error("POST https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/send")
    log.error("GET https://alice:hunter22@feeds.example/private.xml failed")
    log.error("key is s3cr3t-value-from-env")
    try:
        raise RuntimeError("boom with s3cr3t-value-from-env")
    except RuntimeError:
        log.exception("crashed")
    text = stream.getvalue()
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw" not in text
    assert "bot<redacted>" in text
    assert "hunter22" not in text
    assert "https://<redacted>@feeds.example/private.xml" in text
    assert "s3cr3t-value-from-env" not in text


def test_library_loggers_are_quieted(stream: io.StringIO) -> None:
    logs.setup("info", "text", stream)
    logging.getLogger("httpx").info("HTTP Request: POST https://api.telegram.org/botX/send")
    assert stream.getvalue() == ""


def test_secret_query_values_in_free_text_are_redacted() -> None:
    """An error message quoting a URL (or a bare query) keeps no `?token=`-like value."""
    text = redact(
        "invalid URL 'feeds.example/x.xml?token=abc123&edition=world&api_key=k-9' (HTTP 403)"
    )
    assert text == (
        "invalid URL 'feeds.example/x.xml?token=<redacted>&edition=world&api_key=<redacted>' "
        "(HTTP 403)"
    )
    assert redact("GET https://h.example/f?sig=xyz;Password=p4") == (
        "GET https://h.example/f?sig=<redacted>;Password=<redacted>"
    )
    assert redact(text) == text  # idempotent


def test_short_values_are_no_secrets() -> None:
    register_secret("587")
    assert redact("port 587, 0.587 s") == "port 587, 0.587 s"
    assert redact("port 587", ["587"]) == "port 587"
    assert redact("key q-secret-9", ["q-secret-9"]) == "key <redacted>"


def test_structures_are_redacted_string_by_string() -> None:
    quoted = 'pa"ss\\word-123'
    data = {
        "name": f"wire {quoted}",
        quoted: [f"x{quoted}y", 587, 0.587, None, True],
        "url": "https://u:p@h.example/?token=t",
    }
    assert redact_data(data, [quoted, "587"]) == {
        "name": "wire <redacted>",
        "<redacted>": ["x<redacted>y", 587, 0.587, None, True],
        "url": "https://<redacted>@h.example/?token=<redacted>",
    }


def test_state_locations_and_targets_are_shown_without_what_identifies_them() -> None:
    assert safe_dsn("postgresql://monitor:s3cret@db:5432/news?password=x") == (
        "postgresql://db:5432/news"
    )
    assert safe_dsn("postgresql://monitor@[::1]/news") == "postgresql://[::1]/news"
    assert mask_target("ann@example.org") == "a…@example.org"
    assert mask_target("-1001234567890") == "…7890"
    assert mask_target("42") == "…"
    assert mask_target("") == ""
