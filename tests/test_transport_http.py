"""HttpTransport against real aiohttp servers on 127.0.0.1: answers, limits, timeouts and the SSRF guard.

Every test runs in a ``RecordingLoop``: it records each outgoing connect and refuses any
that is not to 127.0.0.1, so no test can reach another address even if the guard broke.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import pickle
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

import hookpost.transports
from hookpost.transports import (
    AddressNotAllowed,
    ConnectError,
    InvalidRequestURL,
    Request,
    Response,
    Transport,
    TransportError,
    TransportTimeout,
)
from hookpost.transports.http import AddressPolicy, GuardedResolver, HttpTransport
from tests.purity import django_modules_after_importing

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.0/8",)


# ---------------------------------------------------------------------------- harness


class RecordingLoop(asyncio.SelectorEventLoop):
    """An event loop that records every client connect and blocks all but 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.connects: list[tuple[Any, ...]] = []
        # Connects to these ports hang, like a SYN sent to a host that drops it.
        self.stalled_ports: set[int] = set()

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        self.connects.append(tuple(address))
        if address[0] != "127.0.0.1":
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"test loop blocks {address[0]}")
        if address[1] in self.stalled_ports:
            await asyncio.Event().wait()
        await super().sock_connect(sock, address)

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        # aiohttp connects the socket itself (sock_connect above) and passes sock=; anything
        # else connecting by host name would show up here.
        if kwargs.get("sock") is None:
            host = kwargs.get("host", args[1] if len(args) > 1 else None)
            port = kwargs.get("port", args[2] if len(args) > 2 else None)
            self.connects.append((host, port))
            if host != "127.0.0.1":
                raise ConnectionRefusedError(errno.ECONNREFUSED, f"test loop blocks {host}")
        return await super().create_connection(*args, **kwargs)


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=RecordingLoop) as runner:
        return runner.run(main())


def connects() -> list[tuple[Any, ...]]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, RecordingLoop)
    return loop.connects


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[Any, ...]


@dataclass
class Server:
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def peers(self) -> set[tuple[Any, ...]]:
        return {seen.peer for seen in self.seen}


Handler = Callable[[web.Request, Server], Awaitable[web.StreamResponse]]


async def ok(request: web.Request, server: Server) -> web.StreamResponse:
    return web.Response(text="ok")


