"""The delivery worker: fans out events, claims due deliveries, sends them concurrently, records outcomes.

It also handles received webhooks stored for it (``hookpost.inbox``, sources in
``worker`` mode, and ``on_commit`` ones whose request died), on a thread of their own.

A plain class; ``manage.py hookpost_worker`` is a thin shell around it. HTTP runs
on an asyncio loop (aiohttp); database calls run on threads of their own (claiming,
recording, fan-out), each with one connection, so the ORM stays synchronous.
Outcomes are recorded in batches: whatever came while the previous batch was
being written. On PostgreSQL a LISTEN connection wakes the worker when events
or deliveries are committed; elsewhere, and as a fallback, it polls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connections, reset_queries
from django.utils import timezone
from django.utils.module_loading import import_string

from hookpost import inbox, outbox
from hookpost.conf import hookpost_settings
from hookpost.delivery import build_request, redact_headers
from hookpost.exceptions import ConfigurationError
from hookpost.models import Endpoint
from hookpost.retry import Breaker, Outcome, RetryPolicy, Verdict
from hookpost.transports import Response, Transport, TransportError

logger = logging.getLogger("hookpost.worker")

T = TypeVar("T")

#: The channel PostgreSQL notifies when events or deliveries are inserted (see migrations).
CHANNEL = "hookpost"

# How long a due fan-out waits for room to lease into before it goes without leasing.
_FAN_OUT_PATIENCE = 0.1

# How much each answer moves an endpoint's running request time (see Worker._note_pace).
_PACE_WEIGHT = 0.2


def claim_depth(allowance: int, seconds_per_request: float, within: float, most: int) -> int:
    """How many of an endpoint's deliveries may wait in a worker's queue: what it sends ``within`` seconds.

    ``allowance`` requests at a time, each taking ``seconds_per_request``, and never
    more than ``most``. The claim adds a cap's worth as the floor.
    """
    return min(most, int(allowance * within / max(seconds_per_request, 1e-3)))


_ERROR_KINDS: dict[str, str] = {
    "TransportTimeout": "timeout",
    "ConnectError": "connect",
    "AddressNotAllowed": "address_not_allowed",
    "InvalidRequestURL": "invalid_url",
}


@dataclass
class WorkerStats:
    """Counters of one worker run, for the progress line and for tests."""

    fanned_out: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    in_flight: int = 0
    #: Received webhooks handled (sources in "worker" mode).
    handled: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        """One status line: counts and the delivery rate."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"events {self.fanned_out}  sent {self.sent}  delivered {self.delivered}  "
            f"failed {self.failed}  in flight {self.in_flight}  {self.sent / elapsed:.0f}/s"
            + (f"  received {self.handled}" if self.handled else "")
        )


