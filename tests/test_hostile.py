"""Hostile feed servers against the whole daemon: it keeps running, says what went wrong in
words, and the other feeds carry on.

One loopback FeedServer serves a path per hostile case (BAD-INPUTS.md §2.1-2.3) plus two good
feeds; one config has a feed per case; the real Daemon (real fetcher, parser processes, SQLite
file and jsonl channel) polls everything three times: the first pass seeds, then new items are
published on the good feeds and on every case that should still parse, the second pass must
alert exactly those, and the third (nothing changed) must alert nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.config import load_config
from monitor.daemon import Daemon, OnceReport
from monitor.errors import ConfigError
from monitor.models import FeedState, Item
from tests import feedserver
from tests.builders import write_config
from tests.feedserver import (
    FeedServer,
    connection_reset,
    endless_body,
    gzip_bomb,
    never_answer,
    raw_response,
    redirect_loop,
    redirect_to,
    slow_drip,
    truncated_body,
)

RSS_TYPE = "application/rss+xml; charset=utf-8"
#: The body cap of every feed here; far below the default so the bombs stay cheap.
MAX_SIZE = 1024 * 1024
#: A generous bound on the test process's traced peak over all three passes.
MEMORY_BOUND = 200 * 1024 * 1024
#: Whole-fetch deadline of the cases that never finish on their own.
DEADLINE = "1500ms"
SECRET = "TOPSECRET-7f3c9a-never-to-be-read"
UTF8_PROLOG = '<?xml version="1.0" encoding="utf-8"?>\n'


# --- documents ---------------------------------------------------------------------------------


def item(
    guid: str | None,
    title: str | None,
    *,
    link: str | None = "default",
    date: str | None = "Sat, 28 Nov 2026 06:00:00 GMT",
    extra: str = "",
) -> str:
    """One RSS <item>; None leaves an element out, link "default" derives one from the guid."""
    parts = []
    if guid is not None:
        parts.append(f'<guid isPermaLink="false">{guid}</guid>')
    if title is not None:
        parts.append(f"<title>{title}</title>")
    if link == "default" and guid is not None:
        link = f"https://news.example/{guid}"
    if link not in (None, "default"):
        parts.append(f"<link>{link}</link>")
    if date is not None:
        parts.append(f"<pubDate>{date}</pubDate>")
    return "<item>" + "".join(parts) + extra + "</item>"


def rss(*items: str, prolog: str = UTF8_PROLOG) -> str:
    return (
        f'{prolog}<rss version="2.0"><channel><title>Hostile</title>'
        f"<link>https://news.example/</link><description>test</description>"
        f"{''.join(items)}</channel></rss>"
    )


def dtd(declarations: str) -> str:
    return f'<?xml version="1.0"?>\n<!DOCTYPE rss [\n{declarations}\n]>\n'


OLD = item("old-1", "Markets calm") + item("old-2", "Old talks in Vienna")
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><h1>Log in</h1>"


# --- cases -------------------------------------------------------------------------------------

Serve = Callable[[FeedServer, str], None]


@dataclass(frozen=True)
class Case:
    """One hostile feed: how it is served, and what the daemon must make of it."""

    name: str
    #: Installs the feed's first behaviour at the path.
    serve: Serve
    #: The operator-readable phrase its `last_error` must contain; "" when it must parse.
    error: str = ""
    #: What it serves from the second pass on (new items), for cases that parse.
    publish: Serve | None = None
    #: Titles alerted from this feed on the second pass, each exactly once.
    alerts: tuple[str, ...] = ()
    #: A phrase its `last_warning` must contain at the end ("": must be empty; None: unchecked).
    warning: str | None = None
    #: Extra flow-mapping keys for its feed entry, e.g. "timeout: {total: 1s}".
    options: str = ""
    #: Further assertions on the run.
    check: Callable[[Run, Case], None] | None = None
    #: Set when the daemon is known to get this case wrong (a strict xfail, with the reason).
    bug: str = ""

    @property
    def path(self) -> str:
        return f"/{self.name}.xml"


def handler(make: Callable[[FeedServer, str], Any]) -> Serve:
    """A Serve installing the custom handler `make(server, path)` returns."""
    return lambda server, path: server.handle(path, make(server, path))


def static(body: bytes | str, content_type: str = RSS_TYPE, status: int = 200) -> Serve:
    """A Serve answering `body` every time: no validators, so each pass fetches and parses."""

    def serve(server: FeedServer, path: str) -> None:
        server.set(path, body, status=status, content_type=content_type, validators=False)

    return serve


def timeouts(read: str = "10s", total: str = DEADLINE) -> str:
    return f"timeout: {{connect: 5s, read: {read}, total: {total}}}"


def parses(
    name: str,
    before: bytes | str,
    after: bytes | str,
    alerts: tuple[str, ...],
    *,
    content_type: str = RSS_TYPE,
    warning: str | None = None,
    check: Callable[[Run, Case], None] | None = None,
    bug: str = "",
) -> Case:
    return Case(
        name,
        static(before, content_type),
        publish=static(after, content_type),
        alerts=alerts,
        warning=warning,
        check=check,
        bug=bug,
    )


# Checks beyond "the right titles alerted once".


def check_entity_bomb(run: Run, case: Case) -> None:
    for stored in run.items[case.name]:
        assert "A" * 100 not in stored.title
        assert len(stored.title) <= 1000


def check_xxe(run: Run, case: Case) -> None:
    assert run.server.hits("/xxe-probe.dtd") == 0
    assert run.server.hits("/xxe-probe.txt") == 0
    assert [a["title"] for a in run.alerts_of(case.name)] == ["Talks &xxe; leak"]


def check_no_identity(run: Run, case: Case) -> None:
    keys = sorted(a["item"].partition(":")[0] for a in run.alerts_of(case.name))
    assert keys == ["hash", "link"]
    assert run.states[case.name].last_warning == "1 items skipped: no id, link, title or summary"


def check_duplicates(run: Run, case: Case) -> None:
    assert [i.title for i in run.items[case.name] if i.key == "id:dup-new"] == ["Talks first copy"]


def check_future_dates(run: Run, case: Case) -> None:
    published = {a["title"]: a["published"] for a in run.alerts_of(case.name)}
    # The feed's claim is kept as it is; novelty never looks at it (seen_at does), so the
    # third pass, whose document is the same, alerts nothing (checked for every case).
    assert published == {
        "Talks set for 2100": "2100-01-01T00:00:00+00:00",
        "Talks at the end of time": "9999-12-31T23:59:59+00:00",
    }
    first, second = run.pass_times[1]
    for alert in run.alerts_of(case.name):
        assert first <= datetime.fromisoformat(alert["seen"]) <= second


def check_no_dates(run: Run, case: Case) -> None:
    assert [a["published"] for a in run.alerts_of(case.name)] == [None, None, None]
    first, second = run.pass_times[1]
    for alert in run.alerts_of(case.name):
        assert first <= datetime.fromisoformat(alert["seen"]) <= second


def check_control_characters(run: Run, case: Case) -> None:
    for stored in run.items[case.name]:
        assert stored.title.isprintable(), repr(stored.title)


def check_unsafe_link(run: Run, case: Case) -> None:
    [alert] = run.alerts_of(case.name)
    assert alert["link"] == ""
    assert alert["item"] == "id:js-2"


def check_moved(run: Run, case: Case) -> None:
    [alert] = run.alerts_of(case.name)
    # Relative links resolve against the final URL, after the redirect.
    assert alert["link"] == run.server.url("/moved/story-2")
    assert run.server.hits("/moved/feed.xml") == 3


def check_json(run: Run, case: Case) -> None:
    assert [a["item"] for a in run.alerts_of(case.name)] == ["id:42"]


def moved(target: str) -> tuple[Serve, Serve]:
    def serve(server: FeedServer, path: str) -> None:
        server.handle(path, redirect_to(server.url("/moved/feed.xml"), 301))
        server.set(target, rss(item("m-1", "Old talks", link="/moved/story-1")), validators=False)

    def publish(server: FeedServer, path: str) -> None:
        body = rss(
            item("m-2", "Talks moved here", link="story-2"),
            item("m-1", "Old talks", link="/moved/story-1"),
        )
        server.set(target, body, validators=False)

    return serve, publish


def redirect_chain(server: FeedServer, path: str) -> None:
    hops = [path, *(f"{path}/{n}" for n in range(1, 6))]
    for here, there in itertools.pairwise(hops):
        server.handle(here, redirect_to(server.url(there)))
    server.set(hops[-1], rss(OLD), validators=False)


def xxe_declarations(secret: Path) -> str:
    return "\n".join(
        [
            f'<!ENTITY xxe SYSTEM "{secret.as_uri()}">',
            '<!ENTITY net SYSTEM "http://127.0.0.1:{port}/xxe-probe.txt">',
            '<!ENTITY % pe SYSTEM "http://127.0.0.1:{port}/xxe-probe.dtd">',
            "%pe;",
        ]
    )


def xxe_serve(secret: Path, *, new: bool) -> Serve:
    def serve(server: FeedServer, path: str) -> None:
        port = server.base.rsplit(":", 1)[1]
        items = [item("x-1", "Old &xxe; &net;", extra="<description>&xxe;</description>")]
        if new:
            items.insert(
                0, item("x-2", "Talks &xxe; leak", extra="<description>&net;</description>")
            )
        prolog = dtd(xxe_declarations(secret).replace("{port}", port))
        server.set(path, rss(*items, prolog=prolog), validators=False)

    return serve


LAUGHS = "\n".join(
    ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10)]
)
QUADRATIC = f'<!ENTITY a "{"A" * 50_000}">'
QUADRATIC_TITLE = "&a;" * 20_000
CYRILLIC_OLD = item("ru-1", "Новости дня")
CYRILLIC_NEW = item("ru-2", "Переговоры в Женеве")
STRAY = b"\xff"  # never valid in UTF-8


def cases(secret: Path) -> list[Case]:
    moved_serve, moved_publish = moved("/moved/feed.xml")
    return [
        # --- fetch: time -----------------------------------------------------------------------
        Case(
            "never-answers",
            handler(lambda s, p: never_answer()),
            error="timed out after 1.5s (whole-fetch deadline)",
            options=timeouts(),
        ),
        Case(
            "never-answers-read-timeout",
            handler(lambda s, p: never_answer()),
            error="read timed out after 0.5s",
            options=timeouts(read="500ms", total="10s"),
        ),
        Case(
            "one-byte-a-second",
            handler(lambda s, p: slow_drip(1.0, 1000)),
            error="timed out after 1.5s (whole-fetch deadline)",
            options=timeouts(),
        ),
        # --- fetch: size -----------------------------------------------------------------------
        Case(
            "endless-body",
            handler(lambda s, p: endless_body()),
            error="response body over 1 MiB (limit)",
            options=timeouts(total="20s"),
        ),
        Case(
            "declared-over-limit",
            static(b"<rss>" + b"x" * (2 * MAX_SIZE)),
            error="response body over 1 MiB (limit)",
        ),
        Case(
            "gzip-bomb",
            handler(lambda s, p: gzip_bomb(64 * MAX_SIZE)),
            error="response body over 1 MiB (limit)",
        ),
        Case(
            "corrupt-gzip",
            handler(
                lambda s, p: raw_response(
                    200,
                    b"\x1f\x8b\x08\x00garbage-garbage",
                    {"Content-Type": RSS_TYPE, "Content-Encoding": "gzip"},
                )
            ),
            error="corrupt gzip body",
        ),
        Case(
            "brotli-unasked",
            handler(
                lambda s, p: raw_response(
                    200, b"\x0b\x02\x80", {"Content-Type": RSS_TYPE, "Content-Encoding": "br"}
                )
            ),
            error="unsupported content encoding 'br'",
        ),
        Case(
            "truncated-body",
            handler(lambda s, p: truncated_body(rss(OLD).encode()[:80], 5000)),
            error="server protocol error: peer closed connection without sending complete",
        ),
        Case(
            "connection-reset",
            handler(lambda s, p: connection_reset()),
            error="connection reset by peer",
        ),
        # --- fetch: redirects ------------------------------------------------------------------
        Case("redirect-loop", handler(lambda s, p: redirect_loop()), error="too many redirects"),
        Case("redirect-chain", redirect_chain, error="too many redirects (more than 3)"),
        Case(
            "redirect-to-file",
            handler(lambda s, p: redirect_to("file:///etc/passwd")),
            error="redirect to unsupported scheme 'file'",
        ),
        Case(
            "redirect-to-ftp",
            handler(lambda s, p: redirect_to("ftp://127.0.0.1/feed.xml")),
            error="redirect to unsupported scheme 'ftp'",
        ),
        Case(
            "redirect-without-location",
            handler(lambda s, p: raw_response(302, b"", {})),
            error="redirect without a Location (HTTP 302)",
        ),
        Case(
            "moved-permanently",
            moved_serve,
            publish=moved_publish,
            alerts=("Talks moved here",),
            check=check_moved,
        ),
        # --- fetch: status and empty -----------------------------------------------------------
        Case("not-found", static("not found", "text/plain", 404), error="HTTP 404"),
        Case("empty-body", static(b""), error="empty response body"),
        # --- not a feed ------------------------------------------------------------------------
        Case(
            "html-page",
            static(HTML_PAGE, "text/html; charset=utf-8"),
            error="not a feed: looks like an HTML page",
        ),
        Case(
            "html-page-as-rss",
            static(HTML_PAGE, RSS_TYPE),
            error="not a feed: looks like an HTML page",
        ),
        Case(
            "other-xml",
            static('<?xml version="1.0"?><note><to>Ana</to></note>', "application/xml"),
            error="not a feed: no RSS, Atom or JSON Feed content found",
        ),
        Case(
            "invalid-json",
            static(
                b'{"version": "https://jsonfeed.org/version/1.1", "items": [', "application/json"
            ),
            error="invalid JSON",
        ),
        Case(
            "unknown-json-version",
            static(b'{"version": "https://jsonfeed.org/version/1234", "items": []}'),
            error="unsupported JSON Feed version",
        ),
        # --- content type ----------------------------------------------------------------------
        *(
            parses(
                f"served-as-{kind.replace('/', '-')}",
                rss(OLD),
                rss(item(f"{kind}-new", f"Talks served as {kind}"), OLD),
                (f"Talks served as {kind}",),
                content_type=kind,
                warning=f"served as non-XML ({kind} is not an XML media type); parsed anyway",
            )
            for kind in ("text/plain", "application/octet-stream", "text/html")
        ),
        Case(
            "no-content-type",
            handler(lambda s, p: raw_response(200, rss(OLD).encode())),
            publish=handler(
                lambda s, p: raw_response(200, rss(item("nct-new", "Talks untyped"), OLD).encode())
            ),
            alerts=("Talks untyped",),
            warning="",
        ),
        # --- charsets --------------------------------------------------------------------------
        parses(
            "lying-charset-header",
            rss(CYRILLIC_OLD, prolog='<?xml version="1.0" encoding="windows-1251"?>\n').encode(
                "cp1251"
            ),
            rss(
                CYRILLIC_NEW, CYRILLIC_OLD, prolog='<?xml version="1.0" encoding="windows-1251"?>\n'
            ).encode("cp1251"),
            ("Переговоры в Женеве",),
            warning="declared charset 'utf-8' was wrong; decoded as windows-1251",
        ),
        parses(
            "unknown-charset-label",
            rss(OLD),
            rss(item("bogus-new", "Talks in Zürich"), OLD),
            ("Talks in Zürich",),
            content_type="application/rss+xml; charset=bogus-8",
            warning="declared charset 'bogus-8' was wrong; decoded as utf-8",
        ),
        parses(
            "latin1-declared-utf8",
            rss(item("l-1", "Crème brûlée for the summit")).encode("latin-1"),
            rss(
                item("l-2", "Café talks in Paris"), item("l-1", "Crème brûlée for the summit")
            ).encode("latin-1"),
            ("Café talks in Paris",),
            warning="declared charset 'utf-8' was wrong",
            check=lambda run, case: _titles_are(
                run, case, {"Café talks in Paris", "Crème brûlée for the summit"}
            ),
        ),
        parses(
            "latin1-declared-utf8-portuguese",
            rss(item("pt-1", "Ação")).encode("latin-1"),
            rss(item("pt-2", "São Paulo talks"), item("pt-1", "Ação")).encode("latin-1"),
            ("São Paulo talks",),
            warning="declared charset 'utf-8' was wrong",
            check=lambda run, case: _titles_are(run, case, {"São Paulo talks", "Ação"}),
        ),
        parses(
            "utf8-with-one-bad-byte",
            rss(CYRILLIC_OLD, item("ru-0", "Спорт", extra="<description>x</description>"))
            .encode()
            .replace(b"<description>x", b"<description>" + STRAY),
            rss(
                CYRILLIC_NEW,
                CYRILLIC_OLD,
                item("ru-0", "Спорт", extra="<description>x</description>"),
            )
            .encode()
            .replace(b"<description>x", b"<description>" + STRAY),
            ("Переговоры в Женеве",),
            check=lambda run, case: _titles_are(
                run, case, {"Переговоры в Женеве", "Новости дня", "Спорт"}
            ),
        ),
        # --- entities --------------------------------------------------------------------------
        parses(
            "entity-quadratic-blowup",
            rss(item("q-1", QUADRATIC_TITLE), prolog=dtd(QUADRATIC)),
            rss(
                item("q-2", "Talks despite the bomb"),
                item("q-1", QUADRATIC_TITLE),
                prolog=dtd(QUADRATIC),
            ),
            ("Talks despite the bomb",),
            warning="DTD entity declarations were removed before parsing",
            check=check_entity_bomb,
        ),
        parses(
            "entity-billion-laughs",
            rss(item("b-1", "&lol9;"), prolog=dtd(LAUGHS)),
            rss(item("b-2", "Talks and &lol9;"), item("b-1", "&lol9;"), prolog=dtd(LAUGHS)),
            ("Talks and &lol9;",),
            warning="DTD entity declarations were removed before parsing",
            check=check_entity_bomb,
        ),
        Case(
            "external-entities",
            xxe_serve(secret, new=False),
            publish=xxe_serve(secret, new=True),
            alerts=("Talks &xxe; leak",),
            warning="DTD entity declarations were removed before parsing",
            check=check_xxe,
        ),
        # --- identity, dates, content ----------------------------------------------------------
        parses(
            "no-guid-link-or-title",
            rss(
                item(None, None, link="https://news.example/only-link", date=None),
                item(None, "Title only, no talks", link=None),
                item(None, None, link=None, date=None, extra="<author>nobody</author>"),
            ),
            rss(
                item(None, "Talks by link only", link="https://news.example/new-link"),
                item(None, "Talks by title only", link=None),
                item(None, None, link="https://news.example/only-link", date=None),
                item(None, "Title only, no talks", link=None),
                item(None, None, link=None, date=None, extra="<author>nobody</author>"),
            ),
            ("Talks by link only", "Talks by title only"),
            warning="1 items skipped: no id, link, title or summary",
            check=check_no_identity,
        ),
        parses(
            "duplicate-guids",
            rss(item("dup", "Talks A"), item("dup", "Talks B"), item("dup", "Talks C")),
            rss(
                item("dup-new", "Talks first copy"),
                item("dup-new", "Talks second copy"),
                item("dup", "Talks A"),
                item("dup", "Talks B"),
                item("dup-new", "Talks third copy"),
            ),
            ("Talks first copy",),
            check=check_duplicates,
        ),
        parses(
            "same-link-distinct-guids",
            rss(item("s-1", "Upcoming one", link="https://news.example/upcoming")),
            rss(
                item("s-2", "Talks upcoming", link="https://news.example/upcoming"),
                item("s-1", "Upcoming one", link="https://news.example/upcoming"),
            ),
            ("Talks upcoming",),
        ),
        parses(
            "future-dates",
            rss(item("f-1", "Old talks from the future", date="Fri, 01 Jan 2100 00:00:00 GMT")),
            rss(
                item("f-2", "Talks set for 2100", date="Fri, 01 Jan 2100 00:00:00 GMT"),
                item("f-3", "Talks at the end of time", date="Fri, 31 Dec 9999 23:59:59 GMT"),
                item("f-1", "Old talks from the future", date="Fri, 01 Jan 2100 00:00:00 GMT"),
            ),
            ("Talks set for 2100", "Talks at the end of time"),
            check=check_future_dates,
        ),
        parses(
            "unparseable-dates",
            rss(item("d-1", "Old talks", date="yesterday-ish")),
            rss(
                item("d-2", "Talks, date not a date", date="not a date"),
                item("d-3", "Talks, date impossible", date="Mon, 99 Feb 2024 25:61:00 GMT"),
                item("d-4", "Talks, date empty", date=""),
                item("d-1", "Old talks", date="yesterday-ish"),
            ),
            ("Talks, date not a date", "Talks, date impossible", "Talks, date empty"),
            check=check_no_dates,
        ),
        parses(
            "control-characters",
            rss(item("c-1", "Old\x07 news&#0;")),
            rss(
                item("c-2", "Talks\x00 with\x07 bells&#7; and\u2028lines&#x1b;"),
                item("c-1", "Old\x07 news&#0;"),
            ),
            ("Talks with bells and lines",),
            warning="not well-formed",
            check=check_control_characters,
        ),
        parses(
            "bom-and-blank-lines-first",
            b"\xef\xbb\xbf\n\n  " + rss(OLD).encode(),
            b"\xef\xbb\xbf\n\n  " + rss(item("bom-new", "Talks after a BOM"), OLD).encode(),
            ("Talks after a BOM",),
            warning="not well-formed",
        ),
        parses(
            "markup-in-titles",
            rss(OLD),
            rss(item("h-1", "&lt;b&gt;Talks&lt;/b&gt; at AT&amp;amp;T &#8217;26"), OLD),
            ("Talks at AT&T ’26",),
        ),
        parses(
            "javascript-link",
            rss(item("js-1", "Old", link="javascript:alert(1)")),
            rss(
                item("js-2", "Talks with a script link", link="javascript:alert(1)"),
                item("js-1", "Old", link="javascript:alert(1)"),
            ),
            ("Talks with a script link",),
            check=check_unsafe_link,
        ),
        parses(
            "json-feed-wrong-types",
            json.dumps(
                {
                    "version": "https://jsonfeed.org/version/1.1",
                    "title": ["not", "a", "string"],
                    "items": [{"id": 3.1415, "title": ["Talks"], "date_published": "soon"}, 5],
                }
            ),
            json.dumps(
                {
                    "version": "https://jsonfeed.org/version/1.1",
                    "title": ["not", "a", "string"],
                    "items": [
                        {"id": 42, "title": "Talks with a numeric id", "attachments": [1, "x"]},
                        {"id": 3.1415, "title": ["Talks"], "date_published": "soon"},
                        5,
                    ],
                }
            ),
            ("Talks with a numeric id",),
            content_type="application/feed+json",
            check=check_json,
        ),
    ]


def _titles_are(run: Run, case: Case, titles: set[str]) -> None:
    assert {i.title for i in run.items[case.name]} == titles


GOOD = {
    "good-a": (
        rss(item("a-1", "Talks open in Geneva"), item("a-2", "Weather: rain")),
        rss(item("a-3", "Talks resume in Oslo"), item("a-1", "Talks open in Geneva")),
        ("Talks resume in Oslo",),
    ),
    "good-b": (
        rss(item("b-1", "Переговоры начались"), item("b-2", "Sport")),
        rss(
            item("b-3", "Переговоры продолжаются"),
            item("b-4", "Talks stall"),
            item("b-1", "Переговоры начались"),
        ),
        ("Переговоры продолжаются", "Talks stall"),
    ),
}


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the three passes produced, for the per-case tests to look at."""

    server: FeedServer
    directory: Path
    reports: list[OnceReport]
    #: (start, end) of each pass, aware UTC.
    pass_times: list[tuple[datetime, datetime]]
    #: jsonl records written by each pass.
    alerts_by_pass: list[list[dict[str, Any]]]
    states: dict[str, FeedState]
    items: dict[str, list[Item]]
    peak_memory: int
    feeds: list[str] = field(default_factory=list)

    def alerts_of(self, feed: str, n: int = 1) -> list[dict[str, Any]]:
        return [a for a in self.alerts_by_pass[n] if a["feed"] == feed]


