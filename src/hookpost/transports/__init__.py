"""The network edge's interface: a request goes in, a response or a ``TransportError`` comes out.

Implementations live beside it (``hookpost.transports.http``, ``hookpost.transports.memory``).
Every failure that produced no HTTP response is one of these; an HTTP answer of any
status, 3xx and 5xx included, is a ``Response`` and never an exception::

    TransportError              no HTTP response was obtained
     ├── ConnectError           DNS failure, connection refused or reset, TLS failure
     ├── TransportTimeout       the connect or the total timeout expired
     ├── AddressNotAllowed      the SSRF guard refused every address of the destination
     └── InvalidRequestURL      not an absolute http(s) URL with a usable host

Third-party errors (aiohttp, asyncio, socket) are translated into this tree at one
boundary in each transport, with ``raise ... from exc`` so the cause stays visible.
Messages name hosts and addresses, never the full URL (query strings carry secrets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

__all__ = [
    "AddressNotAllowed",
    "ConnectError",
    "InvalidRequestURL",
    "Request",
    "Response",
    "Transport",
    "TransportError",
    "TransportTimeout",
]


class TransportError(Exception):
    """No HTTP response was obtained; the retry policy treats it as a failed attempt."""


class ConnectError(TransportError):
    """The destination could not be reached: DNS failure, refused or reset connection, TLS failure."""


class TransportTimeout(TransportError):
    """The connect timeout or the total timeout expired before a complete response arrived."""


class InvalidRequestURL(TransportError):
    """The URL is not an absolute ``http``/``https`` URL with a usable host."""


class AddressNotAllowed(TransportError):
    """The SSRF guard refused the destination: none of its addresses is public or allow-listed."""

    def __init__(self, host: str, addresses: Sequence[str]) -> None:
        self.host = host
        self.addresses = tuple(addresses)
        shown = ", ".join(self.addresses) or "no address"
        super().__init__(
            f"refusing to connect to {host}: {shown} is not a public address "
            "(add its network to allowed_networks to permit it)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The constructor takes two arguments, not the message: keep pickling (Celery) and copy working.
        return (type(self), (self.host, self.addresses))


@dataclass(frozen=True)
class Request:
    """A signed webhook request, ready to send."""

    url: str
    headers: dict[str, str]
    body: bytes
    method: str = "POST"
    msg_id: str = ""


@dataclass(frozen=True)
class Response:
    """What came back: the status, headers and the start of the body (capped by the transport).

    ``headers`` has lower-case names. ``truncated`` is true when the body was cut at the
    transport's cap; ``elapsed_ms`` runs from sending the request to the end of reading.
    """

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False
    elapsed_ms: float = 0.0


@runtime_checkable
class Transport(Protocol):
    """Sends one request; raises ``TransportError`` subclasses for anything but an HTTP answer."""

    async def send(self, request: Request) -> Response:
        """Send ``request`` and return the response."""
        ...


class ClosesOnExit:
    """Gives a transport ``async with`` support: leaving the block awaits its ``close()``."""

    async def close(self) -> None:
        """Release what the transport holds (nothing, unless a subclass says otherwise)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
