"""A loopback fake of the Telegram Bot API, for tests that drive the real python-telegram-bot.

    with FakeBot() as fake:
        bot = telegram.Bot(fake.token, base_url=f"{fake.api_url}/bot")
        fake.fail("sendMessage", status=429, retry_after=3)   # the next send is rate-limited
        ...
        sent = fake.wait_for_sent(2)

It checks what Telegram checks (token, message text, HTML markup, length), records every call,
and answers scripted faults in order. Waits watch the stop event, so `stop()` returns promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from tests.feedserver import CLIENT_GONE

TOKEN = "123456789:AAFakeToken_for-tests_0123456789abcdef"
#: Telegram's limit on message text, in UTF-16 code units.
MAX_MESSAGE_LENGTH = 4096
#: The longest a getUpdates long poll is held, whatever `timeout` the client asked for.
MAX_POLL = 5

# Parameters Telegram takes as plain strings; PTB sends these as they are and JSON-encodes the
# rest (numbers, booleans, objects), so only the rest is decoded.
_STRING_PARAMS = {
    "text", "caption", "parse_mode", "title", "description", "short_description", "name",
    "question", "explanation", "query", "url", "secret_token", "language_code", "emoji",
    "callback_query_id", "inline_message_id", "message_effect_id", "business_connection_id",
    "custom_title", "ip_address",
}  # fmt: skip
# Methods answered `true` and otherwise ignored.
_HARMLESS = {
    "logout", "close", "sendchataction", "deletemessage", "setmydescription",
    "setmyshortdescription", "setmyname", "setchatmenubutton", "answercallbackquery",
    "leavechat", "pinchatmessage", "unpinchatmessage", "setwebhook",
}  # fmt: skip
_SEND_METHODS = {"sendmessage", "sendphoto", "senddocument", "sendchataction"}


@dataclass(frozen=True)
class Call:
    """One request the fake received."""

    #: Bot API method as requested, e.g. "sendMessage".
    method: str
    #: Parameters: JSON-encoded values decoded, plain strings kept, uploaded files as bytes.
    params: dict[str, Any]
    #: HTTP status the fake answered (or will answer, for a held response).
    status: int


@dataclass(frozen=True)
class Sent:
    """A message the fake accepted."""

    #: As the client sent it: "-100123", "42" or "@channel".
    chat_id: str
    #: As sent, markup included.
    text: str
    parse_mode: str | None
    disable_notification: bool
    message_thread_id: int | None
    #: From `link_preview_options.is_disabled` or the older `disable_web_page_preview`.
    link_preview_disabled: bool
    message_id: int


class ApiError(Exception):
    """An error answer of the Bot API: `{"ok": false, "error_code": ..., "description": ...}`."""

    def __init__(self, status: int, description: str, **parameters: int) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.status}
        body["description"] = self.description
        if self.parameters:
            body["parameters"] = self.parameters
        return body


@dataclass
class _Fault:
    method: str  # lower-cased
    chat_id: str | None
    times: int
    error: ApiError | None = None
    hang: float = 0.0

    def matches(self, method: str, params: dict[str, Any]) -> bool:
        return method == self.method and self.chat_id in (None, _chat_key(params))


class FakeBot:
    """The Bot API of one bot on 127.0.0.1 at a free port; thread-safe."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.user: dict[str, Any] = {
            "id": int(token.split(":")[0]),
            "is_bot": True,
            "first_name": "Fake Bot",
            "username": "fake_test_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._requests: list[Call] = []
        self._sent: list[Sent] = []
        self._faults: list[_Fault] = []
        self._blocked: set[str] = set()
        self._missing: set[str] = set()
        self._updates: list[dict[str, Any]] = []
        self._commands: list[Any] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The root URL; PTB wants `base_url=f"{api_url}/bot"`."""
        if self._server is None:
            raise RuntimeError("FakeBot not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeBot:
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()  # ends long polls and wait_for_sent
        server.shutdown()
        with server.lock:
            connections, threads = list(server.connections), list(server.threads)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        give_up = time.monotonic() + 5
        for thread in threads:
            thread.join(timeout=max(0.0, give_up - time.monotonic()))

    def __enter__(self) -> FakeBot:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what happened -------------------------------------------------------------------------

    @property
    def requests(self) -> list[Call]:
        """Every request, in arrival order (a copy)."""
        with self._cond:
            return list(self._requests)

    @property
    def sent(self) -> list[Sent]:
        """Every accepted sendMessage, in order (a copy)."""
        with self._cond:
            return list(self._sent)

    def calls(self, method: str) -> list[Call]:
        return [c for c in self.requests if c.method == method]

    def wait_for_sent(self, n: int, timeout: float = 5.0) -> list[Sent]:
        """Block until at least `n` messages were accepted; all accepted so far.

        Raises TimeoutError when they do not arrive in time. Blocking: from a coroutine on the
        loop that sends, await `wait_for_sent_async` instead.
        """
        give_up = time.monotonic() + timeout
        with self._cond:
            while len(self._sent) < n:
                remaining = give_up - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    raise TimeoutError(f"{len(self._sent)} of {n} messages within {timeout}s")
                self._cond.wait(remaining)
            return list(self._sent)

    async def wait_for_sent_async(self, n: int, timeout: float = 5.0) -> list[Sent]:  # noqa: ASYNC109
        # The timeout bounds the blocking wait in the worker thread, which cancelling would not.
        return await asyncio.to_thread(self.wait_for_sent, n, timeout)

    # --- scripting -----------------------------------------------------------------------------

    def fail(
        self,
        method: str = "sendMessage",
        *,
        status: int | None = None,
        description: str | None = None,
        retry_after: int | None = 3,
        migrate_to_chat_id: int | None = None,
        chat_id: str | int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls of `method` (to `chat_id` only, if given) with an error.

        `status` defaults to 400 with `migrate_to_chat_id`, else 429; `description` defaults to
        Telegram's usual one for the status; `retry_after` is sent with 429 only.
        """
        if status is None:
            status = 400 if migrate_to_chat_id is not None else 429
        parameters = {}
        if migrate_to_chat_id is not None:
            parameters["migrate_to_chat_id"] = migrate_to_chat_id
        elif status == 429 and retry_after is not None:
            parameters["retry_after"] = retry_after
        if description is None:
            description = _default_description(status, parameters)
        error = ApiError(status, description, **parameters)
        self._add_fault(_Fault(method.lower(), _key(chat_id), times, error=error))

    def hang(
        self, method: str, seconds: float, *, times: int = 1, chat_id: str | int | None = None
    ) -> None:
        """Hold the answer to the next `times` calls of `method` for `seconds`.

        The call itself is processed (a message is sent), as when Telegram delivers a message
        but its answer is lost; the answer is dropped if the fake stops first.
        """
        self._add_fault(_Fault(method.lower(), _key(chat_id), times, hang=seconds))

    def blocked(self, chat_id: str | int) -> None:
        """From now on, sends to `chat_id` get 403 "Forbidden: bot was blocked by the user"."""
        with self._cond:
            self._blocked.add(str(chat_id))

    def missing(self, chat_id: str | int) -> None:
        """From now on, calls naming `chat_id` get 400 "Bad Request: chat not found"."""
        with self._cond:
            self._missing.add(str(chat_id))

    def push_message(
        self,
        text: str,
        *,
        chat_id: int,
        user_id: int | None = None,
        chat_type: str | None = None,
    ) -> dict[str, Any]:
        """Queue an update with a message, as if a user wrote `text` in `chat_id`; returns it."""
        chat = _chat(chat_id, chat_type)
        sender = {"id": user_id or (chat_id if chat_id > 0 else 1000), "is_bot": False}
        message: dict[str, Any] = {"date": int(time.time()), "chat": chat, "text": text}
        if chat["type"] != "channel":
            message["from"] = {**sender, "first_name": "Tester", "language_code": "en"}
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": _u16(command)}]
        kind = "channel_post" if chat["type"] == "channel" else "message"
        with self._cond:
            message["message_id"] = next(self._message_ids)
            update = {"update_id": next(self._update_ids), kind: message}
            self._updates.append(update)
            self._cond.notify_all()
        return update

    def _add_fault(self, fault: _Fault) -> None:
        with self._cond:
            self._faults.append(fault)

    # --- answering -----------------------------------------------------------------------------

    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        target = urlsplit(h.path)
        method = target.path.rsplit("/", 1)[-1]
        hang = 0.0
        try:
            params = _read_params(h, target.query)
        except ValueError as exc:
            status, body = 400, ApiError(400, f"Bad Request: {exc}").body()
            with self._cond:
                self._requests.append(Call(method, {}, status))
        else:
            status, body, hang = self._answer(target.path, method, params)
        if hang and self._stopping.wait(hang):
            h.close_connection = True
            return
        _reply(h, status, body)

    def _answer(
        self, path: str, method: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], float]:
        with self._cond:
            hang = 0.0
            try:
                name = self._route(path, method)
                hang = self._take_fault(name, params, hang=True)
                self._take_fault(name, params, hang=False)
                self._check_chat(name, params)
                result = self._call(name, params)
            except ApiError as exc:
                self._requests.append(Call(method, params, exc.status))
                return exc.status, exc.body(), hang
            self._requests.append(Call(method, params, 200))
            if name == "getupdates":
                result = self._poll(params)
            self._cond.notify_all()
            return 200, {"ok": True, "result": result}, hang

    def _route(self, path: str, method: str) -> str:
        token = path.removeprefix("/bot").rsplit("/", 1)[0]
        if not path.startswith("/bot") or path.count("/") != 2:
            raise ApiError(404, "Not Found")
        if token != self.token:
            raise ApiError(401, "Unauthorized")
        name = method.lower()  # Telegram takes method names in any case
        if name not in self._methods and name not in _HARMLESS:
            raise ApiError(404, "Not Found")
        return name

    def _take_fault(self, method: str, params: dict[str, Any], *, hang: bool) -> float:
        for fault in self._faults:
            if bool(fault.hang) == hang and fault.matches(method, params):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                if fault.error is not None:
                    raise fault.error
                return fault.hang
        return 0.0

    def _check_chat(self, method: str, params: dict[str, Any]) -> None:
        chat = _chat_key(params)
        if chat in self._missing:
            raise ApiError(400, "Bad Request: chat not found")
        if chat in self._blocked and method in _SEND_METHODS:
            raise ApiError(403, "Forbidden: bot was blocked by the user")

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        handler = self._methods.get(method)
        return True if handler is None else handler(self, params)

    # Each runs holding the lock; raises ApiError for an error answer.

    def _get_me(self, params: dict[str, Any]) -> Any:
        return self.user

    def _send_message(self, params: dict[str, Any]) -> Any:
        chat_id = _chat_id(params)
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        parse_mode = params.get("parse_mode") or None
        shown, entities = _parse(text, parse_mode)
        if not shown.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if _u16(shown) > MAX_MESSAGE_LENGTH:
            raise ApiError(400, "Bad Request: message is too long")
        message_id = next(self._message_ids)
        thread = params.get("message_thread_id")
        self._sent.append(
            Sent(
                chat_id=str(params["chat_id"]),
                text=text,
                parse_mode=parse_mode,
                disable_notification=_flag(params.get("disable_notification")),
                message_thread_id=thread if isinstance(thread, int) else None,
                link_preview_disabled=_preview_disabled(params),
                message_id=message_id,
            )
        )
        message = {"message_id": message_id, "date": int(time.time()), "chat": _chat(chat_id)}
        message |= {"from": self.user, "text": shown}
        if entities:
            message["entities"] = entities
        if isinstance(thread, int):
            message |= {"message_thread_id": thread, "is_topic_message": True}
        return message

    def _get_updates(self, params: dict[str, Any]) -> Any:
        # Confirms updates below `offset` now; `_poll` collects the answer after recording.
        offset = int(_number(params.get("offset"), 0))
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]
        return []

    def _poll(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        limit = min(max(int(_number(params.get("limit"), 100)), 1), 100)
        give_up = time.monotonic() + min(max(_number(params.get("timeout"), 0), 0), MAX_POLL)
        while not self._updates and not self._stopping.is_set():
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        return self._updates[:limit]

    def _delete_webhook(self, params: dict[str, Any]) -> Any:
        if _flag(params.get("drop_pending_updates")):
            self._updates.clear()
        return True

    def _get_webhook_info(self, params: dict[str, Any]) -> Any:
        return {"url": "", "has_custom_certificate": False, "pending_update_count": 0}

    def _set_my_commands(self, params: dict[str, Any]) -> Any:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise ApiError(400, "Bad Request: can't parse commands JSON object")
        self._commands = commands
        return True

    def _get_my_commands(self, params: dict[str, Any]) -> Any:
        return self._commands

    def _delete_my_commands(self, params: dict[str, Any]) -> Any:
        self._commands = []
        return True

    def _get_chat(self, params: dict[str, Any]) -> Any:
        gifts = dict.fromkeys(
            ("unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription"), False
        )
        gifts["gifts_from_channels"] = False
        chat = _chat(_chat_id(params))
        return chat | {"accent_color_id": 0, "max_reaction_count": 11, "accepted_gift_types": gifts}

    _methods: ClassVar[dict[str, Callable[[FakeBot, dict[str, Any]], Any]]] = {
        "getme": _get_me,
        "sendmessage": _send_message,
        "getupdates": _get_updates,
        "deletewebhook": _delete_webhook,
        "getwebhookinfo": _get_webhook_info,
        "setmycommands": _set_my_commands,
        "getmycommands": _get_my_commands,
        "deletemycommands": _delete_my_commands,
        "getchat": _get_chat,
    }


def _default_description(status: int, parameters: dict[str, int]) -> str:
    if "migrate_to_chat_id" in parameters:
        return "Bad Request: group chat was upgraded to a supergroup chat"
    return {
        429: f"Too Many Requests: retry after {parameters.get('retry_after', 3)}",
        403: "Forbidden: bot was blocked by the user",
        400: "Bad Request: chat not found",
        401: "Unauthorized",
        404: "Not Found",
    }.get(status, "Internal Server Error")


# --- request parameters ------------------------------------------------------------------------


def _read_params(h: BaseHTTPRequestHandler, query: str) -> dict[str, Any]:
    """Parameters from the query string and the body, whichever of PTB's encodings it uses."""
    params = _decode_pairs(parse_qsl(query, keep_blank_values=True))
    length = int(h.headers.get("Content-Length") or 0)
    body = h.rfile.read(length) if length else b""
    if not body:
        return params
    content_type = h.headers.get_content_type()
    if content_type == "application/json":
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("JSON body must be an object")
        params.update(data)
    elif content_type == "application/x-www-form-urlencoded":
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
        params.update(_decode_pairs(pairs))
    elif content_type == "multipart/form-data":
        params.update(_multipart(h.headers["Content-Type"], body))
    else:
        raise ValueError(f"unsupported Content-Type {content_type}")
    return params


def _decode_pairs(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {name: _decode(name, value) for name, value in pairs}


def _decode(name: str, value: str) -> Any:
    if name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value  # a plain string such as "@channel"


def _multipart(content_type: str, body: bytes) -> dict[str, Any]:
    envelope = f"Content-Type: {content_type}\r\n\r\n".encode() + body
    message = BytesParser(policy=HTTP).parsebytes(envelope)
    if not message.is_multipart():
        raise ValueError("malformed multipart body")
    params: dict[str, Any] = {}
    for part in message.walk():
        if part.is_multipart():
            continue
        name = str(part.get_param("name", header="content-disposition"))
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            raise ValueError("malformed multipart body")
        params[name] = data if part.get_filename() else _decode(name, data.decode())
    return params


def _chat_key(params: dict[str, Any]) -> str | None:
    return _key(params.get("chat_id"))


def _key(chat_id: str | int | None) -> str | None:
    return None if chat_id is None else str(chat_id)


def _chat_id(params: dict[str, Any]) -> int | str:
    chat_id = params.get("chat_id")
    if chat_id is None or chat_id == "":
        raise ApiError(400, "Bad Request: chat_id is empty")
    if isinstance(chat_id, str) and chat_id.startswith("@"):
        return chat_id
    try:
        return int(chat_id)
    except (TypeError, ValueError):
        raise ApiError(400, "Bad Request: chat not found") from None


def _chat(chat_id: int | str, chat_type: str | None = None) -> dict[str, Any]:
    if isinstance(chat_id, str):  # @username: a public channel
        number = -1_000_000_000_000 - zlib.crc32(chat_id.encode())
        return {"id": number, "type": "channel", "title": "Test channel", "username": chat_id[1:]}
    chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
    if chat_type == "private":
        return {"id": chat_id, "type": chat_type, "first_name": "Tester"}
    return {"id": chat_id, "type": chat_type, "title": f"Test {chat_type}"}


def _number(value: Any, default: float) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else default


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


def _preview_disabled(params: dict[str, Any]) -> bool:
    options = params.get("link_preview_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "Bad Request: can't parse link preview options JSON object")
    return _flag((options or {}).get("is_disabled")) or _flag(
        params.get("disable_web_page_preview")
    )


def _parse(text: str, parse_mode: str | None) -> tuple[str, list[dict[str, Any]]]:
    mode = (parse_mode or "").lower()
    if mode == "html":
        try:
            return _HtmlParser(text).parse()
        except ValueError as exc:
            raise ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
    if mode not in ("", "markdown", "markdownv2"):
        raise ApiError(400, "Bad Request: unsupported parse_mode")
    return text, []  # Markdown is taken on trust


# --- Telegram's HTML ---------------------------------------------------------------------------


def telegram_html_text(html: str) -> str:
    """The text Telegram shows for `html` sent with parse_mode HTML.

    Raises ValueError with the reason ("Unsupported start tag "br" at byte offset 5") where
    Telegram answers 400 "Bad Request: can't parse entities: <reason>". Stricter than Telegram
    on one point: a "&" that starts no entity, or an unknown named entity, is refused rather
    than shown as typed.
    """
    return _HtmlParser(html).parse()[0]


_ENTITY_TYPES = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic",
    "u": "underline", "ins": "underline", "s": "strikethrough", "strike": "strikethrough",
    "del": "strikethrough", "a": "text_link", "code": "code", "pre": "pre",
    "tg-spoiler": "spoiler", "span": "spoiler", "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}  # fmt: skip
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_SPACE = " \t\r\n\f\v"
_PLAIN = re.compile(r"[^<&]+")
_ENTITY = re.compile(r"&(?:#([0-9]+)|#[xX]([0-9a-fA-F]+)|([A-Za-z][A-Za-z0-9]*));")
_NAME_TOKEN = re.compile(r"[A-Za-z0-9.-]*")


@dataclass
class _Open:
    tag: str
    begin: int  # index of "<" in the markup
    start: int  # UTF-16 offset in the text
    argument: str


class _HtmlParser:
    """Telegram's HTML subset, after tdlib's parse_html: the shown text and its entities."""

    def __init__(self, html: str) -> None:
        self.html = html
        self.pos = 0
        self.text: list[str] = []
        self.length = 0  # of the text so far, in UTF-16 code units
        self.open: list[_Open] = []
        self.entities: list[dict[str, Any]] = []

    def parse(self) -> tuple[str, list[dict[str, Any]]]:
        while self.pos < len(self.html):
            if plain := _PLAIN.match(self.html, self.pos):
                self._emit(plain.group())
                self.pos = plain.end()
            elif self.html[self.pos] == "&":
                char, self.pos = self._entity(self.pos)
                self._emit(char)
            elif self.html.startswith("</", self.pos):
                self._end_tag()
            else:
                self._start_tag()
        if self.open:
            tag = self.open[-1]
            raise self._error(
                f'Can\'t find end tag corresponding to start tag "{tag.tag}"', tag.begin
            )
        self.entities.sort(key=lambda e: (e["offset"], -e["length"]))
        return "".join(self.text), self.entities

    def _emit(self, text: str) -> None:
        self.text.append(text)
        self.length += _u16(text)

    def _error(self, reason: str, pos: int, detail: str = "") -> ValueError:
        offset = len(self.html[:pos].encode("utf-8", "surrogatepass"))
        return ValueError(f"{reason} at byte offset {offset}{detail}")

    def _entity(self, pos: int) -> tuple[str, int]:
        match = _ENTITY.match(self.html, pos)
        if match is None:
            raise self._error('Character "&" must be escaped as "&amp;"', pos)
        decimal, hexadecimal, name = match.groups()
        if name is not None:
            if name not in _NAMED_ENTITIES:
                raise self._error(f'Unsupported HTML entity "{match.group()}"', pos)
            return _NAMED_ENTITIES[name], match.end()
        code = int(decimal) if decimal is not None else int(hexadecimal, 16)
        if not 0 < code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise self._error(f'Invalid HTML entity "{match.group()}"', pos)
        return chr(code), match.end()

    def _skip_space(self, i: int) -> int:
        while i < len(self.html) and self.html[i] in _SPACE:
            i += 1
        return i

    def _word_end(self, i: int, stop: str = ">") -> int:
        while i < len(self.html) and self.html[i] not in _SPACE and self.html[i] not in stop:
            i += 1
        return i

    def _start_tag(self) -> None:
        html, begin = self.html, self.pos
        i = self._word_end(begin + 1)
        if i >= len(html):
            raise self._error("Unclosed start tag", begin)
        tag = html[begin + 1 : i].lower()
        if tag not in _ENTITY_TYPES:
            raise self._error(f'Unsupported start tag "{tag}"', begin)
        attributes: dict[str, str] = {}
        while (i := self._skip_space(i)) < len(html) and html[i] != ">":
            name_end = self._word_end(i, "=>")
            name = html[i:name_end].lower()
            if not name:
                raise self._error(f'Empty attribute name in the tag "{tag}"', begin)
            i = self._skip_space(name_end)
            if i < len(html) and html[i] == "=":
                attributes[name], i = self._attribute_value(self._skip_space(i + 1), begin)
            else:
                attributes[name] = ""  # <blockquote expandable>
        if i >= len(html):
            raise self._error("Unclosed start tag", begin)
        self.pos = i + 1
        argument = self._argument(tag, attributes, begin)
        self.open.append(_Open(tag, begin, self.length, argument))

    def _attribute_value(self, i: int, begin: int) -> tuple[str, int]:
        html = self.html
        if i >= len(html):
            raise self._error("Unclosed start tag", begin)
        if html[i] in "\"'":
            end = html.find(html[i], i + 1)
            if end < 0:
                raise self._error("Unclosed start tag", begin)
            value, j = [], i + 1
            while j < end:
                if html[j] == "&":
                    char, j = self._entity(j)
                    value.append(char)
                else:
                    value.append(html[j])
                    j += 1
            return "".join(value), end + 1
        token = _NAME_TOKEN.match(html, i)
        assert token is not None  # matches the empty string at worst
        if token.end() < len(html) and html[token.end()] not in _SPACE + ">":
            raise self._error("Unexpected end of name token", token.end())
        return token.group().lower(), token.end()

    def _argument(self, tag: str, attributes: dict[str, str], begin: int) -> str:
        if tag == "a":
            return attributes.get("href", "")
        if tag == "code":
            return attributes.get("class", "").removeprefix("language-")
        if tag == "span" and attributes.get("class") != "tg-spoiler":
            raise self._error('Tag "span" must have class "tg-spoiler"', begin)
        if tag == "tg-emoji":
            if not attributes.get("emoji-id"):
                raise self._error('Tag "tg-emoji" must have attribute "emoji-id"', begin)
            return attributes["emoji-id"]
        if tag == "blockquote" and "expandable" in attributes:
            return "expandable"
        return ""

    def _end_tag(self) -> None:
        html, begin = self.html, self.pos
        if not self.open:
            raise self._error("Unexpected end tag", begin)
        name_end = self._word_end(begin + 2)
        name = html[begin + 2 : name_end].lower()
        i = self._skip_space(name_end)
        if i >= len(html) or html[i] != ">":
            raise self._error("Unclosed end tag", begin)
        opened = self.open.pop()
        if name and name != opened.tag:
            detail = f', expected "</{opened.tag}>", found "</{name}>"'
            raise self._error("Unmatched end tag", begin, detail)
        self.pos = i + 1
        self._close(opened)

    def _close(self, opened: _Open) -> None:
        length = self.length - opened.start
        kind = _ENTITY_TYPES[opened.tag]
        if length <= 0 or (kind == "text_link" and not opened.argument):
            return
        entity: dict[str, Any] = {"type": kind, "offset": opened.start, "length": length}
        if kind == "text_link":
            entity["url"] = opened.argument
        elif kind == "custom_emoji":
            entity["custom_emoji_id"] = opened.argument
        elif kind == "blockquote" and opened.argument:
            entity["type"] = "expandable_blockquote"
        elif kind == "pre" and self.entities:
            inner = self.entities[-1]  # <pre><code class="language-x">: one pre entity
            if inner["type"] == "code" and (inner["offset"], inner["length"]) == (
                opened.start,
                length,
            ):
                self.entities.pop()
                if inner.get("language"):
                    entity["language"] = inner["language"]
        elif kind == "code" and opened.argument:
            entity["language"] = opened.argument
        self.entities.append(entity)


def _u16(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --- HTTP --------------------------------------------------------------------------------------


def _reply(h: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    try:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    except CLIENT_GONE:
        h.close_connection = True


class _Server(ThreadingHTTPServer):
    # As FeedServer's: remembers connections and threads so `stop` can wake and join them.
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: FakeBot) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self.lock:
            self.threads = [t for t in self.threads if t.is_alive()]
            self.threads.append(thread)
            self.connections.add(request)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients giving up on a held answer is expected


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm meets
        # the client's delayed ACK and every answer takes 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        self.server.owner._dispatch(self)

    do_GET = do_POST

    def log_message(self, format: str, *args: object) -> None:
        pass
