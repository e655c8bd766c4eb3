"""The address guard (shared/BAD-INPUTS.md F02-F05): every connection is checked at connect time.

Only 127.0.0.1 is ever connected to. Public-looking addresses appear in two roles: refused
by the guard before any connection, or handed to `Recording`, a fake inner backend that
routes them to the loopback server (standing in for "a public server").
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.sources.guard import (
    AddressGuard,
    BlockedAddress,
    GuardedBackend,
    GuardedTransport,
    _replace_pool,
    allowing_private,
    blocked_reason,
    host_allows_private,
    permitted,
    private_allowed,
    system_resolve,
    url_allows_private,
)
from tests.feedserver import FeedServer, redirect_to

RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
#: A global address (example.com's). Never connected to: `Recording` routes it to loopback.
PUBLIC = "93.184.215.14"
#: A second one, which `Recording` refuses like an unreachable server.
PUBLIC_DOWN = "93.184.215.15"


# --- blocked_reason ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private network"),
        ("172.16.0.1", "private network"),
        ("172.31.255.255", "private network"),
        ("192.168.1.1", "private network"),
        ("fc00::1", "private network"),
        ("fd12:3456:789a::1", "private network"),
        ("fec0::1", "private network"),  # deprecated site-local; `is_global` in 3.11.7
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("0.1.2.3", "reserved"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("ff0e::101", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.88.99.1", "reserved"),
        ("192.0.2.10", "not globally routable"),
        ("198.51.100.7", "not globally routable"),
        ("203.0.113.9", "not globally routable"),
        ("198.18.0.1", "not globally routable"),
        ("192.0.0.8", "not globally routable"),  # `is_global` in 3.11.7
        ("2001:db8::1", "not globally routable"),
        ("3fff::1", "not globally routable"),
        # IPv4-mapped IPv6: judged as the IPv4 address (AVideo CVE-2026-33480).
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "loopback"),
        ("::ffff:10.0.0.1", "private network"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:100.64.0.1", "carrier-grade NAT"),
        # NAT64 well-known prefix: judged as the IPv4 address.
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        # 6to4 (2002:V4ADDR::/48): the IPv4 address's reason, else refused as a tunnel.
        ("2002:7f00:1::1", "loopback"),
        ("2002:a00:5::", "private network"),
        ("2002:5db8:d70e::1", "not globally routable"),
        # Teredo: the client address is stored inverted (127.0.0.1 -> 80ff:fffe).
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
        ("2001:0:4136:e378:8000:63bf:a2ff:6a47", "not globally routable"),
    ],
)
def test_blocked_reason(address: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",  # just below CGNAT
        "100.128.0.0",  # just above
        "172.15.255.255",
        "172.32.0.0",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8 (DNS64 networks): allowed
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


@given(st.ip_addresses())
def test_every_address_python_calls_non_global_is_blocked(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    judged = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    if not judged.is_global:
        assert blocked_reason(ip) is not None


# --- url_allows_private ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/feed",
        "http://localhost/feed",
        "http://LOCALHOST.:3000/rss",
        "http://[::1]/feed",
        "http://192.168.1.10/rss.xml",
        "https://10.0.0.5/feed",
        "http://[fd00::5]:8080/",
        "http://100.64.1.2/",
        "http://169.254.169.254/latest/",  # typed by the user, like any internal literal
        "http://user:secret@127.0.0.1/feed",
    ],
)
def test_url_names_an_internal_address(url: str) -> None:
    assert url_allows_private(url) is True


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/feed",
        "http://93.184.215.14/feed",  # public literal: nothing to allow
        "http://feeds.localhost/",  # a name, resolved like any other
        "http://localhost.example.com/",
        # F03 obfuscations are blocked unless allowed explicitly.
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://017700000001/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a00:1]/",
        "http://[2002:7f00:1::1]/",
        "http://[64:ff9b::7f00:1]/",
        "not a url",
        "http://exa mple.com/",
        "",
    ],
)
def test_url_does_not_name_an_internal_address(url: str) -> None:
    assert url_allows_private(url) is False


def test_url_and_host_forms_agree() -> None:
    for url in ["http://[::1]:8080/", "http://LocalHost/", "http://10.0.0.1/", "http://a.example/"]:
        assert host_allows_private(httpx.URL(url).host) is url_allows_private(url)


def test_permitted_follows_the_current_setting() -> None:
    assert permitted("93.184.215.14") is True
    assert permitted("::ffff:93.184.215.14") is True
    assert permitted("127.0.0.1") is False
    assert permitted("::ffff:127.0.0.1") is False
    assert permitted("not an address") is False
    with allowing_private(True):
        assert permitted("127.0.0.1") is True
        assert permitted("fe80::1%1") is True


# --- allowing_private --------------------------------------------------------------------------


def test_allowing_private_nests_and_resets() -> None:
    assert private_allowed() is False
    with allowing_private(True):
        assert private_allowed() is True
        with allowing_private(False):
            assert private_allowed() is False
        assert private_allowed() is True
    assert private_allowed() is False

    with pytest.raises(RuntimeError), allowing_private(True):
        raise RuntimeError
    assert private_allowed() is False


async def test_allowing_private_is_per_task() -> None:
    started = asyncio.Event()

    async def one(flag: bool) -> bool:
        with allowing_private(flag):
            if flag:
                started.set()
            else:
                await started.wait()  # the other task is inside its block meanwhile
            await asyncio.sleep(0)
            return private_allowed()

    assert list(await asyncio.gather(one(True), one(False))) == [True, False]


# --- fakes -------------------------------------------------------------------------------------


class Resolver:
    """A resolver from a table; IP literals resolve to themselves. A host mapped to a list
    of answers gets the next answer on each call (the last one repeats)."""

    def __init__(self, table: Mapping[str, Sequence[str] | Sequence[Sequence[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        await asyncio.sleep(0)
        answers = self.table.get(host)
        if answers is None:
            try:
                return [str(ipaddress.ip_address(host))]
            except ValueError:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        if answers and not isinstance(answers[0], str):
            sequence = list(answers)
            index = min(self.calls.count(host), len(sequence)) - 1
            return list(sequence[index])
        return [str(a) for a in answers]


class Recording(httpcore.AsyncNetworkBackend):
    """Inner backend: records what it is asked to connect to. 127.0.0.1 is connected to
    for real; PUBLIC goes to `public_port` on 127.0.0.1; anything else is refused, so no test
    can reach beyond loopback."""

    def __init__(self, public_port: int | None = None) -> None:
        self.hosts: list[str] = []
        self.public_port = public_port
        self.real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        if host == PUBLIC and self.public_port is not None:
            return await self.real.connect_tcp("127.0.0.1", self.public_port, timeout=timeout)
        if host == "127.0.0.1":
            return await self.real.connect_tcp(host, port, timeout=timeout)
        raise httpcore.ConnectError(f"[Errno 111] Connection refused ({host})")


def client(
    backend: GuardedBackend, *, follow: bool = False, ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncClient:
    transport = GuardedTransport(backend=backend, ssl_context=ssl_context)
    return httpx.AsyncClient(transport=transport, follow_redirects=follow, trust_env=False)


def blocked(info: pytest.ExceptionInfo[httpx.ConnectError]) -> BlockedAddress:
    cause = info.value.__cause__
    assert isinstance(cause, BlockedAddress), repr(cause)
    assert str(info.value) == str(cause)
    return cause


def port_of(server: FeedServer) -> int:
    return httpx.URL(server.base).port or 0


# --- the httpx transport -----------------------------------------------------------------------


def test_transport_uses_the_guard_in_both_pools() -> None:
    # Fails loudly if httpx stops keeping its httpcore pool in AsyncHTTPTransport._pool.
    context = ssl.create_default_context()
    transport = GuardedTransport(ssl_context=context)
    for flag in (False, True):
        pool = transport.pool(flag)
        assert type(pool) is httpcore.AsyncConnectionPool
        assert transport._transports[flag]._pool is pool
        assert pool._network_backend is transport.backend
        assert pool._ssl_context is context
    assert transport.pool(False) is not transport.pool(True)


def test_transport_refuses_an_httpx_without_pool() -> None:
    class Changed:
        pass

    with pytest.raises(RuntimeError, match="cannot install the address guard"):
        _replace_pool(Changed(), httpcore.AsyncConnectionPool())  # type: ignore[arg-type]


async def test_blocked_before_connecting(feed_server: FeedServer) -> None:
    feed_server.set("/feed", RSS)
    resolve = Resolver({"evil.example": ["127.0.0.1"]})
    inner = Recording()
    url = f"http://evil.example:{port_of(feed_server)}/feed"

    async with client(GuardedBackend(resolve, inner)) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(url)

    error = blocked(info)
    assert (error.host, error.address, error.reason) == ("evil.example", "127.0.0.1", "loopback")
    assert str(error) == (
        "blocked address 127.0.0.1 (loopback) for evil.example: "
        "set allow_private: true on this feed to fetch it"
    )
    assert inner.hosts == []  # no connection attempted, so no byte sent
    assert feed_server.requests == []
    assert resolve.calls == ["evil.example"]


async def test_allowed_when_the_fetch_allows_private(feed_server: FeedServer) -> None:
    feed_server.set("/feed", RSS)
    resolve = Resolver({"evil.example": ["127.0.0.1"]})
    inner = Recording()
    url = f"http://evil.example:{port_of(feed_server)}/feed"

    async with client(GuardedBackend(resolve, inner)) as http:
        with allowing_private(True):
            response = await http.get(url)

    assert response.content == RSS
    assert inner.hosts == ["127.0.0.1"]  # the checked address, never the name
    assert [path for path, _ in feed_server.requests] == ["/feed"]
    assert feed_server.requests[0][1]["host"] == f"evil.example:{port_of(feed_server)}"


async def test_keepalive_connection_to_private_not_reused_without_permission(
    feed_server: FeedServer,
) -> None:
    feed_server.set("/feed", RSS)
    resolve = Resolver({"evil.example": ["127.0.0.1"]})
    url = f"http://evil.example:{port_of(feed_server)}/feed"

    async with client(GuardedBackend(resolve, Recording())) as http:
        with allowing_private(True):
            assert (await http.get(url)).status_code == 200
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(url)  # a fetch that may not: its own pool, a new checked connection

    assert blocked(info).reason == "loopback"
    assert len(feed_server.requests) == 1
    assert resolve.calls == ["evil.example", "evil.example"]


async def test_concurrent_fetches_keep_their_own_setting(feed_server: FeedServer) -> None:
    feed_server.set("/feed", RSS)
    resolve = Resolver({"evil.example": ["127.0.0.1"]})
    url = f"http://evil.example:{port_of(feed_server)}/feed"

    async with client(GuardedBackend(resolve, Recording())) as http:

        async def fetch(flag: bool) -> str:
            with allowing_private(flag):
                try:
                    return str((await http.get(url)).status_code)
                except httpx.ConnectError as exc:
                    return type(exc.__cause__).__name__

        results = await asyncio.gather(fetch(True), fetch(False), fetch(True), fetch(False))

    assert list(results) == ["200", "BlockedAddress", "200", "BlockedAddress"]
    assert len(feed_server.requests) == 2


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]", "localhost"]
)
async def test_ip_literal_tricks_are_judged_by_the_resolved_address(
    feed_server: FeedServer, host: str
) -> None:
    # The system resolver (getaddrinfo parses numeric hosts itself; localhost is in the hosts
    # file) turns each into 127.0.0.1, and the check runs on that.
    feed_server.set("/feed", RSS)
    url = f"http://{host}:{port_of(feed_server)}/feed"
    assert url_allows_private(url) is (host in ("127.0.0.1", "localhost"))

    async with client(GuardedBackend()) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(url)
        assert feed_server.requests == []
        with allowing_private(True):
            response = await http.get(url)

    error = blocked(info)
    assert (error.address, error.reason) == ("127.0.0.1", "loopback")
    assert response.content == RSS  # the same address, really connected to once allowed


async def test_system_resolver_answers_standard_literals_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    real = loop.getaddrinfo

    async def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counting)

    assert await system_resolve("127.0.0.1", 80) == ["127.0.0.1"]
    mapped = await system_resolve("::ffff:7f00:1", 80)
    assert [ipaddress.ip_address(a) for a in mapped] == [ipaddress.ip_address("::ffff:7f00:1")]
    assert calls == []
    assert await system_resolve("127.1", 80) == ["127.0.0.1"]
    assert calls == ["127.1"]


async def test_dns_failure_is_a_connect_error() -> None:
    async with client(GuardedBackend(Resolver({}), Recording())) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get("http://no-such-host.example/feed")

    # httpcore's pool re-raises `from None`: the gaierror is the context, as describe() walks.
    assert isinstance(info.value.__cause__, httpcore.ConnectError)
    assert isinstance(info.value.__cause__.__context__, socket.gaierror)


async def test_a_resolver_that_never_answers_is_a_connect_timeout() -> None:
    async def hang(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        raise AssertionError

    async with client(GuardedBackend(hang, Recording())) as http:
        with pytest.raises(httpx.ConnectTimeout):
            await http.get("http://slow.example/", timeout=httpx.Timeout(1.0, connect=0.05))


# --- F04: DNS rebinding ------------------------------------------------------------------------


async def test_rebinding_after_the_check_never_reaches_a_socket(feed_server: FeedServer) -> None:
    # First answer public, every later one 127.0.0.1: each connection resolves exactly once
    # and connects to exactly what it checked.
    feed_server.set("/feed", RSS)
    port = port_of(feed_server)
    resolve = Resolver({"rebind.example": [[PUBLIC], ["127.0.0.1"]]})
    inner = Recording(public_port=port)
    backend = GuardedBackend(resolve, inner)
    url = f"http://rebind.example:{port}/feed"

    async with client(backend) as first:
        response = await first.get(url)
    assert response.content == RSS
    assert resolve.calls == ["rebind.example"]
    assert inner.hosts == [PUBLIC]

    async with client(backend) as second:  # a new connection: resolved (and checked) again
        with pytest.raises(httpx.ConnectError) as info:
            await second.get(url)
    assert blocked(info).address == "127.0.0.1"
    assert resolve.calls == ["rebind.example", "rebind.example"]
    assert inner.hosts == [PUBLIC]  # 127.0.0.1 never handed to a socket
    assert len(feed_server.requests) == 1


async def test_a_blocked_first_answer_is_not_resolved_again(feed_server: FeedServer) -> None:
    resolve = Resolver({"rebind.example": [["127.0.0.1"], [PUBLIC]]})
    inner = Recording(public_port=port_of(feed_server))

    async with client(GuardedBackend(resolve, inner)) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(f"http://rebind.example:{port_of(feed_server)}/feed")

    assert blocked(info).address == "127.0.0.1"
    assert resolve.calls == ["rebind.example"]
    assert inner.hosts == []
    assert feed_server.requests == []


async def test_blocked_answers_are_never_a_fallback(feed_server: FeedServer) -> None:
    # One answer with a public and a loopback address: when the public one does not connect,
    # the guard does not fall back to the one it refused.
    resolve = Resolver({"mixed.example": [PUBLIC_DOWN, "127.0.0.1", "::1", "10.1.1.1"]})
    inner = Recording()

    async with client(GuardedBackend(resolve, inner)) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(f"http://mixed.example:{port_of(feed_server)}/feed")

    assert not isinstance(info.value.__cause__, BlockedAddress)
    assert inner.hosts == [PUBLIC_DOWN]
    assert feed_server.requests == []


async def test_every_allowed_address_is_tried_in_order(feed_server: FeedServer) -> None:
    feed_server.set("/feed", RSS)
    port = port_of(feed_server)
    resolve = Resolver({"multi.example": [PUBLIC_DOWN, "::ffff:127.0.0.1", "127.0.0.1"]})
    inner = Recording()

    async with client(GuardedBackend(resolve, inner)) as http:
        with allowing_private(True):
            response = await http.get(f"http://multi.example:{port}/feed")

    assert response.content == RSS
    assert inner.hosts == [PUBLIC_DOWN, "127.0.0.1"]  # mapped form normalised, duplicate dropped


# --- F05: redirects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "address", "reason"),
    [
        ("http://evil.example:{port}/feed", "127.0.0.1", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
        ("http://[::ffff:10.0.0.1]/", "10.0.0.1", "private network"),
    ],
)
async def test_redirect_to_a_blocked_address_is_refused_at_the_hop(
    feed_server: FeedServer, target: str, address: str, reason: str
) -> None:
    port = port_of(feed_server)
    feed_server.set("/feed", RSS)
    feed_server.handle("/old", redirect_to(target.format(port=port)))
    resolve = Resolver({"feeds.example": [PUBLIC], "evil.example": ["127.0.0.1"]})
    inner = Recording(public_port=port)

    async with client(GuardedBackend(resolve, inner), follow=True) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(f"http://feeds.example:{port}/old")

    error = blocked(info)
    assert (error.address, error.reason) == (address, reason)
    assert inner.hosts == [PUBLIC]  # the first hop only
    assert [path for path, _ in feed_server.requests] == ["/old"]


# --- TLS: the pinned connection still verifies the URL's host name ------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for feeds.example and 127.0.0.1 (not other.example)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available")
    directory = tmp_path_factory.mktemp("guard-tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=feeds.example", "-addext", "subjectAltName=DNS:feeds.example,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[FeedServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with FeedServer(tls=context) as server:
        server.set("/feed", RSS)
        yield server


@pytest.fixture
def trusting(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


TLS_NAMES = {"feeds.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]}


async def transports_closed() -> None:
    """Let a closed transport's socket (or a failed TLS handshake's) finish closing: asyncio
    closes it a few loop iterations later, and a test ending first leaves it to the garbage
    collector, which then warns (ResourceWarning, an error here) in whatever test runs at
    that moment."""
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_https_verifies_the_url_host_not_the_pinned_address(
    tls_server: FeedServer, trusting: ssl.SSLContext
) -> None:
    # The certificate is valid for IP 127.0.0.1, the address connected to: only a check
    # against the URL's host name refuses other.example.
    port = port_of(tls_server)
    inner = Recording()

    async with client(GuardedBackend(Resolver(TLS_NAMES), inner), ssl_context=trusting) as http:
        with allowing_private(True):
            ok = await http.get(f"https://feeds.example:{port}/feed")
            with pytest.raises(httpx.ConnectError) as info:
                await http.get(f"https://other.example:{port}/feed")
            await transports_closed()

    assert ok.content == RSS
    assert inner.hosts == ["127.0.0.1", "127.0.0.1"]
    cause: BaseException | None = info.value
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "other.example" in cause.verify_message
    assert [path for path, _ in tls_server.requests] == ["/feed"]


# --- AddressGuard.open_connection (asyncio streams) ---------------------------------------------


@pytest.fixture
async def echo() -> AsyncIterator[tuple[int, list[int]]]:
    """A loopback TCP echo server: (port, connections accepted so far)."""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], accepted


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping")
    data = await reader.read(100)
    writer.close()
    await writer.wait_closed()
    return data


async def test_open_connection_refuses_before_connecting(echo: tuple[int, list[int]]) -> None:
    port, accepted = echo
    resolve = Resolver({"evil.example": ["127.0.0.1"], "ok.example": ["127.0.0.1"]})
    guard = AddressGuard(resolve)

    with pytest.raises(BlockedAddress, match=r"^blocked address 127\.0\.0\.1 \(loopback\)"):
        await guard.open_connection("evil.example", port)
    with allowing_private(True):
        assert await roundtrip(*await guard.open_connection("ok.example", port)) == b"ping"

    # Served in accept order: a connection from the refused attempt would show up here.
    assert accepted == [1]
    assert resolve.calls == ["evil.example", "ok.example"]


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.data.done():
            self.data.set_result(data)


async def test_create_connection_refuses_before_connecting(echo: tuple[int, list[int]]) -> None:
    port, accepted = echo
    resolve = Resolver({"evil.example": ["10.0.0.5"], "ok.example": ["::ffff:127.0.0.1"]})
    guard = AddressGuard(resolve)

    with pytest.raises(BlockedAddress) as info:
        await guard.create_connection(Collect, "evil.example", port)
    with allowing_private(True):
        transport, protocol = await guard.create_connection(Collect, "ok.example", port)
    transport.write(b"ping")
    assert await protocol.data == b"ping"
    assert transport.get_extra_info("peername")[0] == "127.0.0.1"  # mapped form, as IPv4
    transport.close()
    await transports_closed()

    assert str(info.value) == (
        "blocked address 10.0.0.5 (private network) for evil.example: "
        "set allow_private: true on this feed to fetch it"
    )
    assert accepted == [1]


async def test_create_connection_tls_checks_the_host_name(
    tls_server: FeedServer, trusting: ssl.SSLContext
) -> None:
    port = port_of(tls_server)
    guard = AddressGuard(Resolver(TLS_NAMES))

    with allowing_private(True):
        transport, _ = await guard.create_connection(
            asyncio.Protocol, "feeds.example", port, ssl=trusting
        )
        with pytest.raises(ssl.SSLCertVerificationError, match=r"other\.example"):
            await guard.create_connection(asyncio.Protocol, "other.example", port, ssl=trusting)
        await transports_closed()

    assert transport.get_extra_info("ssl_object").server_hostname == "feeds.example"
    transport.close()
    await transports_closed()


async def test_open_connection_message_for_a_literal(echo: tuple[int, list[int]]) -> None:
    with pytest.raises(BlockedAddress) as info:
        await AddressGuard().open_connection("127.0.0.1", echo[0])

    assert str(info.value) == (
        "blocked address 127.0.0.1 (loopback): set allow_private: true on this feed to fetch it"
    )


async def test_open_connection_resolves_once(echo: tuple[int, list[int]]) -> None:
    port, _ = echo
    resolve = Resolver({"rebind.example": [["127.0.0.1"], [PUBLIC]]})

    with pytest.raises(BlockedAddress):
        await AddressGuard(resolve).open_connection("rebind.example", port)

    assert resolve.calls == ["rebind.example"]


async def test_open_connection_dns_errors_stay_oserrors() -> None:
    with pytest.raises(socket.gaierror):
        await AddressGuard(Resolver({})).open_connection("no-such-host.example", 80)
    with pytest.raises(socket.gaierror, match="no address found"):
        await AddressGuard(Resolver({"empty.example": []})).open_connection("empty.example", 80)
    with pytest.raises(socket.gaierror, match="not an address"):
        await AddressGuard(Resolver({"odd.example": ["localhost"]})).open_connection(
            "odd.example", 80
        )


async def test_open_connection_tls_checks_the_host_name(
    tls_server: FeedServer, trusting: ssl.SSLContext
) -> None:
    port = port_of(tls_server)
    guard = AddressGuard(Resolver(TLS_NAMES))

    with allowing_private(True):
        _, writer = await guard.open_connection("feeds.example", port, ssl=trusting)
        with pytest.raises(ssl.SSLCertVerificationError, match=r"other\.example"):
            await guard.open_connection("other.example", port, ssl=trusting)
        await transports_closed()

    assert writer.get_extra_info("peername")[0] == "127.0.0.1"
    assert writer.get_extra_info("ssl_object").server_hostname == "feeds.example"
    writer.close()
    await writer.wait_closed()
