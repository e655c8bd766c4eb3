"""Keeping secrets out of everything the process shows: logs, the HTTP endpoint, CLI output.

- `redact(text)`: free text (a log line, an error message): bot tokens, URL credentials, the
  values of secret-looking query parameters (`?token=...`, `&api_key=...`) and every secret
  registered with `register_secret` (the config's `${VAR}` values) are replaced.
- `redact_data(data, secrets)`: the same for every string of a JSON-able structure, before it
  is serialised (serialising first would escape a secret holding `"` or `\\` out of reach, and
  replacing inside the text could corrupt it).
- `safe_url(url)`: a URL fit to show: no user or password, secret-looking query values
  replaced, no fragment.
- `safe_dsn(state)`: a state location (`sqlite:...`, `postgresql://...`) with scheme, host and
  path only.
- `mask_target(target)`: a destination (email address, chat id) shortened so it identifies one
  to its owner without spelling it out.

Secrets shorter than `MIN_SECRET` characters are never searched for: a `${VAR}` set to `587`
would otherwise replace every 587 in the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Shortest value `register_secret` (and `redact_data`) takes as a secret.
MIN_SECRET = 6
REDACTED = "<redacted>"

_TOKEN = re.compile(r"bot\d{3,}:[A-Za-z0-9_-]{20,}")
_USERINFO = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")
_SECRET_NAME = r"key|token|secret|pass|auth|sig|session|credential|private"
_SECRET_PARAM = re.compile(_SECRET_NAME, re.IGNORECASE)
#: `?name=value` / `&name=value` / `;name=value` in text, where the name looks secret.
_SECRET_QUERY = re.compile(
    rf"(?<=[?&;])([\w.\-\[\]%]*(?:{_SECRET_NAME})[\w.\-\[\]%]*=)[^&;#\s\"'<>]+", re.IGNORECASE
)

#: Registered secrets, longest first (a secret containing another is replaced whole). A tuple
#: replaced, never changed in place: `redact` may run in a worker thread meanwhile.
_secrets: tuple[str, ...] = ()


def register_secret(value: str) -> None:
    """Never show `value` (tokens, passwords from the config); values shorter than
    MIN_SECRET are ignored."""
    global _secrets
    if len(value) >= MIN_SECRET and value not in _secrets:
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without bot tokens, URL credentials, secret-looking query values, registered
    secrets, nor any of `secrets` (of at least MIN_SECRET characters)."""
    text = _TOKEN.sub("bot" + REDACTED, text)
    text = _USERINFO.sub(REDACTED + "@", text)
    text = _SECRET_QUERY.sub(r"\1" + REDACTED, text)
    for secret in (*_secrets, *sorted(secrets, key=len, reverse=True)):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, REDACTED)
    return text


def redact_data(data: object, secrets: Iterable[str] = ()) -> object:
    """`data` (dicts, lists, strings, numbers, None...) with every string, keys included,
    through `redact`; numbers and the rest are left as they are."""
    extra = tuple(secrets)

    def walk(value: object) -> object:
        if isinstance(value, str):
            return redact(value, extra)
        if isinstance(value, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return walk(data)


def safe_url(url: str) -> str:
    """`url` without credentials: no userinfo, and the values of query parameters whose names
    look secret (`api_key`, `token`, `sig`...) replaced; no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="<>"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def safe_dsn(state: str) -> str:
    """The state location without credentials or options: scheme, host and path only."""
    if state == "memory:" or state.startswith("sqlite:"):
        return state
    try:
        parts = urlsplit(state)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable>"
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def mask_target(target: str) -> str:
    """`j…@example.org` for an email address, `…6789` for a chat id or anything else (its
    last four characters, none when it is that short); "" stays ""."""
    if not target:
        return ""
    local, at, domain = target.rpartition("@")
    if at and local:
        return f"{local[0]}…@{domain}"
    return "…" + (target[-4:] if len(target) > 6 else "")
