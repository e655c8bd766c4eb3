"""The address guard: feed fetches never reach loopback, private or other non-public addresses.

Server-side request forgery through feed URLs (shared/BAD-INPUTS.md F02-F05, §3.1) is
refused where it cannot be dodged: at connect time, on the address actually connected to.

* A host is resolved once per connection; every address is checked with `blocked_reason`
  and the socket is opened to one of the checked addresses (pinning), so a second,
  different DNS answer (rebinding) never reaches a socket. Addresses that fail the check
  are never tried, even when the allowed ones fail to connect.
* The check runs on the numeric address the resolver returns, so IP literal tricks
  (`127.1`, `2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`) are judged as what they are.
  IPv4-mapped IPv6 is connected to as IPv4; NAT64 (64:ff9b::/96), 6to4 and Teredo
  addresses are judged by the IPv4 address they carry.
* TLS still verifies the certificate against the URL's host name: only the TCP connection
  is pinned, SNI and hostname checks are left to the caller.
* Redirect hops are new connections through the same guard.

Whether non-public addresses are allowed is decided per fetch, not per client: the fetcher
wraps each fetch in `allowing_private(flag)` and the guard reads the flag at connect time.
`url_allows_private` is the default for a feed without an explicit `allow_private`.

Two ways in:

* `AddressGuard.create_connection` / `open_connection`: `loop.create_connection` and
  `asyncio.open_connection` with the guard in front.
* `GuardedBackend` (an httpcore network backend) and `GuardedTransport` (an httpx transport
  using it), for fetching through httpx.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from ssl import SSLContext, SSLError
from typing import Any, TypeVar

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: `resolve(host, port)`: the host's addresses as numeric strings, in preference order.
Resolver = Callable[[str, int], Awaitable[list[str]]]
_T = TypeVar("_T")
_P = TypeVar("_P", bound=asyncio.BaseProtocol)

# --- policy ------------------------------------------------------------------------------------

_allow_private: ContextVar[bool] = ContextVar("monitor_allow_private", default=False)


@contextmanager
def allowing_private(flag: bool) -> Iterator[None]:
    """Connections opened inside the block may (True) or may not (False) go to non-public
    addresses. Context-local: concurrent fetches in other tasks keep their own setting."""
    token = _allow_private.set(flag)
    try:
        yield
    finally:
        _allow_private.reset(token)


def private_allowed() -> bool:
    """The current setting of `allowing_private` (False outside any block)."""
    return _allow_private.get()


def url_allows_private(url: str) -> bool:
    """The default for a feed without `allow_private`: True only when the URL's host is itself
    a non-public IP literal or `localhost`, i.e. the user typed the internal address.

    Only plain literals count: `127.1`, `2130706433`, `0x7f.1` and IPv6 forms carrying an IPv4
    address (`[::ffff:127.0.0.1]`, 6to4, Teredo, NAT64) are obfuscations, not what a user
    types for a feed on their own network, so they stay blocked unless allowed explicitly.
    """
    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return host_allows_private(host)


@lru_cache(maxsize=4096)
def host_allows_private(host: str) -> bool:
    """`url_allows_private` for a URL's host as httpx gives it (`httpx.URL.host`: IPv6
    without brackets), for callers that have parsed the URL already."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and _embedded_ipv4(ip) is not None:
        return False
    return blocked_reason(ip) is not None


def permitted(address: str) -> bool:
    """May a connection to numeric `address` be used under the current `allowing_private`?
    For re-checking a pooled keep-alive connection's peer before reusing it."""
    if private_allowed():
        return True
    try:
        return _judge(address)[1] is None
    except ValueError:
        return False


