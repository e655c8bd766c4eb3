"""Logging: readable lines or JSON lines, named feeds and channels, secrets redacted.

Code logs with `extra={"feed": ..., "channel": ...}`; those fields become `feed=...` on a text
line and keys of a JSON line. Every handler redacts bot tokens, URL credentials and any secret
value registered with `register_secret`, in the message and in tracebacks (`monitor.redact`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from monitor.redact import redact, register_secret

#: `extra` keys rendered on each line, in this order.
FIELDS = ("feed", "channel", "target", "delivery", "rule", "attempt", "status", "user")

# The redaction lives in monitor.redact; these names stay here for the code that logs.
__all__ = ["FIELDS", "redact", "register_secret", "setup"]


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self._json = json_lines

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = {k: v for k in FIELDS if (v := getattr(record, k, None)) is not None}
        trace = self.formatException(record.exc_info) if record.exc_info else ""
        when = datetime.fromtimestamp(record.created, UTC)
        if self._json:
            data: dict[str, object] = {
                "time": when.isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": message,
                **fields,
            }
            if trace:
                data["exception"] = trace
            return redact(json.dumps(data, ensure_ascii=False, default=str))
        parts = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        line = f"{when:%Y-%m-%d %H:%M:%S} {record.levelname:<7} {message}"
        line = f"{line}  {parts}" if parts else line
        return redact(f"{line}\n{trace}" if trace else line)


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or " " in text else text


def setup(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger once for the process (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(json_lines=fmt == "json"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO (a Telegram token sits in the path); APScheduler
    # logs every job run. Neither helps an operator at INFO.
    for noisy in ("httpx", "httpcore", "apscheduler", "telegram", "aiosmtpd", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
