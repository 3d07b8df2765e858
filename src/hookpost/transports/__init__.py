"""The network edge's interface: a request goes in, a response comes out; implementations live beside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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
    """What came back: the status, headers and the start of the body (capped by the transport)."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Transport(Protocol):
    """Sends one request; raises ``TransportError`` subclasses for anything but an HTTP answer."""

    async def send(self, request: Request) -> Response:
        """Send ``request`` and return the response."""
        ...