def default_worker_id() -> str:
    """``host:pid:random``: unique per process, readable in the lease columns."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def build_transport() -> Transport:
    """The transport named by ``HOOKPOST["TRANSPORT"]``, configured from the settings."""
    cls = import_string(hookpost_settings.TRANSPORT)
    if cls.__name__ == "HttpTransport":
        return cls(  # type: ignore[no-any-return]
            allowed_networks=hookpost_settings.ALLOWED_NETWORKS,
            connect_timeout=hookpost_settings.CONNECT_TIMEOUT,
            total_timeout=hookpost_settings.TOTAL_TIMEOUT,
            max_response_bytes=hookpost_settings.MAX_RESPONSE_BYTES,
        )
    return cls()  # type: ignore[no-any-return]


class Worker:
    """Delivers webhooks until stopped (or, in burst mode, until nothing is due)."""

    def __init__(
        self,
        *,
        using: str = "default",
        worker_id: str | None = None,
        concurrency: int = 50,
        batch_size: int = 200,
        transport: Transport | None = None,
        poll_interval: float | None = None,
        lease: dt.timedelta | None = None,
        on_progress: Callable[[WorkerStats], None] | None = None,
    ) -> None:
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        self.using = using
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.transport = transport
        self.poll_interval = hookpost_settings.POLL_INTERVAL if poll_interval is None else poll_interval
        self.lease = lease or dt.timedelta(seconds=hookpost_settings.LEASE_SECONDS)
        self.on_progress = on_progress
        self.stats = WorkerStats()
        self.breaker = Breaker(
            threshold=hookpost_settings.CIRCUIT_THRESHOLD,
            cooldown=dt.timedelta(seconds=hookpost_settings.CIRCUIT_COOLDOWN),
        )
        self.disable_after = dt.timedelta(seconds=hookpost_settings.DISABLE_AFTER)
        self._default_policy = self._policy(hookpost_settings.RETRY_SCHEDULE)
        self._policies: dict[str, RetryPolicy] = {}
        self._stopping = threading.Event()
        self._forced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._db = ThreadPoolExecutor(1, thread_name_prefix="hookpost-db")
        # Outcomes are written on a second thread and connection, so recording one batch
        # overlaps claiming the next instead of waiting for it.
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix="hookpost-record")
        # Fan-out too has its own thread and connection: a large fan-out must not hold
        # up the claims that keep requests flowing.
        self._fanner = ThreadPoolExecutor(1, thread_name_prefix="hookpost-fanout")
        self._fanning: asyncio.Task[int] | None = None
        # Received webhooks run user code that may be slow: never on a thread deliveries wait for.
        self._handler = ThreadPoolExecutor(1, thread_name_prefix="hookpost-inbox")
        self._handling: asyncio.Task[int] | None = None
        self._inbox_due = True
        self._flushing: asyncio.Task[None] | None = None
        # Per endpoint: successful requests not yet recorded. Their leases still count in
        # the database; claims are told, so such a request frees its slot at once.
        self._settled: set[int] = set()
        self._results: list[outbox.AttemptResult] = []
        # Outcomes are recorded whenever the recorder is free, as many as came meanwhile:
        # never waiting for a batch to fill, so unrecorded successes (sent again if this
        # process dies) stay as few as the database allows, and claims are not held back
        # by them.
        self._recordings = 0  # recordings started, so a round can tell that one began meanwhile
        self._leased: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting = _Waiting()
        # Claimed, never sent, to be given back (their endpoint just failed).
        self._unsent: list[int] = []
        # Per endpoint: failures not recorded yet. No claims for it until they are.
        self._failing: collections.Counter[int] = collections.Counter()
        self._fan_out_due = True
        self._fan_out_asked = self.fan_out_limit
        # Since when a due fan-out has waited for room to lease into (see _fan_out_room).
        self._room_since: float | None = None
        # PostgreSQL's fan-out leases new deliveries to this worker as it creates them.
        self._leases_at_fan_out = connections[using].vendor == "postgresql"
        # Per endpoint: a running average of its requests' seconds, from which each claim
        # sizes how many of its deliveries are claimed ahead (see _depths).
        self._pace: dict[int, float] = {}
        # A claim that waited in the queue until its lease has less left than its request
        # may take is given back rather than sent: the lease could run out with the
        # request still out, and another worker send it too. Half a lease at most, so a
        # fresh claim always goes, however short the lease.
        total_timeout = float(hookpost_settings.TOTAL_TIMEOUT)
        self._request_bound = min(total_timeout, self.lease.total_seconds() / 2)

    # -- public control --

    def run(self, *, burst: bool = False, handle_signals: bool = False) -> WorkerStats:
        """Run until ``stop()`` (or a signal, with ``handle_signals``); ``burst`` exits when idle."""
        try:
            asyncio.run(self._main(burst=burst, handle_signals=handle_signals))
        finally:
            for executor in (self._db, self._recorder, self._fanner, self._handler):
                executor.submit(connections.close_all).result()
                executor.shutdown(wait=True)
        return self.stats

    def stop(self) -> None:
        """Stop claiming; finish what is in flight (within its timeout), release the rest, exit."""
        self._stopping.set()
        self._poke()

    # -- the loop --

    async def _main(self, *, burst: bool, handle_signals: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._on_signal)
        transport = self.transport or build_transport()
        listener = None if burst else self._start_listener()
        tasks = self._tasks
        logger.info("worker started id=%s concurrency=%d", self.worker_id, self.concurrency)
        try:
            while not self._stopping.is_set():
                try:
                    busy = await self._cycle(tasks, transport, burst)
                except DatabaseError:
                    logger.warning("database unavailable; retrying", exc_info=True)
                    await asyncio.sleep(min(self.poll_interval, 1.0) or 0.1)
                    continue
                if busy is None:
                    break
                if not busy:
                    await self._idle(tasks)
        finally:
            await self._shutdown(tasks)
            if listener is not None:
                listener.set()
            if self.transport is None:
                await _close(transport)
            logger.info("worker stopped id=%s %s", self.worker_id, self.stats.line())

    async def _cycle(self, tasks: set[asyncio.Task[None]], transport: Transport, burst: bool) -> bool | None:
        """One round: record outcomes, fan out, claim ahead, start sends. None: burst is done."""
        # Cleared here, not when idling: a wake-up that comes during the round (a request
        # or a flush finishing) must end the next idle wait at once, not be lost.
        assert self._wake is not None
        self._wake.clear()
        # A recording that failed is raised here (the database being away: the loop waits
        # and the next round records the batch again). One that succeeded has moved on.
        if self._flushing is not None and self._flushing.done():
            failed, self._flushing = self._flushing.exception(), None
            if failed is not None:
                raise failed
        # A recording under way, or started during this round, may make a retry due that
        # this round's claim did not see: a burst is not done until a round sees none.
        recordings = self._recordings
        self._record_soon()
        recording = self._flushing is not None
        fanned = self._fanned()
        fanning = self._fanning is not None
        handled = self._handled()
        handling = self._handling is not None
        if self._inbox_due and not handling:
            self._inbox_due = False
            self._handling = asyncio.create_task(self._handle_inbox())
            handling = True
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            try:
                await self._release(unsent)
            except BaseException:
                self._unsent.extend(unsent)
                raise
        # What a fan-out leased is sent now, not after the claim below has come back.
        self._start_queued(tasks, transport)
        # Claim ahead of free slots, so a finished request is followed at once by the next.
        room = self.concurrency + self.batch_size - len(tasks) - len(self._waiting)
        claims: list[outbox.Claim] = []
        # Successes not yet recorded are sent again if this process dies. A slow database
        # (SQLite's one writer) let them pile up: 580 at one kill. Past one round's worth,
        # wait for the recorder, so a slow database slows the worker instead of widening that.
        recorded_behind = len(self._settled) >= self.concurrency + self.batch_size
        # A claim has a fixed cost (planning, round trips, counting leases) whatever it
        # brings back, so it waits for half a batch of room; the half still queued covers
        # its round trip. Claiming once half the concurrency was free (25 places) ran
        # small claims back to back: twice as many claims, 104 µs of the claiming thread
        # and 288 µs of PostgreSQL per delivery against 53 and 215, and 1,249 deliveries/s
        # against 1,608 (bench/delivery.py's burst, the two alternated in one run). At
        # three quarters of a batch the queue ran dry during claims. An empty queue
        # claims whatever is due at once, so a lone event is not kept waiting.
        # A fan-out that leases what it creates admits against the same lease counts as a
        # claim would: two at once would each see room the other is filling.
        holding = fanning and self._leases_at_fan_out
        if not recorded_behind and not holding and (room >= self.batch_size // 2 or not self._waiting):
            claims = await self._call(
                outbox.claim,
                limit=min(room, self.batch_size),
                using=self.using,
                claim_ahead=True,
                **self._lease_terms(),
            )
            self._queue(claims)
        room = self.concurrency + self.batch_size - len(tasks) - len(self._waiting)
        lease_room = self._fan_out_room(room, recorded_behind) if self._fan_out_due and not fanning else None
        if lease_room is not None:
            # Due again when an event commits (NOTIFY), the poll interval passes, or this
            # batch comes back full (more are waiting). Started after the claim, so it
            # leases into the room the claim left.
            self._fan_out_due = False
            self._fan_out_asked = self._fan_out_pace(lease_room)
            self._fanning = asyncio.create_task(self._fan_out(lease_room))
            fanning = True
        self._start_queued(tasks, transport)
        self.stats.in_flight = len(tasks)
        if self.on_progress:
            self.on_progress(self.stats)
        busy = (
            fanned
            or fanning
            or handled
            or handling
            or claims
            or tasks
            or self._waiting
            or self._unsent
            or self._results
            or recording
            or self._recordings != recordings
        )
        if burst and not busy:
            return None
        return bool(claims or fanned or handled)

    async def _release(self, delivery_ids: list[int]) -> int:
        """Give back leases of deliveries this worker will not send; the number released."""
        released = await self._call(outbox.release, delivery_ids, worker_id=self.worker_id, using=self.using)
        self._leased.difference_update(delivery_ids)
        return released

    @property
    def fan_out_limit(self) -> int:
        """Events one fan-out round takes at most: the batch size, at least 100 (see _fan_out_pace)."""
        return max(self.batch_size, 100)

    def _fan_out_room(self, room: int, recorded_behind: bool) -> int | None:
        """How many new deliveries a due fan-out may lease now; None while it waits for room first.

        Like a claim, it leases once half a batch of room is open or the queue is empty:
        leasing a few at a time costs a round's fixed statements for each few. It waits
        while the queue is being sent, ``_FAN_OUT_PATIENCE`` at most: a queue that does
        not drain (a slow endpoint's) then gets a fan-out that leases nothing, and other
        workers can take its deliveries.
        """
        if not self._leases_at_fan_out or recorded_behind:
            return 0
        if room >= self.batch_size // 2 or not self._waiting:
            self._room_since = None
            return min(room, self.batch_size)
        now = time.monotonic()
        if self._room_since is None:
            self._room_since = now
        if now - self._room_since < _FAN_OUT_PATIENCE:
            return None
        self._room_since = None
        return 0

    def _fan_out_pace(self, lease_room: int) -> int:
        """How many events the next fan-out takes: about as many as it may lease, when it leases.

        A backlog waits in the event table, in order, rather than as unleased deliveries
        that claims must then find and lease: in bench/delivery.py's burst, leasing
        fan-outs of a whole batch of events left about 60% of the deliveries to claims,
        paced ones 3-15% (PostgreSQL 37-39% of a CPU against 40-45%, at the same
        throughput). A floor of a quarter batch keeps a nearly full queue from running
        one tiny fan-out after another.
        """
        if lease_room <= 0:
            return self.fan_out_limit
        return min(self.fan_out_limit, max(lease_room, self.batch_size // 4, 1))

    async def _fan_out(self, room: int) -> int:
        """Fan out a batch of events, leasing to this worker up to ``room`` of the new deliveries."""
        leasing = None
        if self._leases_at_fan_out and room > 0:
            leasing = outbox.Leasing(room=room, **self._lease_terms())
        try:
            done = await self._call(
                outbox.fan_out_and_lease,
                using=self.using,
                limit=self._fan_out_asked,
                leasing=leasing,
                executor=self._fanner,
            )
        finally:
            if self._wake is not None:
                self._wake.set()
        # Taken here, not when the round collects the task: a stopping worker collects no
        # more rounds, and must still know these leases to release them.
        self._queue(done.claims)
        return done.events

    def _lease_terms(self) -> dict[str, Any]:
        """The terms a claim and a leasing fan-out both lease within: this worker's state now."""
        return {
            "worker_id": self.worker_id,
            "lease": self.lease,
            "breaker": self.breaker,
            "max_in_flight": hookpost_settings.MAX_IN_FLIGHT,
            "settled": sorted(self._settled),
            "queued": self._waiting.ids(),
            "ahead": self._depths(),
            "hold": sorted(+self._failing),
        }

    def _queue(self, claims: list[outbox.Claim]) -> None:
        """Take leased deliveries into the queue (a stopping worker only keeps them, to release)."""
        for claim in claims:
            self._leased.add(claim.delivery.id)
            if self._stopping.is_set():
                continue
            if self._failing[claim.delivery.endpoint_id] > 0:
                # Its endpoint failed while the claim was on its way: give it back.
                self._unsent.append(claim.delivery.id)
            else:
                self._waiting.add(claim)

    def _fanned(self) -> int:
        """Collect a finished fan-out: the number of events it handled (its error, raised)."""
        task = self._fanning
        if task is None or not task.done():
            return 0
        self._fanning = None
        try:
            fanned = task.result()
        except BaseException:
            self._fan_out_due = True
            raise
        self.stats.fanned_out += fanned
        if fanned >= self._fan_out_asked:
            self._fan_out_due = True
        return fanned

    async def _handle_inbox(self) -> int:
        assert self._loop is not None
        try:
            # Not _call: handlers write the user's data, which must commit durably.
            return await self._loop.run_in_executor(
                self._handler,
                partial(_reconnecting, inbox.process_due, limit=self.batch_size, using=self.using),
            )
        finally:
            if self._wake is not None:
                self._wake.set()

    def _handled(self) -> int:
        """Collect a finished round of received webhooks: how many were handled (its error, raised)."""
        task = self._handling
        if task is None or not task.done():
            return 0
        self._handling = None
        try:
            handled = task.result()
        except BaseException:
            self._inbox_due = True
            raise
        self.stats.handled += handled
        if handled >= self.batch_size:
            self._inbox_due = True
        return handled

    def _start_queued(self, tasks: set[asyncio.Task[None]], transport: Transport) -> None:
        """Open a lane per free send slot while a claim can go; each lane then keeps itself busy."""
        while len(tasks) < self.concurrency:
            claim = self._next_claim()
            if claim is None:
                break
            task = asyncio.create_task(self._lane(claim, transport))
            tasks.add(task)
            task.add_done_callback(self._on_lane_done)

    def _next_claim(self) -> outbox.Claim | None:
        """The next claim whose endpoint has room, giving back any whose lease is too far gone to send."""
        now = time.time()
        while (claim := self._waiting.take()) is not None:
            if not self._too_late(claim, now):
                return claim
            self._give_back_stale(claim)
        return None

    async def _lane(self, claim: outbox.Claim, transport: Transport) -> None:
        """One send slot: send ``claim``, then each next one that can go, until none can.

        The next request starts as the last one ends, in the same task: a task per
        request cost a task, a callback and two turns of the loop before it went out.
        """
        next_claim: outbox.Claim | None = claim
        while next_claim is not None:
            try:
                await self._deliver(next_claim, transport)
            finally:
                self._waiting.finished(next_claim.delivery.endpoint_id)
            if self._wake is not None:
                self._wake.set()  # the queue is one shorter: the next round may claim more
            # Stopping empties the queue first: what waited is released, not sent.
            next_claim = self._next_claim()

    def _too_late(self, claim: outbox.Claim, now: float) -> bool:
        """Whether ``claim`` has too little of its lease left for its request to finish within it.

        ``now`` is in Unix seconds, not a datetime: this is asked before every request,
        and ``timezone.now()`` with datetime arithmetic cost three times as much (1.8-2.1
        µs against 0.6).
        """
        start = now if claim.send_at is None else max(now, claim.send_at.timestamp())
        left = claim.delivery.lease_expires_at.timestamp() - start
        timeout: float | None = claim.delivery.endpoint.timeout
        return left < min(self._request_bound, timeout or math.inf)

    def _give_back_stale(self, claim: outbox.Claim) -> None:
        """Release a claim that waited too long to be sent within its lease; it is claimed afresh."""
        delivery = claim.delivery
        logger.info(
            "delivery %s waited in the queue until its lease had too little left; released",
            delivery.id,
        )
        self._waiting.finished(delivery.endpoint_id)
        self._unsent.append(delivery.id)
        if self._wake is not None:
            self._wake.set()

    def _note_pace(self, endpoint_id: int, seconds: float) -> None:
        """Fold one answered request's time into its endpoint's running average."""
        previous = self._pace.get(endpoint_id)
        if previous is not None:
            seconds = previous + (seconds - previous) * _PACE_WEIGHT
        self._pace[endpoint_id] = seconds

    def _depths(self) -> dict[int, int]:
        """Per endpoint answered lately, how many may wait claimed: what it sends in a quarter of a lease.

        So a fast endpoint is not held to one claim round trip per cap's worth, and a
        slow one's queue still drains long before its leases run out.
        """
        within = self.lease.total_seconds() / 4
        return {
            endpoint_id: claim_depth(self._waiting.allowance(endpoint_id), pace, within, self.batch_size)
            for endpoint_id, pace in self._pace.items()
        }

    def _on_lane_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._wake is not None:
            self._wake.set()  # a slot is free

    async def _idle(self, tasks: set[asyncio.Task[None]]) -> None:
        """Wait for a wake-up: a finished request, a notification, or the poll interval."""
        assert self._wake is not None
        timeout = self.poll_interval
        if self._results:
            timeout = min(timeout, 0.05)
        if self._room_since is not None:
            timeout = min(timeout, _FAN_OUT_PATIENCE)  # a fan-out waits for room, that long at most
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            # Nothing woke the worker: new events may have come without a notification.
            self._fan_out_due = True
            self._inbox_due = True

    async def _deliver(self, claim: outbox.Claim, transport: Transport) -> None:
        delivery = claim.delivery
        endpoint = delivery.endpoint
        if claim.send_at is not None:
            delay = (claim.send_at - timezone.now()).total_seconds()
            if delay > 0:
                await asyncio.sleep(delay)
        started_at = timezone.now()
        begun = time.perf_counter()
        response: Response | None = None
        error = ""
        kind: str | None = None
        try:
            request = build_request(delivery.event, endpoint, now=started_at, sequence=delivery.sequence)
        except (ConfigurationError, ValueError) as exc:
            # Nothing can be signed (no secret in force, or none this worker's keys can
            # unseal): an attempt that says so in the log, retried on schedule, rather
            # than a lease held until it expires, again and again, in silence.
            logger.error("cannot sign delivery %s: %s", delivery.id, exc)
            request, kind, error = None, "signing", f"{type(exc).__name__}: {exc}"
        if request is not None:
            try:
                send = transport.send(request)
                if endpoint.timeout:
                    response = await asyncio.wait_for(send, endpoint.timeout)
                else:
                    response = await send
            except TransportError as exc:
                kind = _ERROR_KINDS.get(type(exc).__name__, "transport")
                error = f"{type(exc).__name__}: {exc}"
            except TimeoutError:
                kind, error = "timeout", f"TransportTimeout: no answer within {endpoint.timeout} s"
            except Exception as exc:  # a transport bug must not kill the worker or lose the lease
                logger.exception("transport failed on delivery %s", delivery.id)
                kind, error = "transport", f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - begun
        duration_ms = int(seconds * 1000)
        if response is not None:
            self._note_pace(endpoint.id, seconds)
        outcome = Outcome(
            status_code=response.status_code if response else None,
            error=kind,
            retry_after=response.headers.get("retry-after") if response else None,
        )
        number = delivery.attempt_count + 1
        # The answer's time, from the clock already read: one timezone.now() less per request.
        answered_at = started_at + dt.timedelta(seconds=seconds)
        decision = self._policy_for(endpoint).decide(outcome, number, answered_at)
        self.stats.sent += 1
        if response is not None and 200 <= response.status_code < 300:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
        logger.info(
            "attempt delivery=%s event=%s endpoint=%s attempt=%d status=%s duration_ms=%d verdict=%s",
            delivery.id,
            delivery.event_id,
            endpoint.id,
            number,
            response.status_code if response else error,
            duration_ms,
            decision.verdict,
        )
        if decision.verdict is Verdict.DELIVERED:
            # Only a success frees its slot before it is recorded: a failure keeps holding
            # it, so the circuit breaker and a 410 take effect before more requests go.
            self._settled.add(delivery.id)
        else:
            # Nor do the endpoint's claims waiting here go out on their own: they are given
            # back, and claimed again only under what this failure leads to (retry, open
            # circuit, disabled endpoint) once it is recorded.
            self._unsent.extend(claim.delivery.id for claim in self._waiting.drop(endpoint.id))
            self._failing[endpoint.id] += 1
        self._results.append(
            outbox.AttemptResult(
                delivery_id=delivery.id,
                endpoint_id=endpoint.id,
                event_id=delivery.event_id,
                number=number,
                started_at=started_at,
                duration_ms=duration_ms,
                request_headers=redact_headers(request.headers) if request is not None else {},
                status_code=response.status_code if response else None,
                response_body=_body_text(response) if response else "",
                error=error or (decision.reason if response and response.status_code >= 300 else ""),
                decision=decision,
                probe=claim.probe,
            )
        )
        self._record_soon()

    def _record_soon(self) -> None:
        """Start recording the outcomes that wait, unless a recording is under way (it chains on)."""
        if not self._results or self._flushing is not None:
            return
        self._recordings += 1
        self._flushing = asyncio.create_task(self._flush())
        self._flushing.add_done_callback(self._on_recorded)

    def _on_recorded(self, task: asyncio.Task[None]) -> None:
        # A failed recording stays in _flushing for _cycle to raise; nothing records until then.
        if task is self._flushing and not task.cancelled() and task.exception() is None:
            self._flushing = None
            self._record_soon()

    async def _flush(self) -> None:
        results, self._results = self._results, []
        if not results:
            return
        record = partial(
            self._call,
            using=self.using,
            breaker=self.breaker,
            disable_after=self.disable_after,
            executor=self._recorder,
        )
        unrecorded: list[outbox.AttemptResult] = []
        try:
            try:
                await record(outbox.record_results, results)
            except outbox.TRANSIENT_ERRORS:
                raise
            except Exception:
                # Not the database being away but something in this batch it cannot store:
                # tried again as it is, the batch would fail on every flush, forever.
                logger.exception("recording %d results failed; recording them one by one", len(results))
                salvage = await record(outbox.salvage_results, results)
                unrecorded = self._report(salvage)
                self._results[:0] = salvage.remaining
                results = results[: len(results) - len(salvage.remaining)]
        except BaseException:
            # Not recorded: keep them for the next flush (the leases still hold them).
            self._results[:0] = results
            raise
        finally:
            if self._wake is not None:
                self._wake.set()
        # An unrecorded delivery keeps its lease (released at shutdown, else it expires).
        kept = {r.delivery_id for r in unrecorded}
        self._leased.difference_update(r.delivery_id for r in results if r.delivery_id not in kept)
        self._failing.subtract(r.endpoint_id for r in results if r.decision.verdict is not Verdict.DELIVERED)
        self._settled.difference_update(r.delivery_id for r in results)

    def _report(self, salvage: outbox.Salvage) -> list[outbox.AttemptResult]:
        """Log what a salvage could not record as it was; return the results not recorded at all."""
        for result, exc in salvage.stripped:
            logger.error(
                "delivery %s: attempt %d recorded without its details, which the database refused: %s: %s",
                result.delivery_id,
                result.number,
                type(exc).__name__,
                exc,
            )
        for result, exc in salvage.unrecorded:
            logger.error(
                "delivery %s: attempt %d could not be recorded (%s: %s); "
                "it is sent again when its lease expires",
                result.delivery_id,
                result.number,
                type(exc).__name__,
                exc,
            )
        return [result for result, _ in salvage.unrecorded]

    async def _shutdown(self, tasks: set[asyncio.Task[None]]) -> None:
        """Let in-flight requests finish (they are bounded by their timeouts), then settle."""
        # Claimed but not started: their leases are released below.
        self._waiting.clear()
        if tasks and not self._forced:
            await asyncio.wait(tasks, timeout=hookpost_settings.TOTAL_TIMEOUT + 5)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # Each recording chains the next while outcomes wait: follow the chain to its end
        # (a failed one stays put, and its outcomes are recorded again below).
        while (recording := self._flushing) is not None and not recording.done():
            await asyncio.gather(recording, return_exceptions=True)
        for pending in (self._fanning, self._handling):
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)
        self._flushing = self._fanning = self._handling = None
        await self._flush()
        if self._leased:
            released = await self._release(sorted(self._leased))
            logger.info("released %d leases", released)

    # -- helpers --

    async def _call(
        self,
        fn: Callable[..., T],
        *args: Any,
        executor: ThreadPoolExecutor | None = None,
        **kwargs: Any,
    ) -> T:
        assert self._loop is not None
        return await self._loop.run_in_executor(
            executor or self._db, partial(_in_db_thread, self.using, fn, *args, **kwargs)
        )

    def _poke(self) -> None:
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closing
                self._loop.call_soon_threadsafe(self._wake.set)

    def _notified(self) -> None:
        """A commit inserted events, deliveries or webhooks to handle: look on the next round, and wake up."""
        self._fan_out_due = True
        self._inbox_due = True
        self._poke()

    def _on_signal(self) -> None:
        if self._stopping.is_set():
            logger.warning("second signal: abandoning requests in flight; their leases are released")
            self._forced = True
            for task in self._tasks:
                task.cancel()
        else:
            logger.info("signal received: finishing requests in flight, then exiting")
        self.stop()

    def _policy(self, schedule: object) -> RetryPolicy:
        kwargs: dict[str, Any] = {
            "jitter": hookpost_settings.RETRY_JITTER,
            "max_retry_after": dt.timedelta(seconds=hookpost_settings.MAX_RETRY_AFTER),
        }
        if schedule is None:
            return RetryPolicy(**kwargs)
        return RetryPolicy(RetryPolicy.from_config(schedule).schedule, **kwargs)

    def _policy_for(self, endpoint: Endpoint) -> RetryPolicy:
        if not endpoint.retry_schedule:
            return self._default_policy
        key = repr(endpoint.retry_schedule)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = self._policy(endpoint.retry_schedule)
        return policy

    def _start_listener(self) -> threading.Event | None:
        """On PostgreSQL (psycopg 3), LISTEN in a thread and wake the loop on each notification."""
        connection = connections[self.using]
        if connection.vendor != "postgresql":
            return None
        done = threading.Event()
        thread = threading.Thread(
            target=_listen, args=(self.using, done, self._notified), name="hookpost-listen", daemon=True
        )
        thread.start()
        return done