@asynccontextmanager
async def serve(handler: Handler = ok, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """A real aiohttp server on 127.0.0.1 that records every request it receives."""
    server = Server()

    async def record(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        server.seen.append(
            Seen(
                method=request.method,
                path=request.path_qs,
                headers=dict(request.headers),
                body=await request.read(),
                peer=tuple(request.transport.get_extra_info("peername")),
            )
        )
        return await handler(request, server)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    # Cancelling handlers on disconnect lets never-answering handlers end with the test.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        server.port = runner.addresses[0][1]
        yield server
    finally:
        await runner.cleanup()


class MapResolver(AbstractResolver):
    """A resolver with a fixed table, recording every lookup; unknown names fail like DNS does."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        pass


def post(url: str, body: bytes = b'{"type": "ping"}', **headers: str) -> Request:
    return Request(url=url, headers={"content-type": "application/json", **headers}, body=body)


# ---------------------------------------------------------------------------- answers


def test_a_200_comes_back_with_status_body_and_lower_case_headers() -> None:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        response = web.Response(body=b"thanks", status=200, headers={"X-Reply": "yes"})
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def main() -> Response:
        async with serve(handler) as server, HttpTransport(allowed_networks=LOOPBACK) as transport:
            return await transport.send(post(server.url()))

    response = run(main)
    assert response.status_code == 200
    assert response.body == b"thanks"
    assert response.headers["x-reply"] == "yes"
    assert response.headers["content-length"] == "6"
    assert response.headers["set-cookie"] == "a=1, b=2"
    assert all(name == name.lower() for name in response.headers)
    assert response.truncated is False
    assert response.elapsed_ms > 0


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_method_body_and_headers_arrive_exactly(method: str) -> None:
    body = b'{"type": "library.book.deleted", "data": {"id": 7, "title": "\xc3\xa9t\xc3\xa9"}}'
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= v1,b2xkc2VjcmV0",
        "user-agent": "hookpost-test/1.0",
    }

    async def main() -> Server:
        async with serve() as server, HttpTransport(allowed_networks=LOOPBACK) as transport:
            request = Request(url=server.url("/in?x=1"), headers=headers, body=body, method=method)
            await transport.send(request)
            return server

    server = run(main)
    [seen] = server.seen
    assert seen.method == method
    assert seen.path == "/in?x=1"
    assert seen.body == body
    received = {name.lower(): value for name, value in seen.headers.items()}
    assert {name: received.get(name) for name in headers} == headers
    assert received["content-length"] == str(len(body))
    assert "cookie" not in received


def test_a_500_is_a_response_not_an_error() -> None:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        return web.Response(status=500, text="boom")

    async def main() -> Response:
        async with serve(handler) as server, HttpTransport(allowed_networks=LOOPBACK) as transport:
            return await transport.send(post(server.url()))

    response = run(main)
    assert (response.status_code, response.body) == (500, b"boom")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_returned_not_followed(status: int) -> None:
    async def main() -> tuple[Response, Server]:
        async with serve() as target:

            async def redirect(request: web.Request, server: Server) -> web.StreamResponse:
                return web.Response(status=status, headers={"Location": target.url("/elsewhere")})

            async with serve(redirect) as origin, HttpTransport(allowed_networks=LOOPBACK) as transport:
                return await transport.send(post(origin.url())), target

    response, target = run(main)
    assert response.status_code == status
    assert response.headers["location"].endswith("/elsewhere")
    assert target.seen == []


def test_a_redirect_to_the_metadata_address_is_not_followed() -> None:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/security-credentials/")

    async def main() -> tuple[Response, int, list[tuple[Any, ...]]]:
        async with serve(handler) as server, HttpTransport(allowed_networks=LOOPBACK) as transport:
            return await transport.send(post(server.url())), server.port, connects()

    response, port, made = run(main)
    assert response.status_code == 302
    assert response.headers["location"].startswith("http://169.254.169.254/")
    assert made == [("127.0.0.1", port)]


# ---------------------------------------------------------------------------- SSRF guard


def test_loopback_is_refused_unless_allow_listed() -> None:
    async def main() -> tuple[AddressNotAllowed, list[tuple[Any, ...]], Server, Response]:
        async with serve() as server:
            async with HttpTransport() as transport:
                with pytest.raises(AddressNotAllowed) as refused:
                    await transport.send(post(server.url()))
            made = list(connects())
            async with HttpTransport(allowed_networks=["127.0.0.0/8"]) as transport:
                response = await transport.send(post(server.url()))
            return refused.value, made, server, response

    refused, made, server, response = run(main)
    assert made == []
    assert (refused.host, refused.addresses) == ("127.0.0.1", ("127.0.0.1",))
    assert len(server.seen) == 1  # only the allow-listed attempt arrived
    assert response.status_code == 200


def test_a_hostname_resolving_to_loopback_is_refused_before_connecting() -> None:
    resolver = MapResolver({"evil.test": ["127.0.0.1"]})

    async def main() -> tuple[AddressNotAllowed, list[tuple[Any, ...]], Server]:
        async with serve() as server, HttpTransport(resolver=resolver) as transport:
            url = server.url("/hook?token=s3cr3t", host="evil.test")
            with pytest.raises(AddressNotAllowed) as refused:
                await transport.send(post(url))
            return refused.value, connects(), server

    refused, made, server = run(main)
    assert resolver.calls == ["evil.test"]
    assert made == []
    assert server.seen == []
    assert (refused.host, refused.addresses) == ("evil.test", ("127.0.0.1",))
    assert "evil.test" in str(refused) and "127.0.0.1" in str(refused)
    assert "s3cr3t" not in str(refused)


@pytest.mark.parametrize("host", ["localhost", "0x7f.0.0.1"])
def test_names_the_system_resolver_maps_to_loopback_are_refused(host: str) -> None:
    # "0x7f.0.0.1" is not an IP literal to aiohttp, but getaddrinfo reads it as 127.0.0.1.
    async def main() -> tuple[list[tuple[Any, ...]], Server]:
        async with serve() as server, HttpTransport() as transport:
            with pytest.raises(AddressNotAllowed, match="127.0.0.1"):
                await transport.send(post(server.url(host=host)))
            return connects(), server

    made, server = run(main)
    assert made == []
    assert server.seen == []


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "10.0.0.1",
        "100.64.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
        "224.0.0.1",
        "[fe80::1]",
        "[64:ff9b::a9fe:a9fe]",
        "[2002:7f00:1::]",
        "192.168.1.1",
    ],
)
def test_forbidden_ip_literals_are_refused_without_any_network_io(host: str) -> None:
    resolver = MapResolver({})

    async def main() -> tuple[float, list[tuple[Any, ...]]]:
        async with HttpTransport(resolver=resolver, connect_timeout=5.0) as transport:
            started = time.perf_counter()
            with pytest.raises(AddressNotAllowed):
                await transport.send(post(f"http://{host}:8080/hook"))
            return time.perf_counter() - started, connects()

    elapsed, made = run(main)
    assert made == []
    assert resolver.calls == []
    assert elapsed < 2.5  # far below the 5 s connect timeout: refused before any I/O


def test_a_refused_ip_literal_is_refused_again_on_every_send() -> None:
    async def main() -> list[tuple[Any, ...]]:
        async with HttpTransport(resolver=MapResolver({})) as transport:
            for _ in range(3):
                with pytest.raises(AddressNotAllowed):
                    await transport.send(post("http://10.0.0.1:8080/hook"))
            return connects()

    assert run(main) == []


def test_judged_urls_are_remembered_up_to_a_bound() -> None:
    transport = HttpTransport(allowed_networks=LOOPBACK)
    first = transport._check_url("http://127.0.0.1:1/hook")
    assert transport._check_url("http://127.0.0.1:1/hook") is first
    for number in range(3000):
        transport._check_url(f"http://127.0.0.1:1/hook/{number}")
    assert 0 < len(transport._checked) <= hookpost.transports.http._CHECKED_URLS


def test_a_name_with_mixed_addresses_connects_only_to_the_allowed_one() -> None:
    resolver = MapResolver({"mixed.test": ["10.0.0.1", "127.0.0.1"]})

    async def main() -> tuple[Response, list[tuple[Any, ...]], Server]:
        async with (
            serve() as server,
            HttpTransport(allowed_networks=LOOPBACK, resolver=resolver) as transport,
        ):
            response = await transport.send(post(server.url(host="mixed.test")))
            return response, connects(), server

    response, made, server = run(main)
    assert response.status_code == 200
    assert made == [("127.0.0.1", server.port)]
    [seen] = server.seen
    assert seen.headers["Host"] == f"mixed.test:{server.port}"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "198.18.0.1",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "2001:db8::1",
        "2001::1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::",
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b:1::1",
        "not an address",
    ],
)
def test_the_policy_refuses_non_public_addresses(address: str) -> None:
    assert AddressPolicy().allows(address) is False


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "::ffff:8.8.8.8", "2606:4700:4700::1111", "2002:808:808::", "64:ff9b::808:808"],
)
def test_the_policy_allows_global_unicast_addresses(address: str) -> None:
    assert AddressPolicy().allows(address) is True


def test_allowed_networks_open_exactly_their_ranges() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "10.20.0.0/16", "fd00::/8"])
    assert policy.allows("127.0.0.1")
    assert policy.allows("::ffff:127.0.0.1")
    assert policy.allows("10.20.30.40")
    assert policy.allows("fd00::5")
    assert not policy.allows("10.21.0.1")
    assert not policy.allows("169.254.169.254")
    assert not policy.allows("::1")


@pytest.mark.parametrize(
    "networks", [["not-a-cidr"], ["10.0.0.1/8"], ["300.0.0.0/8"], ["10.0.0.0/33"], "127.0.0.0/8"]
)
def test_invalid_allowed_networks_are_rejected(networks: Any) -> None:
    with pytest.raises(ValueError, match="allowed"):
        HttpTransport(allowed_networks=networks)


def test_the_guarded_resolver_refuses_when_nothing_allowed_remains() -> None:
    inner = MapResolver({"internal.test": ["10.0.0.1", "192.168.0.2"]})
    guarded = GuardedResolver(AddressPolicy(), inner)

    async def main() -> None:
        with pytest.raises(AddressNotAllowed) as refused:
            await guarded.resolve("internal.test", 443)
        assert refused.value.addresses == ("10.0.0.1", "192.168.0.2")
        await guarded.close()

    run(main)


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "mailto:ops@example.com",
        "not a url",
        "",
        "http://",
        "http:///hook",
        "//example.com/hook",
        "http://[::1",
        "http://2130706433/",
        "http://127.1/",
        "http://0177.0.0.1/",
    ],
)
def test_unusable_urls_are_invalid_request_urls(url: str) -> None:
    async def main() -> list[tuple[Any, ...]]:
        async with HttpTransport(allowed_networks=LOOPBACK) as transport:
            with pytest.raises(InvalidRequestURL):
                await transport.send(post(url))
        return connects()

    assert run(main) == []


def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now.

    async def main() -> ConnectError:
        async with HttpTransport(allowed_networks=LOOPBACK) as transport:
            with pytest.raises(ConnectError) as failed:
                await transport.send(post(f"http://127.0.0.1:{port}/hook"))
            return failed.value

    error = run(main)
    assert isinstance(error.__cause__, OSError)
    assert "127.0.0.1" in str(error)


def test_an_unknown_name_is_a_connect_error() -> None:
    async def main() -> None:
        async with HttpTransport(resolver=MapResolver({})) as transport:
            with pytest.raises(ConnectError):
                await transport.send(post("https://nowhere.test/hook"))

    run(main)


def test_a_connect_that_hangs_hits_the_connect_timeout_long_before_the_total() -> None:
    async def main() -> float:
        async with (
            serve() as server,
            HttpTransport(allowed_networks=LOOPBACK, connect_timeout=0.3, total_timeout=20.0) as transport,
        ):
            loop = asyncio.get_running_loop()
            assert isinstance(loop, RecordingLoop)
            loop.stalled_ports.add(server.port)
            started = time.perf_counter()
            with pytest.raises(TransportTimeout):
                await transport.send(post(server.url()))
            return time.perf_counter() - started

    assert run(main) < 10.0


def seconds_to_time_out(handler: Handler, total_timeout: float) -> float:
    """How long a send to a server running ``handler`` takes to fail with ``TransportTimeout``."""

    async def main() -> float:
        async with (
            serve(handler) as server,
            HttpTransport(
                allowed_networks=LOOPBACK, connect_timeout=0.5, total_timeout=total_timeout
            ) as transport,
        ):
            started = time.perf_counter()
            with pytest.raises(TransportTimeout):
                await transport.send(post(server.url()))
            return time.perf_counter() - started

    return run(main)


def test_a_server_that_never_answers_times_out() -> None:
    async def silent(request: web.Request, server: Server) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    # Far below the 15 s default: the configured timeout is the one that fired.
    assert seconds_to_time_out(silent, total_timeout=0.5) < 3.0


def test_a_trickling_body_hits_the_total_timeout() -> None:
    async def trickle(request: web.Request, server: Server) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while True:
            await response.write(b"x")
            await asyncio.sleep(0.2)

    assert seconds_to_time_out(trickle, total_timeout=0.7) < 3.0


def huge_body(size: int) -> Handler:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        chunk = b"x" * 65536
        server.state["sent"] = 0
        while server.state["sent"] < size:
            await response.write(chunk)
            server.state["sent"] += len(chunk)
        server.state["finished"] = True
        return response

    return handler


def test_a_huge_body_is_cut_at_the_cap_without_reading_the_rest() -> None:
    size = 50 * 1024 * 1024

    async def main() -> tuple[Response, Server]:
        async with (
            serve(huge_body(size)) as server,
            HttpTransport(allowed_networks=LOOPBACK, max_response_bytes=16384) as transport,
        ):
            return await transport.send(post(server.url())), server

    response, server = run(main)
    assert response.status_code == 200
    assert response.body == b"x" * 16384
    assert response.truncated is True
    assert "finished" not in server.state
    assert server.state["sent"] < size // 2


@pytest.mark.parametrize(("size", "truncated"), [(99, False), (100, False), (101, True)])
def test_truncated_is_set_only_past_the_cap(size: int, truncated: bool) -> None:
    async def handler(request: web.Request, server: Server) -> web.StreamResponse:
        return web.Response(body=b"y" * size)

    async def main() -> Response:
        async with (
            serve(handler) as server,
            HttpTransport(allowed_networks=LOOPBACK, max_response_bytes=100) as transport,
        ):
            return await transport.send(post(server.url()))

    response = run(main)
    assert response.body == b"y" * min(size, 100)
    assert response.truncated is truncated


# ---------------------------------------------------------------------------- connections


def test_sequential_requests_share_one_connection() -> None:
    async def main() -> Server:
        async with serve() as server, HttpTransport(allowed_networks=LOOPBACK) as transport:
            for _ in range(3):
                assert (await transport.send(post(server.url()))).status_code == 200
            return server

    server = run(main)
    assert len(server.seen) == 3
    assert len(server.peers) == 1


def test_a_truncated_response_does_not_keep_its_connection() -> None:
    async def main() -> Server:
        async with (
            serve(huge_body(10 * 1024 * 1024)) as server,
            HttpTransport(allowed_networks=LOOPBACK, max_response_bytes=1024) as transport,
        ):
            assert (await transport.send(post(server.url()))).truncated
            assert (await transport.send(post(server.url()))).truncated
            return server

    server = run(main)
    assert len(server.seen) == 2
    assert len(server.peers) == 2


def self_signed(tmp_path: Path, name: str) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def test_tls_is_verified_and_the_hostname_is_sent_as_sni(tmp_path: Path) -> None:
    context = self_signed(tmp_path, "hooks.test")
    server_names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)
    resolver = MapResolver({"hooks.test": ["127.0.0.1"]})

    async def main() -> tuple[ConnectError, Server]:
        async with (
            serve(ssl_context=context) as server,
            HttpTransport(allowed_networks=LOOPBACK, resolver=resolver) as transport,
        ):
            with pytest.raises(ConnectError) as failed:
                await transport.send(post(f"https://hooks.test:{server.port}/hook"))
            return failed.value, server

    error, server = run(main)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert server_names == ["hooks.test"]
    assert server.seen == []


# ---------------------------------------------------------------------------- lifecycle and API


def test_a_closed_transport_refuses_to_send_and_closes_twice_safely() -> None:
    async def main() -> None:
        transport = HttpTransport(allowed_networks=LOOPBACK)
        async with serve() as server:
            await transport.send(post(server.url()))
            await transport.close()
            await transport.close()
            assert transport.closed
            with pytest.raises(RuntimeError, match="closed"):
                await transport.send(post(server.url()))

    run(main)


def test_http_transport_satisfies_the_protocol() -> None:
    assert isinstance(HttpTransport(), Transport)


def test_address_not_allowed_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(AddressNotAllowed("evil.test", ["127.0.0.1"])))
    assert (error.host, error.addresses) == ("evil.test", ("127.0.0.1",))
    assert str(error) == str(AddressNotAllowed("evil.test", ["127.0.0.1"]))


def test_the_exception_tree() -> None:
    for error in (ConnectError, TransportTimeout, AddressNotAllowed, InvalidRequestURL):
        assert issubclass(error, TransportError)
    assert issubclass(TransportError, Exception)


def test_the_public_names_are_pinned() -> None:
    assert sorted(hookpost.transports.__all__) == [
        "AddressNotAllowed",
        "ConnectError",
        "InvalidRequestURL",
        "Request",
        "Response",
        "Transport",
        "TransportError",
        "TransportTimeout",
    ]
    assert sorted(hookpost.transports.http.__all__) == ["AddressPolicy", "GuardedResolver", "HttpTransport"]


def test_the_transports_import_no_django() -> None:
    assert django_modules_after_importing("hookpost.transports.http", "hookpost.transports.memory") == []