def write(directory: Path, server: FeedServer, all_cases: list[Case]) -> Path:
    entries = [f"  - {{name: {name}, url: '{server.url(f'/{name}.xml')}'}}" for name in GOOD] + [
        f"  - {{name: {c.name}, url: '{server.url(c.path)}'"
        + (f", {c.options}" if c.options else "")
        + "}"
        for c in all_cases
    ]
    feeds = "\n".join(entries)
    return write_config(
        directory / "monitor.yaml",
        f"""
state: state.db
defaults:
  timeout: {{connect: 5s, read: 10s, total: 15s}}
  max_size: 1MiB
  max_redirects: 3
poll: {{concurrency: 100, per_host: 100}}
feeds:
{feeds}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - name: talks
    any: [talks, переговоры]
""",
    )


def read_alerts(directory: Path) -> list[dict[str, Any]]:
    path = directory / "alerts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def three_passes(path: Path, server: FeedServer, all_cases: list[Case]) -> Run:
    directory = path.parent
    reports, times, by_pass = [], [], []
    seen = 0
    tracemalloc.start()
    try:
        async with Daemon(load_config(path)) as daemon:
            for n in range(3):
                if n == 1:
                    for name, (_, after, _) in GOOD.items():
                        server.set(f"/{name}.xml", after, validators=False)
                    for case in all_cases:
                        if case.publish is not None:
                            case.publish(server, case.path)
                start = datetime.now(UTC)
                reports.append(await daemon.once())
                times.append((start, datetime.now(UTC)))
                written = read_alerts(directory)
                by_pass.append(written[seen:])
                seen = len(written)
            states = {s.name: s for s in await daemon.store.feed_states()}
            since = datetime(2000, 1, 1, tzinfo=UTC)
            items = {name: await daemon.store.recent_items(since, name) for name in states}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Run(server, directory, reports, times, by_pass, states, items, peak)


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    secret = tmp_path_factory.mktemp("secret") / "secret.txt"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    return secret


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, secret_file: Path) -> Iterator[Run]:
    directory = tmp_path_factory.mktemp("hostile")
    all_cases = cases(secret_file)
    # Every feed connects at once; socketserver's listen backlog of 5 would drop most of the
    # SYNs and the kernel would retry them 1 s and 3 s later, a delay of the test server's.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(feedserver._Server, "request_queue_size", 128)
        server = FeedServer().start()
    with server:
        for name, (before, _, _) in GOOD.items():
            server.set(f"/{name}.xml", before, validators=False)
        for case in all_cases:
            case.serve(server, case.path)
        path = write(directory, server, all_cases)
        result = asyncio.run(three_passes(path, server, all_cases))
        result.feeds = [*GOOD, *(c.name for c in all_cases)]
        yield result


