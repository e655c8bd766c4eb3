"""The `jsonl` channel: one JSON object per alert appended to a file, for scripts."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from monitor.errors import ChannelError, DeliveryError
from monitor.models import ChannelSpec, Delivery

#: Characters that some line readers (Python's splitlines, JavaScript) treat as line breaks;
#: JSON leaves them raw with ensure_ascii=False, so escape them to keep one record per line.
_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def record(delivery: Delivery) -> dict[str, Any]:
    """The JSON object written for one delivery (a stable, documented shape)."""
    alert = delivery.alert
    matches = alert.matches_for(delivery.channel)
    return {
        "id": delivery.id,
        "channel": delivery.channel,
        "feed": alert.feed,
        "item": alert.item_key,
        "title": alert.title,
        "link": alert.link,
        "summary": alert.summary,
        "published": alert.published.isoformat() if alert.published else None,
        "seen": alert.seen_at.isoformat(),
        "rules": [m.rule for m in matches],
        "terms": list(dict.fromkeys(t for m in matches for t in m.terms)),
        "matches": [
            {"rule": m.rule, "terms": list(m.terms), "fields": list(m.fields)} for m in matches
        ],
    }


class JsonlNotifier:
    """Appends one line per alert to `options["path"]`, with fsync, so a line is durable once
    `send` returns. Lines are written whole with one `write` call (O_APPEND), so concurrent
    readers (`tail -f`) never see half a record.
    """

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self._path = Path(str(spec.options["path"]))

    async def __aenter__(self) -> JsonlNotifier:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChannelError(f"cannot create directory for {self._path}: {exc}") from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, delivery: Delivery) -> None:
        line = json.dumps(record(delivery), ensure_ascii=False).translate(_LINE_BREAKS) + "\n"
        await asyncio.to_thread(self._append, line.encode("utf-8"))

    def _append(self, data: bytes) -> None:
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise DeliveryError(f"cannot open {self._path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                # Disk full mid-line: cut the half-written record off, so the retry appends a
                # whole line after whole lines and readers never see a broken record.
                os.ftruncate(fd, size)
                raise
        except OSError as exc:
            raise DeliveryError(f"cannot append to {self._path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