# --- the check ---------------------------------------------------------------------------------


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_PRIVATE = _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")
_RESERVED = _nets("0.0.0.0/8", "192.88.99.0/24")
# Not globally reachable per the IANA special-purpose registries, but treated as global by
# some Python versions' `is_global` (3.11.7: 192.0.0.0/24 outside /29, 3fff::/20).
_NOT_GLOBAL = _nets("192.0.0.0/24", "3fff::/20", "5f00::/16", "2001::/23")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@lru_cache(maxsize=4096)
def _judge(address: str) -> tuple[str, str | None]:
    """(the address normalised, IPv4-mapped IPv6 as IPv4; `blocked_reason`) for a numeric
    address. Raises ValueError for anything else. Cached: the same few addresses come back
    on every poll, and `ipaddress` takes microseconds per check."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), blocked_reason(ip)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, with how: mapped, nat64, 6to4 or teredo."""
    if ip.ipv4_mapped is not None:
        return "mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "nat64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip.teredo is not None:
        return "teredo", ip.teredo[1]
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why a connection to `ip` is refused by default, or None for a public address.

    One of "unspecified", "loopback", "link-local", "multicast", "carrier-grade NAT",
    "private network", "reserved", "not globally routable". Independent of the Python
    version's `ipaddress` tables for the named ranges. IPv4-mapped and NAT64 addresses are
    judged by their IPv4 address; 6to4 and Teredo addresses (tunnels) are always refused,
    with the reason of the IPv4 address they carry when that one is refused too.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            how, ipv4 = embedded
            reason = blocked_reason(ipv4)
            if how in ("mapped", "nat64"):
                return reason
            return reason or "not globally routable"
        if ip.scope_id:  # fe80::1%eth0: compare the address without its zone
            ip = ipaddress.IPv6Address(int(ip))
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _CGNAT:
        return "carrier-grade NAT"
    if any(ip in net for net in _PRIVATE):
        return "private network"
    if ip.is_reserved or any(ip in net for net in _RESERVED):
        return "reserved"
    if not ip.is_global or any(ip in net for net in _NOT_GLOBAL):
        return "not globally routable"
    return None


class BlockedAddress(httpcore.ConnectError):
    """The guard refused to connect to `address` (resolved from `host`) for `reason`.

    A subclass of httpcore.ConnectError, so httpx raises it as httpx.ConnectError (with this
    as its `__cause__`); `str()` is the operator-facing message.
    """

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        where = "" if _same_address(host, address) else f" for {host}"
        super().__init__(
            f"blocked address {address} ({reason}){where}: "
            "set allow_private: true on this feed to fetch it"
        )


def _same_address(host: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) == ipaddress.ip_address(address)
    except ValueError:
        return False