def params() -> list[Any]:
    return [
        pytest.param(
            case,
            id=case.name,
            marks=[pytest.mark.xfail(reason=case.bug, strict=True)] if case.bug else [],
        )
        for case in cases(Path("/nonexistent/secret.txt"))
    ]


# --- the assertions ----------------------------------------------------------------------------


def test_every_pass_completes_with_an_outcome_for_every_feed(run: Run) -> None:
    assert len(run.reports) == 3
    for report in run.reports:
        assert sorted(p.feed for p in report.polls) == sorted(run.feeds)
        assert report.pending == 0  # every alert went out within its own pass


def test_the_good_feeds_alert_their_new_items_despite_the_hostile_ones(run: Run) -> None:
    for name, (_, _, titles) in GOOD.items():
        for report in run.reports:
            [outcome] = [p for p in report.polls if p.feed == name]
            assert outcome.status == "ok", outcome.error
        assert Counter(a["title"] for a in run.alerts_of(name)) == Counter(titles)
        state = run.states[name]
        assert (state.last_error, state.consecutive_failures, state.seeded) == ("", 0, True)


def test_only_the_expected_items_alert_and_nothing_twice(run: Run) -> None:
    assert run.alerts_by_pass[0] == []  # the first pass seeds
    assert run.alerts_by_pass[2] == []  # nothing changed: nothing new
    keys = [(a["feed"], a["item"]) for a in run.alerts_by_pass[1]]
    assert len(keys) == len(set(keys))
    assert {a["feed"] for a in run.alerts_by_pass[1]} <= {
        *GOOD,
        *(c.name for c in cases(Path("/x")) if c.alerts),
    }