class _Waiting:
    """Claimed deliveries not sent yet, per endpoint in claim order, each endpoint kept within its allowance.

    The database lets a worker claim ahead of its free slots; this is where the
    endpoint's cap is then kept: a claim is started only while fewer of its endpoint's
    requests are being sent than the latest claim's allowance. Endpoints take turns.
    """

    def __init__(self) -> None:
        self._by_endpoint: dict[int, collections.deque[outbox.Claim]] = {}
        self._sending: collections.Counter[int] = collections.Counter()
        self._allowance: dict[int, int] = {}

    def __len__(self) -> int:
        return sum(len(line) for line in self._by_endpoint.values())

    def add(self, claim: outbox.Claim) -> None:
        endpoint_id = claim.delivery.endpoint_id
        self._by_endpoint.setdefault(endpoint_id, collections.deque()).append(claim)
        self._allowance[endpoint_id] = claim.allowance

    def ids(self) -> list[int]:
        return [claim.delivery.id for line in self._by_endpoint.values() for claim in line]

    def take(self) -> outbox.Claim | None:
        """The next claim whose endpoint has room, or None; it then counts as being sent."""
        for endpoint_id, line in self._by_endpoint.items():
            if self._sending[endpoint_id] >= self._allowance.get(endpoint_id, 1):
                continue
            claim = line.popleft()
            # To the back of the turn order (dicts keep insertion order).
            del self._by_endpoint[endpoint_id]
            if line:
                self._by_endpoint[endpoint_id] = line
            self._sending[endpoint_id] += 1
            return claim
        return None

    def allowance(self, endpoint_id: int) -> int:
        """How many of ``endpoint_id``'s requests the latest claim allows at once (1 if none came)."""
        return self._allowance.get(endpoint_id, 1)

    def drop(self, endpoint_id: int) -> list[outbox.Claim]:
        """Take every waiting claim of ``endpoint_id`` out of the queue."""
        return list(self._by_endpoint.pop(endpoint_id, ()))

    def finished(self, endpoint_id: int) -> None:
        self._sending[endpoint_id] -= 1

    def clear(self) -> None:
        self._by_endpoint.clear()


