"""MemoryTransport: recorded requests, per-URL scripts whose last outcome repeats, errors and latency."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from hookpost.transports import ConnectError, Request, Response, Transport, TransportTimeout
from hookpost.transports.memory import MemoryTransport

T = TypeVar("T")
A = "https://a.example/hook"
B = "https://b.example/hook"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def req(url: str, body: bytes = b"{}") -> Request:
    return Request(url=url, headers={"webhook-id": "msg_1"}, body=body)


async def statuses(transport: MemoryTransport, url: str, count: int) -> list[int]:
    return [(await transport.send(req(url))).status_code for _ in range(count)]


def test_every_request_is_recorded_in_order() -> None:
    transport = MemoryTransport()
    sent = [req(A, b"1"), req(B, b"2"), req(A, b"3")]

    async def main() -> None:
        for request in sent:
            await transport.send(request)

    run(main())
    assert transport.requests == sent


def test_an_unscripted_url_gets_200() -> None:
    response = run(MemoryTransport().send(req(A)))
    assert response == Response(status_code=200)


def test_the_default_can_be_changed() -> None:
    transport = MemoryTransport(default=Response(204, {"x-default": "1"}))
    assert run(transport.send(req(A))) == Response(204, {"x-default": "1"})


def test_scripted_outcomes_are_used_in_order_and_the_last_repeats() -> None:
    transport = MemoryTransport()
    transport.script(A, 503, 500, 200)
    assert run(statuses(transport, A, 5)) == [503, 500, 200, 200, 200]


def test_scripts_are_per_url() -> None:
    transport = MemoryTransport()
    transport.script(A, 410)
    transport.script(B, 500, 201)

    async def main() -> list[int]:
        return [(await transport.send(req(url))).status_code for url in (A, B, A, B, "https://c.example/")]

    assert run(main()) == [410, 500, 410, 201, 200]


def test_scripting_a_url_again_replaces_its_script() -> None:
    transport = MemoryTransport()
    transport.script(A, 500, 500)
    transport.script(A, 202)
    assert run(statuses(transport, A, 2)) == [202, 202]


def test_a_response_outcome_is_returned_as_given() -> None:
    transport = MemoryTransport()
    given = Response(429, {"retry-after": "30"}, b"slow down", truncated=False, elapsed_ms=3.0)
    transport.script(A, given)
    assert run(transport.send(req(A))) is given


def test_error_outcomes_are_raised_and_repeat() -> None:
    transport = MemoryTransport()
    refused = ConnectError("a.example: connection refused")
    transport.script(A, TransportTimeout("a.example: timed out"), refused)

    async def main() -> None:
        with pytest.raises(TransportTimeout):
            await transport.send(req(A))
        for _ in range(2):
            with pytest.raises(ConnectError) as raised:
                await transport.send(req(A))
            assert raised.value is refused

    run(main())
    assert len(transport.requests) == 3  # failed sends are recorded too


def test_reset_forgets_requests_and_scripts() -> None:
    transport = MemoryTransport()
    transport.script(A, 500)
    run(transport.send(req(A)))
    transport.reset()
    assert transport.requests == []
    assert run(transport.send(req(A))).status_code == 200


def test_delay_makes_sends_take_time_and_requests_are_visible_in_flight() -> None:
    transport = MemoryTransport(delay=0.05)

    async def main() -> None:
        task = asyncio.ensure_future(transport.send(req(A)))
        await asyncio.sleep(0)
        assert len(transport.requests) == 1
        assert not task.done()
        assert (await task).status_code == 200

    run(main())


@pytest.mark.parametrize("outcome", [99, 600, True])
def test_a_bad_status_code_is_rejected_when_scripted(outcome: int) -> None:
    with pytest.raises(ValueError, match="status code"):
        MemoryTransport().script(A, outcome)


def test_a_script_needs_outcomes_of_known_kinds() -> None:
    transport = MemoryTransport()
    with pytest.raises(ValueError, match="at least one"):
        transport.script(A)
    with pytest.raises(TypeError):
        transport.script(A, "200")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        transport.script(A, RuntimeError("not a transport error"))  # type: ignore[arg-type]


def test_a_negative_delay_is_rejected() -> None:
    with pytest.raises(ValueError, match="delay"):
        MemoryTransport(delay=-1)


def test_it_satisfies_the_transport_protocol_and_is_a_context_manager() -> None:
    async def main() -> Response:
        async with MemoryTransport() as transport:
            assert isinstance(transport, Transport)
            return await transport.send(req(A))

    assert run(main()).status_code == 200
