"""An in-memory transport that records requests and plays back scripted outcomes, for tests."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, TypeAlias

from hookpost.transports import ClosesOnExit, Request, Response, Transport, TransportError

__all__ = ["MemoryTransport", "Outcome"]

Outcome: TypeAlias = Response | int | TransportError
"""What one send produces: a ``Response``, a bare status code, or a ``TransportError`` to raise."""


class MemoryTransport(ClosesOnExit):
    """Records every request in ``requests`` and answers from per-URL scripts, without any I/O.

    ``script(url, *outcomes)`` queues outcomes for one URL (an exact string match); they are
    used in order and the last one repeats. A URL with no script gets ``default`` (200).
    ``delay`` seconds of ``asyncio.sleep`` before each outcome simulate latency.

        transport = MemoryTransport()
        transport.script("https://example.com/hook", 503, ConnectError("reset"), 200)
    """

    def __init__(self, *, default: Response | int = 200, delay: float = 0.0) -> None:
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.default: Response = _as_response(default)
        self.delay = delay
        self.requests: list[Request] = []
        self._scripts: dict[str, deque[Outcome]] = {}

    def script(self, url: str, *outcomes: Outcome) -> None:
        """Answer requests to ``url`` with ``outcomes`` in order, the last repeating; replaces earlier."""
        if not outcomes:
            raise ValueError("script() needs at least one outcome")
        for outcome in outcomes:
            if isinstance(outcome, int):
                # Validate now, so a typo fails at the script line rather than inside a worker.
                _as_response(outcome)
            elif not isinstance(outcome, Response | TransportError):
                raise TypeError(f"an outcome is a Response, an int or a TransportError, not {outcome!r}")
        self._scripts[url] = deque(outcomes)

    def reset(self) -> None:
        """Forget recorded requests and all scripts."""
        self.requests.clear()
        self._scripts.clear()

    async def send(self, request: Request) -> Response:
        """Record ``request`` and return (or raise) the next scripted outcome for its URL."""
        # Recorded before the delay so a test can see requests that are still in flight.
        self.requests.append(request)
        outcome = self._next(request.url)
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(outcome, TransportError):
            # The same instance may be raised many times; do not let tracebacks pile up on it.
            raise outcome.with_traceback(None)
        return _as_response(outcome)

    async def close(self) -> None:
        """Nothing to release; present so code written for ``HttpTransport`` runs unchanged."""

    def _next(self, url: str) -> Outcome:
        queue = self._scripts.get(url)
        if not queue:
            return self.default
        return queue.popleft() if len(queue) > 1 else queue[0]


def _as_response(outcome: Response | int) -> Response:
    if isinstance(outcome, Response):
        return outcome
    if isinstance(outcome, bool) or not 100 <= outcome <= 599:
        raise ValueError(f"{outcome!r} is not an HTTP status code")
    return Response(status_code=outcome)


if TYPE_CHECKING:

    def _conforms(transport: MemoryTransport) -> Transport:
        return transport