def _in_db_thread(alias: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    # These threads' connections do only the worker's bookkeeping: commit it
    # asynchronously for the whole session (see outbox._worker_transaction).
    return _reconnecting(partial(_async_commit_then, alias, fn, *args, **kwargs))


def _async_commit_then(alias: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    outbox.use_async_commit_session(alias)
    return fn(*args, **kwargs)


def _reconnecting(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except (InterfaceError, OperationalError):
        # The database dropped the connection (restart, idle timeout): drop ours too, so
        # the next call opens a fresh one instead of failing forever.
        for connection in connections.all(initialized_only=True):
            with contextlib.suppress(Exception):
                connection.close()
        raise
    finally:
        # With DEBUG on, Django keeps the last 9,000 queries of each connection, and the
        # worker's statements are large: a long-running worker grew by hundreds of MB.
        reset_queries()


def _listen(using: str, done: threading.Event, wake: Callable[[], None]) -> None:
    """Hold a LISTEN connection until ``done``; reconnect after errors; poll covers any gap."""
    wrapper = connections[using]
    while not done.is_set():
        raw = None
        try:
            raw = wrapper.get_new_connection(wrapper.get_connection_params())
            if not hasattr(raw, "notifies"):  # psycopg2: polling only
                return
            raw.autocommit = True
            raw.execute(f"LISTEN {CHANNEL}")
            while not done.is_set():
                for _ in raw.notifies(timeout=0.5, stop_after=1):
                    wake()
        except Exception:
            logger.warning("LISTEN connection lost; polling until it is back", exc_info=True)
            done.wait(1.0)
        finally:
            if raw is not None:
                with contextlib.suppress(Exception):
                    raw.close()


async def _close(transport: Transport) -> None:
    close = getattr(transport, "close", None)
    if close is not None:
        await close()


def _body_text(response: Response) -> str:
    text = response.body.decode("utf-8", errors="replace")
    return text + " […truncated]" if response.truncated else text