def test_memory_stays_bounded(run: Run) -> None:
    # Bombs of 64 MiB (gzip) and 1e9 characters (entities) against a 1 MiB cap: the traced
    # peak of this process (fetching, decoding, the server) stays far below either. Parse
    # workers are separate processes capped by RLIMIT_AS (monitor/sources/workers.py).
    assert run.peak_memory < MEMORY_BOUND


def test_no_external_entity_was_read_or_fetched(run: Run) -> None:
    assert run.server.hits("/xxe-probe.dtd") == 0
    assert run.server.hits("/xxe-probe.txt") == 0
    for name, stored in run.items.items():
        for found in stored:
            assert SECRET not in repr(found), name
    assert SECRET not in (run.directory / "alerts.jsonl").read_text(encoding="utf-8")
    for state_file in run.directory.glob("state.db*"):
        assert SECRET.encode() not in state_file.read_bytes()


@pytest.mark.parametrize("case", params())
def test_hostile_feed(run: Run, case: Case) -> None:
    state = run.states[case.name]
    outcomes = [p for r in run.reports for p in r.polls if p.feed == case.name]
    if case.error:
        # Recorded in words, on every pass, and nothing from the body was kept.
        assert case.error in state.last_error
        assert "\n" not in state.last_error
        assert "internal error" not in state.last_error
        assert len(state.last_error) < 300
        assert [o.status for o in outcomes] == ["error"] * 3
        assert state.consecutive_failures == 3
        assert not state.seeded
        assert run.items[case.name] == []
    else:
        assert [o.status for o in outcomes] == ["ok"] * 3, [o.error for o in outcomes]
        assert (state.last_error, state.consecutive_failures, state.seeded) == ("", 0, True)
        assert outcomes[1].new_items >= len(case.alerts)
        assert outcomes[2].new_items == 0
        if case.warning is not None:
            if case.warning:
                assert case.warning in state.last_warning
            else:
                assert state.last_warning == ""
    assert Counter(a["title"] for a in run.alerts_of(case.name)) == Counter(case.alerts)
    if case.check is not None:
        case.check(run, case)


