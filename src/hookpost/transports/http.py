"""An aiohttp transport that sends webhooks only to public (or allow-listed) addresses, without redirects."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from hookpost.transports import (
    AddressNotAllowed,
    ClosesOnExit,
    ConnectError,
    InvalidRequestURL,
    Request,
    Response,
    Transport,
    TransportError,
    TransportTimeout,
)

__all__ = ["AddressPolicy", "GuardedResolver", "HttpTransport"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# How many judged URLs a transport remembers (only their parse and the IP-literal check;
# names are still resolved and judged on every connection).
_CHECKED_URLS = 1024

# RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 destination.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressPolicy:
    """Decides whether an IP address may be connected to: global unicast, or inside an allowed network.

    Loopback, private, link-local (cloud metadata included), shared (CGNAT), multicast,
    reserved, unspecified and documentation ranges are refused, and so are the IPv6 forms
    that embed such an IPv4 address (IPv4-mapped, 6to4, NAT64).
    """

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        if isinstance(allowed_networks, str | bytes):
            # A bare string would be iterated character by character.
            raise ValueError("allowed_networks must be a sequence of CIDR strings, not a single string")
        networks: list[IPNetwork] = []
        for cidr in allowed_networks:
            if not isinstance(cidr, str):
                raise ValueError(f"allowed network {cidr!r} is not a string")
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"invalid allowed network {cidr!r}: {exc}") from exc
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(networks)

    def allows(self, address: str | IPAddress) -> bool:
        """Whether a connection to ``address`` is permitted; unparsable addresses are not."""
        if isinstance(address, str):
            try:
                ip: IPAddress = ipaddress.ip_address(address)
            except ValueError:
                return False
        else:
            ip = address
        # An IPv4-mapped address is the IPv4 address as far as the socket layer is concerned.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip.version == net.version and ip in net for net in self.allowed_networks):
            return True
        return self._is_public(ip)

    def _is_public(self, ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address):
            # These prefixes carry traffic on to an embedded IPv4 address; judge that address.
            # NAT64 is checked by hand because ipaddress calls all of ::/8 reserved, which would
            # break delivery from IPv6-only hosts behind DNS64.
            if ip in _NAT64:
                return self.allows(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            if ip.sixtofour is not None:
                return self.allows(ip.sixtofour)
            if ip.is_site_local:
                return False
        # is_global alone lets multicast (and, for IPv6, ::/8 forms such as ::127.0.0.1) through.
        return ip.is_global and not (
            ip.is_multicast
            or ip.is_reserved
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_private
            or ip.is_unspecified
        )


class GuardedResolver(AbstractResolver):
    """Resolves with an inner resolver and keeps only the addresses the policy allows.

    The connector connects to exactly the addresses returned here, so a DNS answer that
    changes between the check and the connect (rebinding) cannot reach a refused address.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner
        # A resolver handed in belongs to the caller; only one made here is closed here.
        self._owns_inner = inner is None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and drop refused addresses; raise ``AddressNotAllowed`` if none remain."""
        if self._inner is None:
            # aiohttp's default resolver binds to the running loop, so it is made on first use.
            self._inner = aiohttp.DefaultResolver()
        results = await self._inner.resolve(host, port, family=family)
        allowed = [result for result in results if self.policy.allows(result["host"])]
        if not allowed:
            raise AddressNotAllowed(host, sorted({result["host"] for result in results}))
        return allowed

    async def close(self) -> None:
        """Close the inner resolver if this object created it."""
        if self._inner is not None and self._owns_inner:
            await self._inner.close()


class HttpTransport(ClosesOnExit):
    """Sends webhooks with one pooled aiohttp session, guarding against SSRF.

    Only global unicast destinations are reached unless ``allowed_networks`` (CIDR strings,
    e.g. ``"127.0.0.0/8"`` for tests) opens more. Redirects are never followed, TLS is
    verified, and at most ``max_response_bytes`` of a response body are read.

    ``connect_timeout`` bounds opening one connection (TCP and TLS) to one address;
    ``total_timeout`` bounds the whole exchange, reading the body included. ``pool_size``
    caps open connections, ``pool_size_per_host`` (default: ``pool_size``) those to one
    host and port. ``resolver`` replaces aiohttp's default resolver under the guard.

    The session is created on first ``send`` and belongs to that event loop; call
    ``close()`` (or use ``async with``) in the same loop. A closed transport cannot send.
    """

    def __init__(
        self,
        *,
        allowed_networks: Sequence[str] = (),
        connect_timeout: float = 5.0,
        total_timeout: float = 15.0,
        max_response_bytes: int = 16384,
        pool_size: int = 100,
        pool_size_per_host: int | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        if connect_timeout <= 0 or total_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")
        if pool_size < 1 or (pool_size_per_host is not None and pool_size_per_host < 1):
            raise ValueError("pool sizes must be at least 1")
        self.policy = AddressPolicy(allowed_networks)
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_response_bytes = max_response_bytes
        self.pool_size = pool_size
        self.pool_size_per_host = pool_size_per_host or pool_size
        self._inner_resolver = resolver
        self._resolver: GuardedResolver | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # URLs already parsed and judged: a worker sends to the same few URLs all day.
        self._checked: dict[str, tuple[URL, str]] = {}

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._closed

    async def close(self) -> None:
        """Close the pooled connections and the resolver; safe to call more than once."""
        self._closed = True
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()

    async def send(self, request: Request) -> Response:
        """Send ``request``; any status is a ``Response``, anything else a ``TransportError``."""
        url, host = self._check_url(request.url)
        session = self._get_session()
        try:
            return await self._exchange(session, request, url)
        except TransportError:
            raise
        # The one place third-party errors become ours. Timeouts first: TimeoutError is an OSError.
        except TimeoutError as exc:
            raise TransportTimeout(f"{host}: timed out ({type(exc).__name__})") from exc
        except aiohttp.InvalidURL as exc:
            raise InvalidRequestURL(f"{host}: aiohttp rejected the URL ({type(exc).__name__})") from exc
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise ConnectError(f"{host}: {_describe(exc)}") from exc
        except aiohttp.ClientError as exc:
            # Protocol errors and the like; their str() can embed the URL, so only the type is shown.
            raise TransportError(f"{host}: {type(exc).__name__}") from exc
        except OSError as exc:
            raise ConnectError(f"{host}: {_describe(exc)}") from exc

    def _check_url(self, raw: str) -> tuple[URL, str]:
        """Parse the URL and judge an IP-literal host here, since aiohttp skips the resolver for those."""
        checked = self._checked.get(raw)
        if checked is not None:
            return checked
        checked = self._parse_and_judge(raw)
        if len(self._checked) >= _CHECKED_URLS:
            self._checked.clear()
        self._checked[raw] = checked
        return checked

    def _parse_and_judge(self, raw: str) -> tuple[URL, str]:
        try:
            url = URL(raw)
        except (ValueError, TypeError) as exc:
            raise InvalidRequestURL("the URL cannot be parsed") from exc
        if url.scheme not in ("http", "https"):
            shown = url.scheme or "a relative URL"
            raise InvalidRequestURL(f"only http and https URLs are sent, not {shown!r}")
        host = url.host
        if not host:
            raise InvalidRequestURL("the URL has no host")
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
            # Hosts like "2130706433" or "127.1" are numeric IPv4 spellings the OS would honour;
            # they are not names to resolve, and not canonical addresses either.
            if ":" in host or host.replace(".", "").isdigit():
                raise InvalidRequestURL(f"{host!r} is not a canonical IP address") from None
        if literal is not None and not self.policy.allows(literal):
            raise AddressNotAllowed(host, [str(literal)])
        return url, host

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this HttpTransport is closed")
        loop = asyncio.get_running_loop()
        if self._session is not None:
            if self._loop is not loop:
                raise RuntimeError("this HttpTransport belongs to another event loop")
            return self._session
        self._resolver = GuardedResolver(self.policy, self._inner_resolver)
        connector = aiohttp.TCPConnector(
            limit=self.pool_size,
            limit_per_host=self.pool_size_per_host,
            resolver=self._resolver,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # sock_connect rather than connect: waiting for a free pool slot is not the
            # receiver's fault and must not be reported as a connect timeout.
            timeout=aiohttp.ClientTimeout(total=self.total_timeout, sock_connect=self.connect_timeout),
            # Proxies and netrc from the environment would bypass the address guard.
            trust_env=False,
            # Receivers of different owners share the session: never carry cookies between them.
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )
        self._loop = loop
        return self._session

    async def _exchange(self, session: aiohttp.ClientSession, request: Request, url: URL) -> Response:
        started = time.perf_counter()
        resp = await session.request(
            request.method,
            url,
            headers=request.headers,
            data=request.body,
            allow_redirects=False,
        )
        try:
            body, truncated = await self._read_capped(resp)
        except BaseException:
            resp.close()
            raise
        if truncated:
            # Draining the rest to reuse the connection could mean reading a gigabyte: drop it.
            resp.close()
        else:
            resp.release()
        return Response(
            status_code=resp.status,
            headers=_plain_headers(resp.headers.items()),
            body=body,
            truncated=truncated,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
        )

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        # One byte past the cap tells "exactly the cap" from "more than the cap".
        wanted = self.max_response_bytes + 1
        chunks: list[bytes] = []
        size = 0
        while size < wanted:
            chunk = await resp.content.read(wanted - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        if size > self.max_response_bytes:
            return body[: self.max_response_bytes], True
        return body, False


def _plain_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        # Repeated fields combine with ", " (RFC 9110 5.3), so none is silently lost.
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _describe(exc: BaseException) -> str:
    # strerror is the OS or resolver reason ("Connection refused"); str() may carry the URL.
    reason = getattr(exc, "strerror", None)
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


if TYPE_CHECKING:

    def _conforms(transport: HttpTransport) -> Transport:
        return transport
