"""Log lines: readable or JSON, with feed/channel fields, and secrets never printed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from monitor import logs


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
