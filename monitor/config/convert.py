"""Validated config models -> the frozen domain `Config`, with every cross-reference checked."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from monitor.config import schema
from monitor.config.explain import validate
from monitor.config.yamlsource import KeyPath, Reporter
from monitor.match.compile import compile_structured, make_regex, make_term, options_problem
from monitor.match.parse import parse_query
from monitor.match.query import Node, TermError, error_with_caret
from monitor.models import (
    DEFAULT_FIELDS,
    AdminSettings,
    BotCommands,
    ChannelSpec,
    Config,
    DeliveryPolicy,
    DigestSettings,
    EmailSettings,
    FeedScope,
    FeedSpec,
    FetchLimits,
    FirstFetch,
    HttpSettings,
    PollPolicy,
    Retention,
    Rule,
    SmtpSettings,
    TelegramSettings,
)

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass
class _Known:
    """Feed names and tags a rule may refer to, including those of feeds that failed
    validation (their own problems are reported; a second complaint would be noise)."""

    feeds: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)


def build(data: dict[str, object], report: Reporter, file: Path) -> Config:
    """The domain config; only meaningful when `report` holds no problems afterwards."""
    top = validate(schema.Top, data, (), report) or schema.Top()
    base = file.parent
    known = _Known()
    feeds = _feeds(top, report, known)
    channels = _channels(top, report, base)
    rules = _rules(top, data, report, feeds, channels, known)
    if top.delivery.retry_base > top.delivery.retry_cap:
        report.add(("delivery", "retry_base"), "retry_base is longer than retry_cap")
    state = _state(top.state, base, report)
    p, d, r = top.poll, top.delivery, top.retention
    return Config(
        path=str(file),
        state=state,
        timezone=top.timezone,
        feeds=tuple(feeds),
        channels=tuple(channels),
        rules=tuple(rules),
        poll=PollPolicy(
            p.concurrency,
            p.per_host,
            p.jitter,
            p.backoff_cap,
            p.max_items,
            p.user_agent,
            p.host_interval,
            p.dead_after,
        ),
        delivery=DeliveryPolicy(d.retry_base, d.retry_cap, d.max_attempts),
        retention=Retention(r.seen, r.text, r.deliveries),
        admin=_admin(top.admin, channels, report),
        http=HttpSettings(top.http.host, top.http.port) if top.http else None,
    )


def _admin(
    admin: schema.Admin | None, channels: list[ChannelSpec], report: Reporter
) -> AdminSettings | None:
    if admin is None:
        return None
    if admin.channel not in {c.name for c in channels}:
        names = ", ".join(sorted(c.name for c in channels)) or "none"
        report.add(("admin", "channel"), f"no channel named '{admin.channel}' (defined: {names})")
        return None
    return AdminSettings(admin.channel, admin.failing_after, admin.silent_factor, admin.silent_min)


def _state(raw: str | None, base: Path, report: Reporter) -> str:
    if raw is None:
        return "sqlite://" + os.path.normpath(base / "monitor.db")
    text = raw.strip()
    scheme = _SCHEME.match(text)
    name = scheme.group(1).lower() if scheme else ""
    if text == "memory:":
        return text
    if text.startswith("sqlite:///"):
        return text
    if name == "sqlite" and not text.startswith("sqlite://") and text[7:]:
        return "sqlite://" + os.path.normpath(base / text[7:])
    if name in ("postgresql", "postgres"):
        # Checked when the store opens (StoreError): several workers share one database.
        return text
    if name:
        # Only the scheme is shown: a DSN may carry a password.
        msg = f"unsupported state '{name}:...': use a file path, sqlite:///abs/path.db or memory:"
        report.add(("state",), msg)
    else:
        return "sqlite://" + os.path.normpath(base / text)
    return ""


def _limits(
    base: FetchLimits, timeout: schema.Timeout | None, max_bytes: int | None, redirects: int | None
) -> FetchLimits:
    t = timeout or schema.Timeout()
    return FetchLimits(
        connect_timeout=t.connect.total_seconds() if t.connect else base.connect_timeout,
        read_timeout=t.read.total_seconds() if t.read else base.read_timeout,
        deadline=t.total.total_seconds() if t.total else base.deadline,
        max_bytes=base.max_bytes if max_bytes is None else max_bytes,
        max_redirects=base.max_redirects if redirects is None else redirects,
    )


def _feeds(top: schema.Top, report: Reporter, known: _Known) -> list[FeedSpec]:
    d = top.defaults
    limits = _limits(FetchLimits(), d.timeout, d.max_size, d.max_redirects)
    out: list[FeedSpec] = []
    first_line: dict[str, int] = {}
    # URL as written (stripped) -> (name, line) of the first feed with it.
    first_url: dict[str, tuple[str, int]] = {}
    for i, raw in enumerate(top.feeds):
        feed = validate(schema.Feed, raw, ("feeds", i), report)
        if feed is None:
            if isinstance(raw, dict):
                known.feeds.update(str(raw[k]) for k in ("name", "url") if k in raw)
                tags = raw.get("tags")
                known.tags.update(map(str, tags if isinstance(tags, list) else [tags] * bool(tags)))
            continue
        name = feed.name or feed.url
        where: KeyPath = ("feeds", i, "name" if feed.name else "url")
        if name in first_line:
            what = f"feed name '{name}'" if feed.name else f"feed URL '{name}' (no name given)"
            report.add(where, f"duplicate {what} (first at line {first_line[name]})")
            continue
        first_line[name] = report.line(where)
        url_at: KeyPath = ("feeds", i, "url")
        url = feed.url.strip()
        if url in first_url:
            # Still converted, so rules naming it are checked as usual; the config is refused.
            other, line = first_url[url]
            report.add(
                url_at,
                f"same URL as feed '{other}' (line {line}): each feed is polled once; "
                "give it more tags instead",
            )
        else:
            first_url[url] = (name, report.line(url_at))
        backfill = (feed.first_fetch or d.first_fetch).backfill
        spec_limits = _limits(limits, feed.timeout, feed.max_size, feed.max_redirects)
        interval = feed.interval or d.interval
        low, high = feed.min_interval or d.min_interval, feed.max_interval or d.max_interval
        if low is not None and low > interval:
            report.add((*url_at[:2], "min_interval"), "min_interval is longer than interval")
        if high is not None and high < interval:
            report.add((*url_at[:2], "max_interval"), "max_interval is shorter than interval")
        out.append(
            FeedSpec(
                name=name,
                url=feed.url,
                interval=interval,
                tags=frozenset(feed.tags),
                first_fetch=FirstFetch(backfill=backfill),
                limits=spec_limits,
                min_interval=low,
                max_interval=high,
                adaptive=d.adaptive if feed.adaptive is None else feed.adaptive,
                allow_private=d.allow_private if feed.allow_private is None else feed.allow_private,
            )
        )
    return out


def _channels(top: schema.Top, report: Reporter, base: Path) -> list[ChannelSpec]:
    if not top.channels:
        return [ChannelSpec(name="console", type="console")]
    out: list[ChannelSpec] = []
    for name, raw in top.channels.items():
        reason = schema.channel_name(name)
        if reason:
            report.add(("channels", name), reason)
        entry = validate(schema.Channel, raw, ("channels", name), report)
        if entry is not None and not reason:
            chan = entry.root
            if isinstance(chan, schema.Telegram):
                out.append(_telegram(name, chan, report, base))
            elif isinstance(chan, schema.Email):
                out.append(_email(name, chan, report, base))
            else:
                out.append(ChannelSpec(name=name, type=chan.type, options=chan.options(base)))
    return out


def _telegram(name: str, chan: schema.Telegram, report: Reporter, base: Path) -> ChannelSpec:
    """A telegram channel: its token registered as a secret (masked in every message and log
    line, even when written into the file), its template read and checked now."""
    where: KeyPath = ("channels", name)
    report.secret((*where, "token"), "token", chan.token)
    template = None
    if chan.template is not None:
        template = _template(os.path.normpath(base / chan.template), (*where, "template"), report)
    settings = TelegramSettings(
        token=chan.token,
        chats=tuple(dict.fromkeys(chan.chat_id)),
        api_url=chan.api_url,
        message_thread_id=chan.message_thread_id,
        disable_web_page_preview=chan.disable_web_page_preview,
        silent=chan.silent,
        template=template,
        group_threshold=chan.group_threshold,
        timeout=chan.timeout,
        commands=BotCommands(chan.commands.allow) if chan.commands else None,
    )
    return ChannelSpec(name, "telegram", {"telegram": settings}, targets=settings.chats)


_PORTS = {"starttls": 587, "tls": 465, "none": 25}


def _email(name: str, chan: schema.Email, report: Reporter, base: Path) -> ChannelSpec:
    """An email channel: its password registered as a secret, its templates read and
    checked now."""
    from monitor.notify.email_render import TemplateProblem, compile_templates

    where: KeyPath = ("channels", name)
    smtp = chan.smtp
    if smtp.password is not None:
        report.secret((*where, "smtp", "password"), "password", smtp.password)
    sources: dict[str, str] = {}
    for key, raw in chan.templates.model_dump().items():
        if raw is not None:
            path = os.path.normpath(base / raw)
            source = _read(path, (*where, "templates", key), report)
            if source is not None:
                sources[key] = source
    try:
        compile_templates(sources)
    except TemplateProblem as exc:
        report.add((*where, "templates"), str(exc))
    settings = EmailSettings(
        smtp=SmtpSettings(
            host=smtp.host,
            port=smtp.port or _PORTS[smtp.security],
            security=smtp.security,
            user=smtp.user,
            password=smtp.password,
            timeout=smtp.timeout,
        ),
        sender=chan.from_,
        to=tuple(dict.fromkeys(chan.to)),
        subject_prefix=chan.subject_prefix,
        digest=DigestSettings(chan.digest.cron, chan.digest.send_empty) if chan.digest else None,
        group_threshold=chan.group_threshold,
        templates=sources,
    )
    return ChannelSpec(name, "email", {"email": settings}, targets=settings.to)


def _read(path: str, where: KeyPath, report: Reporter) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report.add(where, f"cannot read template {path}: {getattr(exc, 'strerror', None) or exc}")
        return None


def _template(path: str, where: KeyPath, report: Reporter) -> str | None:
    from monitor.notify.telegram_render import TemplateProblem, compile_template

    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report.add(where, f"cannot read template {path}: {getattr(exc, 'strerror', None) or exc}")
        return None
    try:
        compile_template(source)
    except TemplateProblem as exc:
        report.add(where, f"template {path}: {exc}")
        return None
    return source


def _rules(
    top: schema.Top,
    data: dict[str, object],
    report: Reporter,
    feeds: list[FeedSpec],
    channels: list[ChannelSpec],
    known: _Known,
) -> list[Rule]:
    known.feeds |= {f.name for f in feeds}
    known.tags |= {t for f in feeds for t in f.tags}
    # Broken channels still count as defined: their own problems are reported already.
    defined = list(top.channels) or [c.name for c in channels]
    out: list[Rule] = []
    first_line: dict[str, int] = {}
    # A rule naming no channel notifies them all, except the admin channel (feed-health
    # notices) unless it is the only one.
    admin = top.admin.channel if top.admin else None
    everyone = tuple(c.name for c in channels if c.name != admin) or tuple(c.name for c in channels)
    for i, raw in enumerate(top.rules):
        rule = validate(schema.Rule, raw, ("rules", i), report)
        if rule is None:
            continue
        here: KeyPath = ("rules", i)
        if rule.name in first_line:
            msg = f"duplicate rule name '{rule.name}' (first at line {first_line[rule.name]})"
            report.add((*here, "name"), msg)
        first_line.setdefault(rule.name, report.line((*here, "name")))
        query = _query(rule, data, here, report)
        _check_scope(rule.feeds, data, (*here, "feeds"), report, known)
        _check_notify(rule.notify, data, (*here, "notify"), report, defined)
        if query is not None:
            fields = tuple(dict.fromkeys(rule.fields)) if rule.fields else DEFAULT_FIELDS
            scope = FeedScope(frozenset(rule.feeds.names), frozenset(rule.feeds.tags))
            notify = tuple(dict.fromkeys(rule.notify)) if rule.notify else ()
            out.append(Rule(rule.name, query, fields, scope, notify or everyone))
    return out


def _check_scope(
    scope: schema.Scope, data: dict[str, object], at: KeyPath, report: Reporter, known: _Known
) -> None:
    # `feeds: [a, b]` and `feeds: a` are shorthands for `feeds: {names: ...}`.
    names_at = (*at, "names") if isinstance(_raw(data, at), dict) else at
    for j, name in enumerate(scope.names):
        if name not in known.feeds:
            report.add(
                _item(data, names_at, j), f"unknown feed '{name}'{_suggest(name, known.feeds)}"
            )
    for j, tag in enumerate(scope.tags):
        if tag not in known.tags:
            report.add(_item(data, (*at, "tags"), j), f"no feed has tag '{tag}'")


def _check_notify(
    notify: tuple[str, ...] | None,
    data: dict[str, object],
    at: KeyPath,
    report: Reporter,
    defined: list[str],
) -> None:
    if notify == ():
        report.add(at, "empty notify list: the rule would alert nobody (omit notify for all)")
    for j, name in enumerate(notify or ()):
        if name not in defined:
            msg = f"rule notifies undefined channel '{name}' (defined: {', '.join(defined)})"
            report.add(_item(data, at, j), msg)


def _query(
    rule: schema.Rule, data: dict[str, object], here: KeyPath, report: Reporter
) -> Node | None:
    lists = {"any": rule.any_, "all": rule.all_, "none": rule.none, "regex": rule.regex}
    if rule.query is not None and any(lists.values()):
        report.add((*here, "query"), "use either query or any/all/none/regex, not both")
        return None
    case_sensitive, stem = rule.case_sensitive, rule.stem
    conflict = options_problem(case_sensitive, stem)
    if conflict:
        report.add((*here, "stem"), conflict)
        return None
    if rule.query is not None:
        try:
            return parse_query(rule.query, case_sensitive=case_sensitive, stem=stem)
        except TermError as exc:
            message = error_with_caret(exc, rule.query)
            report.add((*here, "query"), f"rule '{rule.name}': {message}")
            return None
    ok = True
    for key, texts in lists.items():
        for j, text in enumerate(texts):
            try:
                if key == "regex":
                    make_regex(text, case_sensitive=case_sensitive)
                else:
                    make_term(text, case_sensitive=case_sensitive, stem=stem)
            except TermError as exc:
                report.add(_item(data, (*here, key), j), error_with_caret(exc, text))
                ok = False
    if not ok:
        return None
    try:
        return compile_structured(
            rule.any_, rule.all_, rule.none, rule.regex, case_sensitive=case_sensitive, stem=stem
        )
    except TermError as exc:
        report.add(here, str(exc))
        return None


def _suggest(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _raw(data: object, path: KeyPath) -> object:
    for part in path:
        if isinstance(data, dict) and isinstance(part, str):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _item(data: dict[str, object], path: KeyPath, index: int) -> KeyPath:
    """Where the `index`th entry of a list-or-single-string value was written."""
    return (*path, index) if isinstance(_raw(data, path), list) else path