# --- outside the table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/feed.xml",
        "gopher://127.0.0.1/",
        "data:,x",
        "feed://x",
    ],
)
def test_a_feed_url_with_a_non_http_scheme_is_refused_when_the_config_loads(
    tmp_path: Path, url: str
) -> None:
    path = write_config(
        tmp_path / "monitor.yaml",
        f"feeds:\n  - {{name: bad, url: '{url}'}}\nrules:\n  - {{name: r, any: [x]}}\n",
    )
    with pytest.raises(ConfigError, match=r"unsupported scheme|not an absolute URL"):
        load_config(path)


@pytest.mark.parametrize(
    ("date", "timezone"),
    [
        ("Fri, 31 Dec 9999 23:59:59 GMT", "Europe/Berlin"),
        ("Mon, 01 Jan 0001 00:00:00 GMT", "America/New_York"),
    ],
    ids=["end-of-time-east", "start-of-time-west"],
)
async def test_an_extreme_date_is_delivered_in_a_local_timezone(
    tmp_path: Path,
    feed_server: FeedServer,
    capsys: pytest.CaptureFixture[str],
    date: str,
    timezone: str,
) -> None:
    feed_server.set("/edge.xml", rss(OLD), validators=False)
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""
state: state.db
timezone: {timezone}
feeds:
  - {{name: edge, url: '{feed_server.url("/edge.xml")}'}}
channels:
  desk: {{type: console}}
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - name: talks
    any: [talks]
""",
    )
    async with Daemon(load_config(path)) as daemon:
        await daemon.once()
        feed_server.set(
            "/edge.xml",
            rss(item("e-1", "Talks beyond the calendar", date=date), OLD),
            validators=False,
        )
        await daemon.once()
        console = await daemon.store.deliveries(channel="desk")
    assert [a["title"] for a in read_alerts(tmp_path)] == ["Talks beyond the calendar"]
    assert [(d.status, d.last_error) for d in console] == [("sent", "")]
    assert "Talks beyond the calendar" in capsys.readouterr().out