# --- resolving and connecting ------------------------------------------------------------------


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (`loop.getaddrinfo`), duplicates dropped.

    A host in standard IP notation is its own answer, without the resolver's thread pool (as
    in asyncio); other numeric forms (`127.1`, `2130706433`) go to getaddrinfo, which
    normalises them.
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressGuard:
    """Resolves a host once and says which of its addresses may be connected to."""

    def __init__(self, resolve: Resolver | None = None) -> None:
        self._resolve = resolve or system_resolve

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host` a connection may go to, as numeric strings, in resolver
        order (IPv4-mapped IPv6 given as IPv4). Calls the resolver exactly once.

        Raises BlockedAddress (naming the first refused address) when none may be used, and
        socket.gaierror when the resolver finds nothing.
        """
        answers = await self._resolve(host, port)
        allow = private_allowed()
        allowed: list[str] = []
        blocked: BlockedAddress | None = None
        for answer in answers:
            try:
                address, reason = _judge(answer)
            except ValueError:
                raise socket.gaierror(
                    socket.EAI_FAIL, f"resolver returned {answer!r} for {host}, not an address"
                ) from None
            if allow or reason is None:
                allowed.append(address)
            elif blocked is None:
                blocked = BlockedAddress(host, address, reason)
        if allowed:
            return list(dict.fromkeys(allowed))
        if blocked is not None:
            raise blocked
        raise socket.gaierror(socket.EAI_NONAME, f"no address found for {host}")

    async def create_connection(
        self,
        protocol_factory: Callable[[], _P],
        host: str,
        port: int,
        *,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> tuple[asyncio.Transport, _P]:
        """`loop.create_connection(protocol_factory, host, port, ...)` through the guard.

        The socket goes to a checked address; TLS (with `ssl`) verifies the certificate
        against `server_hostname`, by default `host` (never the address connected to).
        Raises BlockedAddress, or what asyncio raises (OSError, ssl.SSLError).
        """
        loop = asyncio.get_running_loop()
        hostname = (server_hostname or host) if ssl is not None else None

        async def attempt(address: str) -> tuple[asyncio.Transport, _P]:
            return await loop.create_connection(
                protocol_factory, address, port, ssl=ssl, server_hostname=hostname
            )

        return await self._first(host, port, attempt)

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        limit: int = 2**16,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """`asyncio.open_connection(host, port, ...)` through the guard; as `create_connection`."""
        hostname = (server_hostname or host) if ssl is not None else None

        async def attempt(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection(
                address, port, ssl=ssl, server_hostname=hostname, limit=limit
            )

        return await self._first(host, port, attempt)

    async def _first(self, host: str, port: int, attempt: Callable[[str], Awaitable[_T]]) -> _T:
        """`attempt` on each allowed address of `host` in turn until one connects."""
        errors: list[OSError] = []
        for address in await self.addresses(host, port):
            try:
                return await attempt(address)
            except SSLError:
                raise  # the same certificate on every address: do not try the others
            except OSError as exc:
                errors.append(exc)
        raise _all_failed(errors)


def _all_failed(errors: list[OSError]) -> OSError:
    # As asyncio does for a host with several addresses.
    if len({str(e) for e in errors}) == 1:
        return errors[0]
    return OSError("Multiple exceptions: {}".format(", ".join(str(e) for e in errors)))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the guard allows.

    `connect_tcp` resolves the host once with `resolve` (default: `loop.getaddrinfo`, so an
    asyncio event loop is required), checks every address, and asks `inner` (default:
    httpcore's AnyIO backend) to connect to a checked numeric address; `inner` never sees the
    host name. httpcore then starts TLS on that stream with the URL's host as the server name.
    """

    def __init__(
        self,
        resolve: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.guard = AddressGuard(resolve)
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self.guard.addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:  # DNS failure: httpx reports it as a ConnectError
            raise httpcore.ConnectError(str(exc)) from exc
        options = None if socket_options is None else list(socket_options)
        errors: list[httpcore.ConnectError] = []
        for address in addresses:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise httpcore.ConnectTimeout(f"connecting to {host} timed out")
            try:
                return await self.inner.connect_tcp(
                    address,
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=options,
                )
            except httpcore.ConnectError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        message = "; ".join(f"{a}: {e}" for a, e in zip(addresses, errors, strict=True))
        raise httpcore.ConnectError(f"every address of {host} failed: {message}") from errors[-1]

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # Only reachable when the code configures a Unix socket (`uds`): never from a feed URL.
        return await self.inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


# --- httpx -------------------------------------------------------------------------------------

#: httpx's own default limits.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose every connection goes through a `GuardedBackend`.

    HTTP/1.1 only, no proxies, no environment settings. Two connection pools: one for
    requests made while `allowing_private(True)`, one for the rest, so a keep-alive
    connection to an internal address opened for one feed is never reused by a feed that
    may not reach it. `limits` applies to each pool.

    httpx 0.28's AsyncHTTPTransport takes no network backend: each pool is an
    AsyncHTTPTransport whose httpcore pool (`_pool`) is replaced by one built with the same
    settings and the guard. The replacement is checked here, and tests/sources/test_guard.py
    checks that the guard is really used, so an httpx change cannot silently unguard us.
    """

    def __init__(
        self,
        *,
        ssl_context: SSLContext | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
        backend: GuardedBackend | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> None:
        self.backend = backend or GuardedBackend()
        # httpx's default: certifi's CA bundle, hostname checks, TLS 1.2+.
        context = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        options = None if socket_options is None else list(socket_options)
        self._transports: dict[bool, httpx.AsyncHTTPTransport] = {}
        for allow in (False, True):
            transport = httpx.AsyncHTTPTransport(
                verify=context, trust_env=False, http1=True, http2=False, limits=limits
            )
            pool = httpcore.AsyncConnectionPool(
                ssl_context=context,
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                http1=True,
                http2=False,
                retries=0,
                local_address=local_address,
                network_backend=self.backend,
                socket_options=options,
            )
            _replace_pool(transport, pool)
            self._transports[allow] = transport

    def pool(self, allow_private: bool) -> httpcore.AsyncConnectionPool:
        """The httpcore pool serving requests with that setting (for checks and tests)."""
        return self._transports[allow_private]._pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._transports[private_allowed()].handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()


def _replace_pool(transport: httpx.AsyncHTTPTransport, pool: httpcore.AsyncConnectionPool) -> None:
    """Give an httpx AsyncHTTPTransport our httpcore pool; refuse if httpx has changed."""
    current = getattr(transport, "_pool", None)
    if type(current) is not httpcore.AsyncConnectionPool:
        raise RuntimeError(
            "httpx.AsyncHTTPTransport no longer keeps its httpcore pool in `_pool` "
            f"(found {type(current).__name__}): cannot install the address guard"
        )
    transport._pool = pool
