"""The only writer of outbox state: events in, deliveries fanned out, claimed, settled and pruned.

Bulk writes bypass model instances, the costliest part of ``bulk_create`` for
thousands of rows: PostgreSQL (psycopg 3) streams them with ``COPY``, SQLite
runs one prepared ``INSERT`` with ``executemany``; other databases use
``bulk_create``. Every path writes on the given connection, inside whatever
transaction is open there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, TypeVar

from django.db import InterfaceError, OperationalError, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, Q
from django.dispatch import Signal
from django.utils import timezone

from hookpost import signals
from hookpost.conf import hookpost_settings
from hookpost.events import Frame, new_message_ids, type_matches
from hookpost.models import PAUSE_SHIFT, Attempt, Delivery, Endpoint, Event
from hookpost.retry import Breaker, Decision, Verdict, should_disable

logger = logging.getLogger("hookpost.outbox")


class EventDraft(NamedTuple):
    """An event ready to be written: everything but its id."""

    type: str
    payload: str
    occurred_at: dt.datetime
    origin: dict[str, Any] | None = None
    # ``origin`` as JSON, encoded once per batch by capture (None when there is no origin).
    origin_json: str | None = None
    error: str = ""


_COLUMNS = ("id", "type", "payload", "occurred_at", "origin", "error")


@contextlib.contextmanager
def _worker_transaction(using: str) -> Iterator[BaseDatabaseWrapper]:
    """A transaction for the worker's own bookkeeping, committed without waiting for the disk.

    On PostgreSQL, ``synchronous_commit = off`` for fan-out, claims and outcomes: if the
    database server itself crashes, the last fraction of a second of these commits may
    be lost, and each loss only repeats work the outbox already tolerates (a fan-out is
    redone without duplicates, a lease is claimed again, a delivery is sent again with
    the same webhook-id). Events, written in the user's own transactions, keep full
    durability. Waiting for a disk flush three times per round was the worker's
    largest cost.
    """
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql" and not _async_session(connection):
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield connection


def use_async_commit_session(using: str) -> None:
    """Turn ``synchronous_commit`` off for the whole session of this thread's connection ``using``.

    Only for connections that do nothing but the worker's bookkeeping (the worker's
    own database threads): it saves ``_worker_transaction`` a round trip per
    transaction. Idempotent; repeated after the connection is replaced.
    """
    connection = connections[using]
    if connection.vendor != "postgresql" or _async_session(connection):
        return
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO OFF")
    connection._hookpost_async_session = connection.connection  # type: ignore[attr-defined]


def _async_session(connection: BaseDatabaseWrapper) -> bool:
    raw = connection.connection
    return raw is not None and getattr(connection, "_hookpost_async_session", None) is raw


def _any(connection: BaseDatabaseWrapper, column: str, values: Collection[int]) -> tuple[str, list[Any]]:
    """``column`` is one of the integers ``values``, as SQL and its parameters.

    PostgreSQL gets one array parameter, so the statement's text stays the same
    whatever the number of values (the driver parses it once and caches it); other
    databases get one placeholder per value.
    """
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s::bigint[])", [_int_array(values)]
    return f"{column} IN ({', '.join(['%s'] * len(values))})", list(values)


def _int_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers, such as ``{1,2,3}``.

    One string costs the driver one parameter to pass; a list costs it a dumper call
    and a quoting check per element, on the worker's busiest threads.
    """
    return "{" + ",".join(str(int(value)) for value in values) + "}"


def record_event(using: str, draft: EventDraft) -> Event:
    """Insert one event on connection ``using``, inside whatever transaction is open there."""
    [msg_id] = new_message_ids(1)
    event = _event(msg_id, draft)
    event.save(using=using, force_insert=True)
    signals.events_recorded.send(sender=Event, using=using)
    return event


def record_events(using: str, drafts: Sequence[EventDraft]) -> None:
    """Insert many events on ``using`` with as few statements as the database allows."""
    if not drafts:
        return
    connection = connections[using]
    ids = new_message_ids(len(drafts))
    writer = _WRITERS.get(connection.vendor, _write_with_orm)
    writer(connection, ids, drafts)
    signals.events_recorded.send(sender=Event, using=using)


def _table_and_columns(connection: BaseDatabaseWrapper) -> tuple[str, str]:
    quote = connection.ops.quote_name
    column_of = {f.name: str(f.column) for f in Event._meta.concrete_fields}
    return quote(Event._meta.db_table), ", ".join(quote(column_of[name]) for name in _COLUMNS)


@contextlib.contextmanager
def _logged(cursor: Any, sql: str) -> Iterator[None]:
    """Record a statement the driver runs outside ``execute`` in ``connection.queries``, when logged."""
    debug_sql = getattr(cursor, "debug_sql", None)
    if debug_sql is None:
        yield
        return
    with debug_sql(sql, None):
        yield


def _write_with_copy(connection: BaseDatabaseWrapper, ids: list[str], drafts: Sequence[EventDraft]) -> None:
    table, columns = _table_and_columns(connection)
    sql = f"COPY {table} ({columns}) FROM STDIN"
    with connection.cursor() as cursor:
        driver_cursor = cursor.cursor
        if not hasattr(driver_cursor, "copy"):  # psycopg2: no COPY writer of this shape
            _write_with_orm(connection, ids, drafts)
            return
        with _logged(cursor, sql), driver_cursor.copy(sql) as copy:
            for msg_id, d in zip(ids, drafts, strict=True):
                copy.write_row((msg_id, d.type, d.payload, d.occurred_at, d.origin_json, d.error))


def _write_with_executemany(
    connection: BaseDatabaseWrapper, ids: list[str], drafts: Sequence[EventDraft]
) -> None:
    table, columns = _table_and_columns(connection)
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"
    adapt = connection.ops.adapt_datetimefield_value
    # A batch shares one occurred_at: adapt each distinct value once.
    stamps: dict[dt.datetime, Any] = {}
    rows = []
    for msg_id, d in zip(ids, drafts, strict=True):
        stamp = stamps.get(d.occurred_at)
        if stamp is None:
            stamp = stamps[d.occurred_at] = adapt(d.occurred_at)
        rows.append((msg_id, d.type, d.payload, stamp, d.origin_json, d.error))
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _event(msg_id: str, draft: EventDraft) -> Event:
    return Event(
        id=msg_id,
        type=draft.type,
        payload=draft.payload,
        occurred_at=draft.occurred_at,
        origin=draft.origin,
        error=draft.error,
    )


def _write_with_orm(connection: BaseDatabaseWrapper, ids: list[str], drafts: Sequence[EventDraft]) -> None:
    rows = [_event(msg_id, d) for msg_id, d in zip(ids, drafts, strict=True)]
    Event.objects.using(connection.alias).bulk_create(rows, batch_size=hookpost_settings.CAPTURE_BATCH_SIZE)


_WRITERS: dict[str, Callable[[BaseDatabaseWrapper, list[str], Sequence[EventDraft]], None]] = {
    "postgresql": _write_with_copy,
    "sqlite": _write_with_executemany,
}


# --- fan-out ------------------------------------------------------------------------------------


def fan_out(*, using: str = "default", limit: int = 500, now: dt.datetime | None = None) -> int:
    """Turn up to ``limit`` events awaiting fan-out into one delivery per subscribed endpoint.

    One transaction: the deliveries and the events' ``fanned_out_at`` commit together,
    so a crash in between repeats the work, and the unique (event, endpoint) constraint
    keeps a repeat from doubling a delivery. Workers running this at once take disjoint
    events (``skip_locked``). Disabled endpoints get nothing; paused ones get deliveries
    that wait. Returns the number of events handled.
    """
    return fan_out_and_lease(using=using, limit=limit, now=now).events


@dataclass(frozen=True)
class Leasing:
    """Whom :func:`fan_out_and_lease` leases new deliveries to, and within what: :func:`claim`'s terms."""

    worker_id: str
    lease: dt.timedelta
    #: How many deliveries the worker can take now.
    room: int
    breaker: Breaker = field(default_factory=Breaker)
    max_in_flight: int = 10
    settled: Collection[int] = ()
    queued: Collection[int] = ()
    ahead: Mapping[int, int] | None = None
    hold: Collection[int] = ()


class FannedOut(NamedTuple):
    """What one fan-out did: the events it handled, and the deliveries it leased as it made them."""

    events: int
    claims: list[Claim]


def fan_out_and_lease(
    *,
    using: str = "default",
    limit: int = 500,
    now: dt.datetime | None = None,
    leasing: Leasing | None = None,
) -> FannedOut:
    """:func:`fan_out`, leasing at birth, on PostgreSQL, the new deliveries ``leasing``'s worker may send now.

    A delivery born leased needs no claim: no locking read of the due queue, no lease
    ``UPDATE`` (which rewrites the row and six index entries), no second read of its
    payload. Only deliveries a claim would lease at once are: due now, to an active
    endpoint whose circuit is closed, not FIFO (its order is kept by claims), not held,
    within the endpoint's cap and queue depth as :func:`claim` counts them (rate limits
    take their send slots), and no more than ``leasing.room``. The rest are born
    unleased and claimed as usual. Other databases lease nothing here.
    """
    now = now or timezone.now()
    with _worker_transaction(using) as connection:
        sql = _statements(_FanOutSQL, connection)
        leasing = leasing if leasing is not None and leasing.room > 0 and sql.insert_and_mark else None
        with connection.cursor() as cursor:
            cursor.execute(sql.select_with_payload if leasing else sql.select, [limit])
            batch: list[tuple[Any, ...]] = cursor.fetchall()
        if not batch:
            return FannedOut(0, [])
        endpoints = list(
            Endpoint.objects.using(using)
            .exclude(status=Endpoint.Status.DISABLED)
            .values_list("id", "event_types", "fifo", "blocked_until", "status", "consecutive_failures")
        )
        # (event id, endpoint id, sequence, due) per delivery, in event order.
        rows: list[list[Any]] = []
        fifo_counts: dict[int, int] = {}
        for event_id, event_type, *_ in batch:
            for endpoint_id, patterns, fifo, blocked_until, status, _failures in endpoints:
                if any(type_matches(pattern, event_type) for pattern in patterns):
                    # An open circuit's new deliveries are born parked at its probe time (see _park).
                    due = blocked_until if blocked_until is not None and blocked_until > now else now
                    if status == Endpoint.Status.PAUSED:
                        due = due + PAUSE_SHIFT  # out of the due queue until resumed (pause_endpoint)
                    rows.append([event_id, endpoint_id, None, due])
                    if fifo:
                        fifo_counts[endpoint_id] = fifo_counts.get(endpoint_id, 0) + 1
        if fifo_counts:
            _number_fifo_deliveries(using, rows, fifo_counts)
        adapt = connection.ops.adapt_datetimefield_value
        stamp = adapt(now)
        ids = [event_id for event_id, *_ in batch]
        with connection.cursor() as cursor:
            if sql.insert_and_mark:
                # PostgreSQL: the deliveries and the mark in one statement, one round trip.
                births = _Births(connection, now, rows, endpoints, leasing) if leasing else None
                now_text = now.isoformat()
                records = []
                for e, ep, seq, due in rows:
                    record = {
                        "event_id": e,
                        "endpoint_id": ep,
                        "sequence": seq,
                        "due": now_text if due is now else due.isoformat(),
                    }
                    if births is not None and (e, ep) in births.admitted:
                        record.update(births.lease_columns)
                    records.append(record)
                cursor.execute(sql.insert_and_mark, [stamp, json.dumps(records), stamp, json.dumps(ids)])
                born = cursor.fetchall()
                claims = births.claims(born, batch) if births is not None else []
                return FannedOut(len(batch), claims)
            if rows:
                if sql.insert:
                    cursor.executemany(
                        sql.insert,
                        [
                            (e, ep, seq, Delivery.Status.PENDING, 0, adapt(due), "", stamp)
                            for e, ep, seq, due in rows
                        ],
                    )
                else:
                    Delivery.objects.using(using).bulk_create(
                        [
                            Delivery(event_id=e, endpoint_id=ep, sequence=seq, next_attempt_at=due)
                            for e, ep, seq, due in rows
                        ],
                        ignore_conflicts=True,
                    )
            cursor.execute(sql.mark.format(ids=", ".join(["%s"] * len(ids))), [stamp, *ids])
    return FannedOut(len(batch), [])


class _Births:
    """Which of a fan-out's new deliveries are born leased, admitted as :func:`claim` admits."""

    def __init__(
        self,
        connection: BaseDatabaseWrapper,
        now: dt.datetime,
        rows: list[list[Any]],
        endpoints: list[tuple[Any, ...]],
        leasing: Leasing,
    ) -> None:
        self.using, self.leasing = connection.alias, leasing
        self.expires = now + leasing.lease
        self.lease_columns = {"lease_owner": leasing.worker_id, "lease_expires_at": self.expires.isoformat()}
        held = set(leasing.hold)
        # What claims alone take: FIFO (one in flight, head first), open circuits (one
        # probe), paused, parked or held endpoints.
        eligible = {
            endpoint_id
            for endpoint_id, _, fifo, blocked_until, status, failures in endpoints
            if status == Endpoint.Status.ACTIVE
            and not fifo
            and (blocked_until is None or blocked_until <= now)
            and not leasing.breaker.is_open(failures)
            and endpoint_id not in held
        }
        # Row indices stand in for the delivery ids the insert has yet to give.
        candidates = [
            (index, row[1]) for index, row in enumerate(rows) if row[1] in eligible and row[3] is now
        ]
        # Per (event id, endpoint id) born leased: the endpoint, and the send slot if rate-limited.
        self.admitted: dict[tuple[str, int], tuple[Endpoint, dt.datetime | None]] = {}
        self.others: dict[int, int] = {}
        if not candidates:
            return
        claim_sql = _statements(_ClaimSQL, connection)
        wanted = {endpoint_id for _, endpoint_id in candidates}
        whole = _endpoints(connection, claim_sql, wanted)
        live, self.others, queued = _live_leases(
            connection, claim_sql, now, wanted, _Counts(leasing.worker_id, leasing.settled, leasing.queued)
        )
        leases = _Leases(live, self.others, queued, True, leasing.ahead or {})
        picked = _admit(
            self.using,
            now,
            candidates,
            whole,
            leases,
            set(held),
            leasing.breaker,
            leasing.max_in_flight,
            leasing.room,
            leasing.lease,
        )
        self.admitted = {
            (rows[index][0], endpoint.id): (endpoint, send_at) for index, endpoint, send_at, _ in picked
        }

    def claims(self, born: list[tuple[int, str, int]], batch: list[tuple[Any, ...]]) -> list[Claim]:
        """Claims for the deliveries the insert returned leased (a repeated fan-out's are not among them)."""
        events = {event_id: (event_type, payload) for event_id, event_type, payload in batch}
        worker_id, max_in_flight = self.leasing.worker_id, self.leasing.max_in_flight
        claims = []
        for delivery_id, event_id, endpoint_id in sorted(born):
            endpoint, send_at = self.admitted[event_id, endpoint_id]
            event_type, payload = events[event_id]
            event = _loaded(Event, self.using, id=event_id, type=event_type, payload=payload)
            leased = Leased(
                delivery_id, event_id, endpoint_id, 0, None, worker_id, self.expires, event, endpoint
            )
            allowance = _allowance(endpoint, max_in_flight, self.others)
            claims.append(Claim(delivery=leased, send_at=send_at, allowance=allowance))
        return claims


_Statements = TypeVar("_Statements")
M = TypeVar("M", bound=models.Model)
_built: dict[tuple[type, str], Any] = {}


def _statements(kind: type[_Statements], connection: BaseDatabaseWrapper) -> _Statements:
    """The ``kind`` of plain statements for ``connection``'s database vendor, built on first use."""
    key = (kind, connection.vendor)
    if key not in _built:
        _built[key] = kind(connection)  # type: ignore[call-arg]
    return _built[key]  # type: ignore[no-any-return]


class _FanOutSQL:
    """Fan-out's statements for one database vendor, built once (it runs every worker round)."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        q = connection.ops.quote_name
        d, e = q(Delivery._meta.db_table), q(Event._meta.db_table)
        lock = " FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
        self.select = (
            f"SELECT id, type FROM {e} WHERE fanned_out_at IS NULL AND error = '' "
            f"ORDER BY occurred_at, id LIMIT %s{lock}"
        )
        # Leasing at birth needs the payloads too (not worth reading otherwise).
        self.select_with_payload = self.select.replace("SELECT id, type", "SELECT id, type, payload", 1)
        self.mark = f"UPDATE {e} SET fanned_out_at = %s WHERE id IN ({{ids}})"
        columns = (
            "event_id, endpoint_id, sequence, status, attempt_count, next_attempt_at, lease_owner, created_at"
        )
        values = f"INSERT INTO {d} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        # A repeated fan-out (after a crash) must not double a delivery: the unique
        # (event, endpoint) constraint turns the repeat into nothing.
        self.insert = {
            "postgresql": f"{values} ON CONFLICT DO NOTHING",
            "sqlite": values.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1),
        }.get(connection.vendor, "")
        # PostgreSQL: the rows as one JSON document (one string for the driver to pass,
        # not a dumper call per element), inserted by a data-modifying CTE whose
        # statement also marks the events; its text never changes with the batch size.
        # Rows the worker may send now carry their lease (absent keys read as NULL), and
        # the statement returns those.
        self.insert_and_mark = (
            f"WITH new AS (INSERT INTO {d} ({columns}, lease_expires_at) "
            f"SELECT r.event_id, r.endpoint_id, r.sequence, '{Delivery.Status.PENDING}', 0, r.due, "
            "COALESCE(r.lease_owner, ''), %s, r.lease_expires_at "
            "FROM json_to_recordset(%s::json) AS r(event_id text, endpoint_id bigint, sequence bigint, "
            "due timestamptz, lease_owner text, lease_expires_at timestamptz) ON CONFLICT DO NOTHING "
            "RETURNING id, event_id, endpoint_id, lease_owner), "
            # ARRAY(...) is computed once, so the events are still read by primary key.
            f"marked AS (UPDATE {e} SET fanned_out_at = %s "
            "WHERE id = ANY(ARRAY(SELECT json_array_elements_text(%s::json)))) "
            "SELECT id, event_id, endpoint_id FROM new WHERE lease_owner <> ''"
            if connection.vendor == "postgresql"
            else ""
        )


def _number_fifo_deliveries(using: str, rows: list[list[Any]], counts: dict[int, int]) -> None:
    """Give the new deliveries of FIFO endpoints consecutive sequence numbers, in event order."""
    locked = Endpoint.objects.using(using).select_for_update().filter(id__in=list(counts))
    next_number = {e.id: e.last_sequence + 1 for e in locked.only("id", "last_sequence")}
    for row in rows:
        if row[1] in next_number:
            row[2] = next_number[row[1]]
            next_number[row[1]] += 1
    for endpoint_id, after in next_number.items():
        Endpoint.objects.using(using).filter(id=endpoint_id).update(last_sequence=after - 1)


# --- claiming -----------------------------------------------------------------------------------


class Leased(NamedTuple):
    """A delivery as a claim leased it: what sending it takes, not a model instance.

    A ``Delivery`` built per claimed row cost the claiming thread ~10 µs more, and its
    other fields would have been stale or made-up the moment it was built.
    """

    id: int
    event_id: str
    endpoint_id: int
    attempt_count: int
    sequence: int | None
    lease_owner: str
    lease_expires_at: dt.datetime
    #: Just its id, type and payload (the other fields deferred).
    event: Event
    endpoint: Endpoint


@dataclass(frozen=True)
class Claim:
    """A delivery leased to one worker, with what the worker needs to send it."""

    delivery: Leased
    # Rate-limited endpoints: the request must not go before this time.
    send_at: dt.datetime | None = None
    # The endpoint's circuit is open and this is its one probe.
    probe: bool = False
    # How many of this endpoint's requests the claiming worker may send at once: the
    # endpoint's cap less the leases other workers held when this claim was made.
    allowance: int = 1


def claim(
    *,
    worker_id: str,
    limit: int,
    lease: dt.timedelta,
    using: str = "default",
    now: dt.datetime | None = None,
    breaker: Breaker | None = None,
    max_in_flight: int = 10,
    settled: Collection[int] = (),
    queued: Collection[int] = (),
    claim_ahead: bool = False,
    ahead: Mapping[int, int] | None = None,
    hold: Collection[int] = (),
) -> list[Claim]:
    """Lease up to ``limit`` due deliveries to ``worker_id``, first attempts before retries.

    Per endpoint it respects the in-flight cap, FIFO order (one at a time, lowest
    sequence first), the circuit breaker (one probe while open) and the rate limit
    (each claim takes the next free send slot). On PostgreSQL rows are locked with
    ``skip_locked`` so concurrent workers never claim the same delivery; SQLite
    serialises writers, so one worker is safe there. ``settled`` names the caller's
    leased deliveries whose request already succeeded (the outcome not yet written):
    they no longer take an in-flight slot.

    With ``claim_ahead`` the caller promises to keep each endpoint's requests within
    the claims' ``allowance`` as it sends them (the worker does), and may then lease
    more per endpoint than can be sent at once, so the next request is at hand when one
    finishes. ``queued`` names its leased deliveries not sent yet. How many may wait is
    a cap's worth, or ``ahead[endpoint_id]`` where the caller knows the endpoint drains
    more than that in good time; none are leased ahead while other workers hold the
    whole cap. ``hold`` names endpoints the caller has a failure of not yet
    recorded: nothing is claimed for them until it is (it may open the circuit or
    disable the endpoint).
    """
    now = now or timezone.now()
    breaker = breaker or Breaker()
    with _worker_transaction(using) as connection:
        sql = _statements(_ClaimSQL, connection)
        stamp = connection.ops.adapt_datetimefield_value(now)
        endpoints: dict[int, Endpoint] = {}
        picked: list[tuple[int, Endpoint, dt.datetime | None, bool]] = []
        seen: set[int] = set()
        full: set[int] = set(hold)
        depth = ahead or {}
        leases = _Leases({}, {}, {}, claim_ahead, depth)
        active = 0
        passes = 3
        for pass_number in range(passes):
            # A few passes: endpoints that fill up are left out of the next one, so one
            # busy endpoint cannot crowd the others out of the window. Each window holds
            # as many as there is room for: every row in it is locked, and a window four
            # times that size (as it once was) made the lone endpoint's claim lock and
            # read 800 rows to lease 200 (bench/delivery.py: 14-17 ms a claim, now 12).
            room = limit - len(picked)
            if room <= 0:
                break
            size = room
            counts = _Counts(worker_id, settled, queued) if pass_number == 0 else None
            window = _window(connection, sql, stamp, size, full, seen, counts)
            if pass_number == 0:
                leases = _Leases(window.live, window.others, window.queued, claim_ahead, depth)
                active = window.active
            # First attempts before retries: a window's retries are admitted once it holds
            # every due first attempt (or on the last pass, so a FIFO head that is a retry
            # is still reached behind a long line of first attempts).
            firsts_exhausted = len(window.firsts) < size
            candidates = window.firsts
            if firsts_exhausted or pass_number == passes - 1:
                candidates = candidates + window.retries
            if not candidates:
                break
            missing = {endpoint_id for _, endpoint_id in candidates} - endpoints.keys()
            if missing:
                endpoints.update(_endpoints(connection, sql, missing))
            picked.extend(
                _admit(
                    using,
                    now,
                    candidates,
                    endpoints,
                    leases,
                    full,
                    breaker,
                    max_in_flight,
                    room,
                    lease,
                )
            )
            seen.update(delivery_id for delivery_id, _ in candidates)
            more = not firsts_exhausted or len(window.retries) == size
            # Nothing beyond the window, or every endpoint that could take more is full.
            if not more or len(full) >= active:
                break
        if not picked:
            return []
        expires = now + lease
        ids = [delivery_id for delivery_id, *_ in picked]
        where, id_params = _any(connection, f"{sql.delivery_table}.id", ids)
        lease_params = [worker_id, connection.ops.adapt_datetimefield_value(expires), *id_params]
        with connection.cursor() as cursor:
            # Only what sending needs: the payload, not whole events and endpoints.
            if sql.lease_returning:
                cursor.execute(sql.lease_returning.format(ids=where), lease_params)
            else:
                cursor.execute(sql.lease.format(ids=where), lease_params)
                cursor.execute(sql.payloads.format(ids=where), id_params)
            rows = {row[0]: row for row in cursor.fetchall()}
    claims = []
    alias = connection.alias
    for delivery_id, endpoint, send_at, probe in picked:
        _, event_id, attempts, sequence, event_type, payload = rows[delivery_id]
        event = _loaded(Event, alias, id=event_id, type=event_type, payload=payload)
        leased = Leased(
            delivery_id, event_id, endpoint.id, attempts, sequence, worker_id, expires, event, endpoint
        )
        allowance = 1 if probe else _allowance(endpoint, max_in_flight, leases.others)
        claims.append(Claim(delivery=leased, send_at=send_at, probe=probe, allowance=allowance))
    return claims


def _loaded(model: type[M], alias: str, **values: Any) -> M:
    """A ``model`` instance as read from ``alias`` with just these fields, the others deferred.

    Building instances with keyword arguments sets every other field to its default,
    ``created_at`` calling the clock: for a claim's rows, the costliest part of claiming.
    """
    fields = model._meta.concrete_fields
    return model.from_db(alias, values.keys(), [values[f.attname] for f in fields if f.attname in values])


def _endpoints(connection: BaseDatabaseWrapper, sql: _ClaimSQL, ids: Collection[int]) -> dict[int, Endpoint]:
    """The endpoints ``ids``, whole: a raw query, as ``in_bulk`` spent ~250 µs per claim building its SQL."""
    where, params = _any(connection, "id", ids)
    rows = Endpoint.objects.using(connection.alias).raw(sql.endpoints.format(ids=where), params)
    return {endpoint.id: endpoint for endpoint in rows}


class _ClaimSQL:
    """The claim's statements for one database vendor, built once from the models' metadata.

    Claiming is the worker's hottest path: plain SQL here costs a fraction of what
    building and compiling the equivalent querysets does on every round.
    """

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        q = connection.ops.quote_name
        d, e, ep = (q(m._meta.db_table) for m in (Delivery, Event, Endpoint))
        pending = f"{d}.status = '{Delivery.Status.PENDING}'"
        lock = f" FOR UPDATE OF {d} SKIP LOCKED"
        lock = lock if connection.features.has_select_for_update_skip_locked else ""
        queue = (
            f"SELECT {d}.id, {d}.endpoint_id, {d}.next_attempt_at "
            f"FROM {d} JOIN {ep} ON {ep}.id = {d}.endpoint_id "
            f"WHERE {pending} AND {d}.attempt_count {{queue}} AND {d}.next_attempt_at <= %s "
            f"AND ({d}.lease_expires_at IS NULL OR {d}.lease_expires_at <= %s) "
            f"AND {ep}.status = '{Endpoint.Status.ACTIVE}' "
            f"AND ({ep}.blocked_until IS NULL OR {ep}.blocked_until <= %s){{{{exclude}}}} "
            f"ORDER BY {d}.next_attempt_at, {d}.id LIMIT %s{lock}"
        )
        # Kinds: 0 a first attempt, 1 a retry, 2 an endpoint's in-flight count, 3 the
        # number of endpoints taking deliveries. The counts are only asked on a first pass.
        # Each queue's order travels as a row number: decoding a timestamp per row cost the
        # worker's database thread ~7 µs of the GIL each, hundreds of rows per claim.
        self.window = (
            f"WITH firsts AS ({queue.format(queue='= 0')}), retries AS ({queue.format(queue='> 0')}) "
            "SELECT 0, id, endpoint_id, ROW_NUMBER() OVER (ORDER BY next_attempt_at, id), 0, 0 FROM firsts "
            "UNION ALL SELECT 1, id, endpoint_id, ROW_NUMBER() OVER (ORDER BY next_attempt_at, id), 0, 0 "
            "FROM retries{counts}"
        )
        # Kind 2, per endpoint: live leases (settled ones left out), other workers' among
        # them, and the caller's queued ones among them.
        live = (
            "COUNT(*), NULL, SUM(CASE WHEN lease_owner = %s THEN 0 ELSE 1 END), "
            "SUM(CASE WHEN {is_queued} THEN 1 ELSE 0 END) "
            f"FROM {d} WHERE {pending} AND lease_expires_at > %s{{not_settled}}"
        )
        self.counts = (
            f" UNION ALL SELECT 2, endpoint_id, {live} GROUP BY endpoint_id "
            f"UNION ALL SELECT 3, COUNT(*), 0, NULL, 0, 0 FROM {ep} "
            f"WHERE status = '{Endpoint.Status.ACTIVE}' AND (blocked_until IS NULL OR blocked_until <= %s)"
        )
        # The same counts for the endpoints a fan-out leases for (see _Births).
        self.live_leases = f"SELECT endpoint_id, {live} AND {{endpoints}} GROUP BY endpoint_id"
        self.delivery_table = d
        every_column = ", ".join(q(str(f.column)) for f in Endpoint._meta.concrete_fields)
        self.endpoints = f"SELECT {every_column} FROM {ep} WHERE {{ids}}"
        self.lease = f"UPDATE {d} SET lease_owner = %s, lease_expires_at = %s WHERE {{ids}}"
        self.payloads = (
            f"SELECT {d}.id, {d}.event_id, {d}.attempt_count, {d}.sequence, {e}.type, {e}.payload "
            f"FROM {d} JOIN {e} ON {e}.id = {d}.event_id WHERE {{ids}}"
        )
        # PostgreSQL leases and reads the payloads in one round trip.
        self.lease_returning = (
            f"UPDATE {d} SET lease_owner = %s, lease_expires_at = %s FROM {e} "
            f"WHERE {{ids}} AND {e}.id = {d}.event_id "
            f"RETURNING {d}.id, {d}.event_id, {d}.attempt_count, {d}.sequence, {e}.type, {e}.payload"
            if connection.vendor == "postgresql"
            else ""
        )


class _Counts(NamedTuple):
    """What a claim's first look counts leases against: whose, and which are not in flight."""

    worker_id: str
    settled: Collection[int]
    queued: Collection[int]


class _Leases(NamedTuple):
    """Per endpoint, the leases a claim admits against (updated as it admits)."""

    live: dict[int, int]
    others: dict[int, int]
    queued: dict[int, int]
    claim_ahead: bool
    # Per endpoint, how many may wait unsent when more than a cap's worth may.
    depth: Mapping[int, int]

    def limit(self, endpoint_id: int, cap: int) -> int:
        """How many live leases ``endpoint_id`` may have: its cap, plus its queue's depth when claiming ahead.

        Ahead only while other workers do not hold the whole cap, and no more than the
        depth (at least a cap's worth) waits unsent in the caller's queue.
        """
        depth = max(cap, self.depth.get(endpoint_id, cap))
        ahead = (
            self.claim_ahead
            and self.others.get(endpoint_id, 0) < cap
            and self.queued.get(endpoint_id, 0) < depth
        )
        return cap + depth if ahead else cap


class _Window(NamedTuple):
    """One look at the due queues: candidates oldest first, and (first pass) what is in flight."""

    firsts: list[tuple[int, int]]
    retries: list[tuple[int, int]]
    # Per endpoint: live leases (settled ones left out), other workers' leases among
    # them, and the caller's queued leases among them.
    live: dict[int, int]
    others: dict[int, int]
    queued: dict[int, int]
    active: int


def _window(
    connection: BaseDatabaseWrapper,
    sql: _ClaimSQL,
    stamp: Any,
    size: int,
    full: set[int],
    seen: set[int],
    counts: _Counts | None,
) -> _Window:
    """Up to ``size`` due deliveries of each queue, locked; with ``counts``, the lease counts too.

    One statement, one round trip: both queues, the in-flight count per endpoint and
    the number of endpoints that could take deliveries.
    """
    d = sql.delivery_table
    exclude = ""
    exclude_params: list[Any] = []
    for column, values in ((f"{d}.endpoint_id", full), (f"{d}.id", seen)):
        if values:
            where, more = _any(connection, column, values)
            exclude += f" AND NOT {where}"
            exclude_params.extend(more)
    queue_params = [stamp, stamp, stamp, *exclude_params, size]
    params = [*queue_params, *queue_params]
    counting = ""
    if counts is not None:
        filters, count_params = _count_filters(connection, counts, stamp)
        counting = sql.counts.format(**filters)
        params += [*count_params, stamp]
    with connection.cursor() as cursor:
        cursor.execute(sql.window.format(exclude=exclude, counts=counting), params)
        rows = cursor.fetchall()
    queues: tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]] = ([], [])
    live: dict[int, int] = {}
    others: dict[int, int] = {}
    queued: dict[int, int] = {}
    active = 0
    for kind, a, b, place, theirs, waiting in rows:
        if kind < 2:
            queues[kind].append((place, a, b))
        elif kind == 2:
            live[a], others[a], queued[a] = b, theirs, waiting
        else:
            active = a
    # Oldest first, as each queue's index reads them (the statement's union does not promise order).
    firsts, retries = ([(i, e) for _, i, e in sorted(q)] for q in queues)
    return _Window(firsts, retries, live, others, queued, active)


def _count_filters(
    connection: BaseDatabaseWrapper, counts: _Counts, stamp: Any
) -> tuple[dict[str, str], list[Any]]:
    """The lease counts' filters (``is_queued``, ``not_settled``) and their parameters, in statement order."""
    # Ids, not numbers: a settled delivery recorded meanwhile is simply not leased any
    # more, so nothing is subtracted twice whatever the timing.
    not_settled, settled_params = "", list[Any]()
    if counts.settled:
        where, settled_params = _any(connection, "id", counts.settled)
        not_settled = f" AND NOT {where}"
    is_queued, queued_params = "1 = 0", list[Any]()
    if counts.queued:
        is_queued, queued_params = _any(connection, "id", counts.queued)
    filters = {"is_queued": is_queued, "not_settled": not_settled}
    return filters, [counts.worker_id, *queued_params, stamp, *settled_params]


def _live_leases(
    connection: BaseDatabaseWrapper,
    sql: _ClaimSQL,
    now: dt.datetime,
    endpoint_ids: Collection[int],
    counts: _Counts,
) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """Per endpoint of ``endpoint_ids``: live leases, other workers' among them, the caller's queued ones."""
    filters, params = _count_filters(connection, counts, connection.ops.adapt_datetimefield_value(now))
    endpoints, endpoint_params = _any(connection, "endpoint_id", endpoint_ids)
    live: dict[int, int] = {}
    others: dict[int, int] = {}
    queued: dict[int, int] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql.live_leases.format(**filters, endpoints=endpoints), [*params, *endpoint_params])
        for endpoint_id, count, _, theirs, waiting in cursor.fetchall():
            live[endpoint_id], others[endpoint_id], queued[endpoint_id] = count, theirs, waiting
    return live, others, queued


def _admit(
    using: str,
    now: dt.datetime,
    candidates: list[tuple[int, int]],
    endpoints: dict[int, Endpoint],
    leases: _Leases,
    full: set[int],
    breaker: Breaker,
    max_in_flight: int,
    room: int,
    lease: dt.timedelta,
) -> list[tuple[int, Endpoint, dt.datetime | None, bool]]:
    """Pick, from ``candidates``, the deliveries each endpoint's limits let go now."""
    involved = [endpoints[endpoint_id] for endpoint_id in {e for _, e in candidates}]
    fifo_heads = _fifo_heads(using, [e for e in involved if e.fifo])
    slots = _RateSlots(using, now, lease, [e for e in involved if e.rate_limit])
    taken: list[tuple[int, Endpoint, dt.datetime | None, bool]] = []
    for delivery_id, endpoint_id in candidates:
        if len(taken) >= room:
            break
        if endpoint_id in full:
            continue
        endpoint = endpoints[endpoint_id]
        busy = leases.live.get(endpoint_id, 0)
        waiting = leases.queued.get(endpoint_id, 0)
        cap = _cap(endpoint, max_in_flight)
        probe = breaker.is_open(endpoint.consecutive_failures)
        if probe:
            # One probe while the circuit is open; others wait for its answer.
            if busy or not _take_probe(using, endpoint, now, lease):
                full.add(endpoint_id)
                continue
            cap = 1
        if busy >= (1 if probe else leases.limit(endpoint_id, cap)):
            full.add(endpoint_id)
            continue
        if endpoint.fifo and fifo_heads.get(endpoint_id) != delivery_id:
            # Not the head of the line. The head may be a retry, met in the next queue,
            # so the endpoint is not marked full here.
            continue
        send_at = None
        if endpoint.rate_limit:
            send_at = slots.take(endpoint)
            if send_at is None:
                full.add(endpoint_id)
                continue
        taken.append((delivery_id, endpoint, send_at, probe))
        leases.live[endpoint_id] = busy + 1
        leases.queued[endpoint_id] = waiting + 1
        if probe or busy + 1 >= leases.limit(endpoint_id, cap):
            full.add(endpoint_id)
    slots.save()
    return taken


def _cap(endpoint: Endpoint, max_in_flight: int) -> int:
    """How many of ``endpoint``'s requests may be in flight at once, across all workers."""
    return 1 if endpoint.fifo else (endpoint.max_in_flight or max_in_flight)


def _allowance(endpoint: Endpoint, max_in_flight: int, others: Mapping[int, int]) -> int:
    """How many of ``endpoint``'s requests a worker may send at once: its cap less other workers' leases."""
    return max(_cap(endpoint, max_in_flight) - others.get(endpoint.id, 0), 1)


def _fifo_heads(using: str, endpoints: list[Endpoint]) -> dict[int, int]:
    """For each FIFO endpoint, the id of its pending delivery with the lowest sequence."""
    heads: dict[int, int] = {}
    for endpoint in endpoints:
        head = (
            Delivery.objects.using(using)
            .pending()
            .filter(endpoint_id=endpoint.id)
            .order_by("sequence", "id")
            .values_list("id", flat=True)
            .first()
        )
        if head is not None:
            heads[endpoint.id] = head
    return heads


def _take_probe(using: str, endpoint: Endpoint, now: dt.datetime, lease: dt.timedelta) -> bool:
    """Reserve the one probe of an open circuit (compare-and-set, so only one worker wins)."""
    won = (
        Endpoint.objects.using(using)
        .filter(id=endpoint.id, blocked_until=endpoint.blocked_until)
        .update(blocked_until=now + lease)
    )
    return won == 1


class _RateSlots:
    """Send slots of rate-limited endpoints, spaced ``1/rate`` apart across every worker."""

    def __init__(self, using: str, now: dt.datetime, lease: dt.timedelta, endpoints: list[Endpoint]) -> None:
        self.using, self.now = using, now
        # Slots further ahead than half a lease would outlive the lease before being used.
        self.horizon = now + lease / 2
        self.next: dict[int, dt.datetime] = {}
        if endpoints:
            locked = (
                Endpoint.objects.using(using)
                .select_for_update()
                .filter(id__in=[e.id for e in endpoints])
                .only("id", "next_slot_at")
            )
            self.next = {e.id: max(e.next_slot_at or now, now) for e in locked}
        self.changed: set[int] = set()

    def take(self, endpoint: Endpoint) -> dt.datetime | None:
        slot = self.next.get(endpoint.id, self.now)
        if slot > self.horizon:
            return None
        assert endpoint.rate_limit
        self.next[endpoint.id] = slot + dt.timedelta(seconds=1 / endpoint.rate_limit)
        self.changed.add(endpoint.id)
        return slot

    def save(self) -> None:
        for endpoint_id in self.changed:
            Endpoint.objects.using(self.using).filter(id=endpoint_id).update(
                next_slot_at=self.next[endpoint_id]
            )


def release(delivery_ids: Sequence[int], *, worker_id: str, using: str = "default") -> int:
    """Give back leases a stopping worker holds without an answer, due again at once."""
    return (
        Delivery.objects.using(using)
        .filter(id__in=delivery_ids, lease_owner=worker_id, status=Delivery.Status.PENDING)
        .update(lease_owner="", lease_expires_at=None)
    )


# --- recording what happened ------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    """What one request for a delivery produced, and the retry policy's decision on it."""

    delivery_id: int
    endpoint_id: int
    event_id: str
    number: int
    started_at: dt.datetime
    duration_ms: int | None
    request_headers: dict[str, str]
    status_code: int | None
    response_body: str
    error: str
    decision: Decision
    # The request was its endpoint's one probe of an open circuit.
    probe: bool = False


def record_results(
    results: Sequence[AttemptResult],
    *,
    using: str = "default",
    breaker: Breaker | None = None,
    disable_after: dt.timedelta = dt.timedelta(days=5),
    now: dt.datetime | None = None,
) -> None:
    """Write the attempt log and move each delivery and endpoint to its next state, in one transaction.

    Deliveries already finished elsewhere (a replayed lease that both workers sent)
    are not moved back. A delivery deleted while its request was out (its endpoint or
    event deleted) gets no attempt row and no signal, but its answer still counts
    towards the endpoint's health. Operational signals go out after the commit.
    """
    if not results:
        return
    now = now or timezone.now()
    breaker = breaker or Breaker()
    notices: list[Callable[[], object]] = []
    with _worker_transaction(using) as connection:
        if connection.vendor == "postgresql":
            logged = _record_in_one_statement(connection, results, now)
        else:
            logged = _record_with_orm(using, results, now)
        if len(logged) < len(results):
            # Logging them anyway broke the attempt's foreign key, so every flush after it failed.
            gone = sorted(r.delivery_id for r in results if r.delivery_id not in logged)
            logger.warning("results of %d deliveries deleted meanwhile not logged: %s", len(gone), gone)
        notices.extend(_delivery_notices([r for r in results if r.delivery_id in logged]))
        notices.extend(_update_health(using, results, now, breaker, disable_after))
    transaction.on_commit(lambda: [notice() for notice in notices], using=using)


#: Errors that mean the database is away or the connection broke, not that a batch holds
#: something the database cannot store: a batch failing with one is simply tried again.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)

# How much of an unstorable error message a stripped attempt keeps.
_STRIPPED_ERROR_CHARS = 2000


@dataclass
class Salvage:
    """What :func:`salvage_results` did with each result of a batch the database refused."""

    #: Recorded as they were.
    recorded: list[AttemptResult] = field(default_factory=list)
    #: Recorded without their details (headers, body), with what refused them.
    stripped: list[tuple[AttemptResult, Exception]] = field(default_factory=list)
    #: Not recorded at all: the delivery keeps its lease, and is sent again when it expires.
    unrecorded: list[tuple[AttemptResult, Exception]] = field(default_factory=list)
    #: Not tried: the database went away meanwhile. Record them later.
    remaining: list[AttemptResult] = field(default_factory=list)


def salvage_results(
    results: Sequence[AttemptResult],
    *,
    using: str = "default",
    breaker: Breaker | None = None,
    disable_after: dt.timedelta = dt.timedelta(days=5),
) -> Salvage:
    """Record a batch :func:`record_results` failed on, one result at a time: one bad result blocks no other.

    A result refused on its own is recorded again stripped of what could not be
    stored: no request headers or response body, its error text reduced to ASCII
    with the reason appended. Its delivery still moves on (delivered, retried, dead),
    and its answer counts towards the endpoint's health. A result refused even then
    is left out. A transient error (the database gone) stops the salvage; the results
    not tried yet are returned in ``remaining``.
    """
    salvage = Salvage()
    record = partial(record_results, using=using, breaker=breaker, disable_after=disable_after)
    for index, result in enumerate(results):
        try:
            refused = _refusal(record, result)
            if refused is None:
                salvage.recorded.append(result)
                continue
            refused_again = _refusal(record, _stripped(result, refused))
        except TRANSIENT_ERRORS:
            salvage.remaining = list(results[index:])
            break
        if refused_again is None:
            salvage.stripped.append((result, refused))
        else:
            salvage.unrecorded.append((result, refused_again))
    return salvage


def _refusal(record: Callable[[list[AttemptResult]], None], result: AttemptResult) -> Exception | None:
    """Record ``result`` alone: None, or what the database refused it with (transient errors propagate)."""
    try:
        record([result])
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:
        return exc
    return None


def _stripped(result: AttemptResult, refused: Exception) -> AttemptResult:
    """``result`` with only what any database stores: no headers or body, the error in ASCII."""
    reason = f"attempt details not stored: the database refused them ({type(refused).__name__})"
    error = result.error.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "")
    error = f"{error[:_STRIPPED_ERROR_CHARS]}; {reason}" if error else reason
    return dataclasses.replace(result, request_headers={}, response_body="", error=error)


class _RecordSQL:
    """PostgreSQL: the attempt log and every delivery's next state in one statement."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        q = connection.ops.quote_name
        d, a = q(Delivery._meta.db_table), q(Attempt._meta.db_table)
        column_of = {f.name: str(f.column) for f in Attempt._meta.concrete_fields}
        logged = [name for name, _ in _LOG_COLUMNS]
        columns = ", ".join(q(column_of[name]) for name in logged)
        record_type = ", ".join(f"{name} {kind}" for name, kind in (*_LOG_COLUMNS, *_MOVE_COLUMNS))
        pending = Delivery.Status.PENDING
        # The batch travels as one JSON document: the driver passes one string, where
        # twelve arrays cost it a dumper call and a quoting check per element, on the
        # thread that records outcomes (about 25 µs per attempt). Each delivery's new
        # status and due time ride along; a delivery already finished elsewhere (a
        # replayed lease both workers sent) stays as it is. Attempts are logged only for
        # deliveries that still exist; the statement returns their ids.
        self.statement = (
            f"WITH r AS (SELECT * FROM json_to_recordset(%s::json) AS r({record_type})), "
            f"moved AS (UPDATE {d} SET status = r.status, attempt_count = {d}.attempt_count + 1, "
            "last_attempt_at = %s, lease_owner = '', lease_expires_at = NULL, "
            f"finished_at = CASE WHEN r.status = '{pending}' THEN NULL ELSE %s END, "
            "next_attempt_at = r.next_attempt_at FROM r "
            # Each delivery is found by its primary key. The status test is kept out of the
            # indexes' reach on purpose: with statistics taken while few deliveries were
            # pending (the usual state before a backlog), the planner read every pending
            # delivery through the (endpoint, status) index, or compared every result
            # with every row it read: work that grew with the backlog, or with the square
            # of the batch. bench/record.py: 144 µs per result in batches of 400, now 40.
            f"WHERE {d}.id = r.delivery AND ({d}.status || '') = '{pending}') "
            f"INSERT INTO {a} ({columns}) SELECT {', '.join(logged)} FROM r "
            f"WHERE delivery IN (SELECT id FROM {d} WHERE id = ANY(%s::bigint[])) "
            f"RETURNING {q(column_of['delivery'])}"
        )


#: The JSON document's record type: the attempt log's fields (as the statement inserts
#: them), then each delivery's next state.
_LOG_COLUMNS = (
    ("delivery", "bigint"),
    ("number", "int"),
    ("started_at", "timestamptz"),
    ("duration_ms", "int"),
    ("request_headers", "jsonb"),
    ("status_code", "int"),
    ("response_body", "text"),
    ("error", "text"),
    ("verdict", "text"),
)
_MOVE_COLUMNS = (("status", "text"), ("next_attempt_at", "timestamptz"))


#: The delivery status each verdict leads to.
_NEXT_STATUS = {
    Verdict.DELIVERED: Delivery.Status.DELIVERED,
    Verdict.GAVE_UP: Delivery.Status.DEAD,
    Verdict.ENDPOINT_GONE: Delivery.Status.CANCELLED,
    Verdict.RETRY: Delivery.Status.PENDING,
}


def _record_in_one_statement(
    connection: BaseDatabaseWrapper, results: Sequence[AttemptResult], now: dt.datetime
) -> set[int]:
    sql = _statements(_RecordSQL, connection)
    records = [
        {
            "delivery": r.delivery_id,
            "number": r.number,
            "started_at": r.started_at.isoformat(),
            "duration_ms": r.duration_ms,
            "request_headers": r.request_headers,
            "status_code": r.status_code,
            "response_body": r.response_body,
            "error": r.error,
            "verdict": str(r.decision.verdict),
            "status": str(_NEXT_STATUS[r.decision.verdict]),
            "next_attempt_at": (
                r.decision.retry_at.isoformat()
                if r.decision.verdict is Verdict.RETRY and r.decision.retry_at is not None
                else None
            ),
        }
        for r in results
    ]
    document = json.dumps(records)
    if "\\u0000" in document:
        # JSON writes U+0000 only as this escape, so the whole batch is checked at the cost
        # of one search; the rare batch that has one is written again without it.
        document = json.dumps(_storable(records))
    ids = _int_array(r.delivery_id for r in results)
    with connection.cursor() as cursor:
        cursor.execute(sql.statement, [document, now, now, ids])
        return {delivery_id for (delivery_id,) in cursor.fetchall()}


def _storable(value: Any) -> Any:
    """``value`` with U+0000 replaced in every string: PostgreSQL text and jsonb cannot hold it.

    A receiver may answer in binary (gzip, an image): unreplaced, one such answer made
    every flush of the recorder fail, forever.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def _record_with_orm(using: str, results: Sequence[AttemptResult], now: dt.datetime) -> set[int]:
    ids = [r.delivery_id for r in results]
    existing = set(Delivery.objects.using(using).filter(id__in=ids).values_list("id", flat=True))
    Attempt.objects.using(using).bulk_create(
        Attempt(
            delivery_id=r.delivery_id,
            number=r.number,
            started_at=r.started_at,
            duration_ms=r.duration_ms,
            request_headers=_storable(r.request_headers),
            status_code=r.status_code,
            response_body=_storable(r.response_body),
            error=_storable(r.error),
            verdict=str(r.decision.verdict),
        )
        for r in results
        if r.delivery_id in existing
    )
    by_verdict: dict[Verdict, list[AttemptResult]] = {}
    for r in results:
        by_verdict.setdefault(r.decision.verdict, []).append(r)
    pending = Delivery.objects.using(using).filter(status=Delivery.Status.PENDING)
    finished = {
        "attempt_count": F("attempt_count") + 1,
        "last_attempt_at": now,
        "lease_owner": "",
        "lease_expires_at": None,
        "finished_at": now,
        "next_attempt_at": None,
    }
    if delivered := by_verdict.get(Verdict.DELIVERED):
        pending.filter(id__in=[r.delivery_id for r in delivered]).update(
            status=Delivery.Status.DELIVERED, **finished
        )
    if gave_up := by_verdict.get(Verdict.GAVE_UP):
        pending.filter(id__in=[r.delivery_id for r in gave_up]).update(
            status=Delivery.Status.DEAD, **finished
        )
    if gone := by_verdict.get(Verdict.ENDPOINT_GONE):
        pending.filter(id__in=[r.delivery_id for r in gone]).update(
            status=Delivery.Status.CANCELLED, **finished
        )
    if retry := by_verdict.get(Verdict.RETRY):
        _schedule_retries(using, retry, now)
    return existing


def _schedule_retries(using: str, retry: list[AttemptResult], now: dt.datetime) -> None:
    ids = [r.delivery_id for r in retry]
    Delivery.objects.using(using).filter(id__in=ids, status=Delivery.Status.PENDING).update(
        attempt_count=F("attempt_count") + 1,
        last_attempt_at=now,
        lease_owner="",
        lease_expires_at=None,
    )
    # Each retry has its own (jittered) time: one CASE update for all of them.
    rows = [Delivery(id=r.delivery_id, next_attempt_at=r.decision.retry_at) for r in retry]
    Delivery.objects.using(using).bulk_update(rows, ["next_attempt_at"])


def _send_robustly(signal: Signal, **kwargs: Any) -> None:
    """Send an operational signal after commit; a receiver that raises is logged, never raised.

    What was committed is done: a project's receiver failing must not make the worker
    think otherwise (it would record the same attempts again) nor stop it.
    """
    for receiver, result in signal.send_robust(**kwargs):
        if isinstance(result, Exception):
            logger.error(
                "a receiver of a hookpost signal raised: %r",
                receiver,
                exc_info=(type(result), result, result.__traceback__),
            )


def _delivery_notices(results: Sequence[AttemptResult]) -> list[Callable[[], object]]:
    notices: list[Callable[[], object]] = []
    for r in results:
        common = {
            "sender": Delivery,
            "delivery_id": r.delivery_id,
            "endpoint_id": r.endpoint_id,
            "event_id": r.event_id,
            "attempt": r.number,
        }
        verdict = r.decision.verdict
        if verdict is Verdict.DELIVERED:
            notices.append(partial(_send_robustly, signals.delivery_succeeded, **common))
            continue
        notices.append(
            partial(
                _send_robustly,
                signals.delivery_failed,
                **common,
                status_code=r.status_code,
                error=r.error,
                verdict=str(verdict),
            )
        )
        if verdict is Verdict.GAVE_UP:
            notices.append(partial(_send_robustly, signals.delivery_exhausted, **common))
    return notices


class _HealthSQL:
    """The healthy endpoint's update after a flush of successes, built once."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        q = connection.ops.quote_name
        fields = {f.name: q(str(f.column)) for f in Endpoint._meta.concrete_fields}
        self.healthy = (
            f"UPDATE {q(Endpoint._meta.db_table)} SET {fields['last_success_at']} = %s, "
            f"{fields['failing_since']} = NULL WHERE {fields['id']} = %s "
            f"AND {fields['consecutive_failures']} = 0 AND {fields['blocked_until']} IS NULL"
        )


def _update_health(
    using: str,
    results: Sequence[AttemptResult],
    now: dt.datetime,
    breaker: Breaker,
    disable_after: dt.timedelta,
) -> list[Callable[[], object]]:
    """Update each endpoint's failure streak, circuit and status from this batch's results."""
    notices: list[Callable[[], object]] = []
    by_endpoint: dict[int, list[AttemptResult]] = {}
    for r in sorted(results, key=lambda r: r.started_at):
        by_endpoint.setdefault(r.endpoint_id, []).append(r)
    connection = connections[using]
    for endpoint_id, batch in list(by_endpoint.items()):
        if all(r.decision.verdict is Verdict.DELIVERED for r in batch):
            # The usual case, a healthy endpoint answering 2xx: one conditional UPDATE, in
            # plain SQL as it runs on every flush (the queryset cost ~400 µs to build).
            # No row changes when the endpoint was failing; the full path below handles it.
            with connection.cursor() as cursor:
                cursor.execute(
                    _statements(_HealthSQL, connection).healthy,
                    [connection.ops.adapt_datetimefield_value(batch[-1].started_at), endpoint_id],
                )
                healthy = cursor.rowcount
            if healthy:
                del by_endpoint[endpoint_id]
    if not by_endpoint:
        return notices
    endpoints = Endpoint.objects.using(using).select_for_update().filter(id__in=list(by_endpoint))
    for endpoint in endpoints:
        was_open = breaker.is_open(endpoint.consecutive_failures)
        was_blocked_until = endpoint.blocked_until
        gone_reason = ""
        for r in by_endpoint[endpoint.id]:
            verdict = r.decision.verdict
            if verdict is Verdict.DELIVERED:
                endpoint.consecutive_failures = 0
                endpoint.failing_since = None
                endpoint.last_success_at = r.started_at
            else:
                # Once the circuit is open only a failed probe lengthens its wait: requests
                # that were already in flight when it opened fail too, and counting them
                # would push the first probe from 30 s out to the 10 min cap.
                if r.probe or not breaker.is_open(endpoint.consecutive_failures):
                    endpoint.consecutive_failures += 1
                endpoint.failing_since = endpoint.failing_since or r.started_at
                if endpoint.last_failure_at is None or r.started_at > endpoint.last_failure_at:
                    endpoint.last_failure_at = r.started_at
                if verdict is Verdict.ENDPOINT_GONE:
                    gone_reason = f"answered 410 Gone at {r.started_at.isoformat()}"
        endpoint.blocked_until = (
            breaker.probe_at(endpoint.consecutive_failures, endpoint.last_failure_at)
            if endpoint.last_failure_at
            else None
        )
        if was_open and endpoint.consecutive_failures == 0:
            notices.append(
                partial(_send_robustly, signals.endpoint_recovered, sender=Endpoint, endpoint_id=endpoint.id)
            )
        endpoint.save(
            update_fields=[
                "consecutive_failures",
                "failing_since",
                "last_success_at",
                "last_failure_at",
                "blocked_until",
            ]
        )
        if endpoint.blocked_until is not None:
            _park(using, endpoint.id, endpoint.blocked_until)
        elif was_blocked_until is not None:
            # Closed: deliveries fanned out while the probe was in flight were parked at
            # the time its lease runs out; they may go now.
            _unpark(using, endpoint.id, was_blocked_until, now)
        reason = gone_reason
        if not reason and should_disable(endpoint.failing_since, now, disable_after):
            reason = f"failing with no success since {endpoint.failing_since.isoformat()}"  # type: ignore[union-attr]
        if reason and endpoint.status != Endpoint.Status.DISABLED:
            notices.extend(disable_endpoint(endpoint, reason, using=using, now=now))
    return notices


def _park(using: str, endpoint_id: int, until: dt.datetime) -> int:
    """Move an open circuit's due deliveries to its probe time; returns how many moved.

    They could not go before it anyway, and left due they would stay at the head of the
    index every claim walks: 50,000 held deliveries doubled the time of each claim for
    the healthy endpoints behind them. A fan-out committing while the circuit opens
    may leave its batch due (it read the endpoint before): the next failed probe parks it.
    """
    return (
        Delivery.objects.using(using)
        .filter(endpoint_id=endpoint_id, status=Delivery.Status.PENDING, next_attempt_at__lt=until)
        .update(next_attempt_at=until)
    )


def _unpark(using: str, endpoint_id: int, until: dt.datetime, now: dt.datetime) -> int:
    """Make deliveries parked until ``until`` due now: the circuit closed before that time."""
    return (
        Delivery.objects.using(using)
        .filter(endpoint_id=endpoint_id, status=Delivery.Status.PENDING, next_attempt_at=until)
        .update(next_attempt_at=min(now, until))
    )


def disable_endpoint(
    endpoint: Endpoint, reason: str, *, using: str = "default", now: dt.datetime | None = None
) -> list[Callable[[], object]]:
    """Disable ``endpoint`` and cancel its pending deliveries; returns the signal to send after commit."""
    now = now or timezone.now()
    endpoint.status = Endpoint.Status.DISABLED
    endpoint.status_reason = reason[:255]
    endpoint.save(update_fields=["status", "status_reason", "updated_at"])
    Delivery.objects.using(using).filter(endpoint_id=endpoint.id, status=Delivery.Status.PENDING).update(
        status=Delivery.Status.CANCELLED,
        finished_at=now,
        lease_owner="",
        lease_expires_at=None,
        next_attempt_at=None,
    )
    return [
        partial(
            _send_robustly, signals.endpoint_disabled, sender=Endpoint, endpoint_id=endpoint.id, reason=reason
        )
    ]


# --- replay and pruning ---------------------------------------------------------------------------


#: The type of the event :func:`send_test_event` sends.
TEST_EVENT_TYPE = "hookpost.test"


def send_test_event(
    endpoint: Endpoint, *, using: str = "default", now: dt.datetime | None = None
) -> Delivery:
    """Queue a ``hookpost.test`` event to ``endpoint`` alone, whatever it subscribes to.

    The worker sends it like any other delivery (signed, retried, logged), so the
    attempt log shows what the endpoint answered. For a paused or disabled endpoint it
    waits, like everything else, until the endpoint is active again.
    """
    now = now or timezone.now()
    frame = Frame.build(TEST_EVENT_TYPE, now)
    data = {"endpoint": endpoint.pk, "message": "A test event from django-hookpost."}
    with transaction.atomic(using=using):
        event = _event(new_message_ids(1)[0], EventDraft(TEST_EVENT_TYPE, frame.encode(data), now))
        # Fanned out here, to this endpoint only: fan-out must not send it to subscribers of "*".
        event.fanned_out_at = now
        event.save(using=using, force_insert=True)
        sequence = None
        if endpoint.fifo:
            rows: list[list[Any]] = [[event.id, endpoint.pk, None]]
            _number_fifo_deliveries(using, rows, {endpoint.pk: 1})
            sequence = rows[0][2]
        due = now + PAUSE_SHIFT if endpoint.status == Endpoint.Status.PAUSED else now
        delivery = Delivery.objects.using(using).create(
            event=event, endpoint_id=endpoint.pk, sequence=sequence, next_attempt_at=due, created_at=now
        )
        signals.events_recorded.send(sender=Event, using=using)
    return delivery


def pause_endpoint(endpoint: Endpoint, *, using: str = "default") -> None:
    """Stop sending to ``endpoint``: its deliveries wait (new events still queue for it).

    Its pending deliveries move ``PAUSE_SHIFT`` ahead, out of the due queue: left due,
    they stayed at the head of the index every claim walks, and a paused endpoint's
    growing backlog slowed every other endpoint's claims. Resuming moves them back.
    """
    endpoint.status = Endpoint.Status.PAUSED
    endpoint.status_reason = "paused by an operator"
    with transaction.atomic(using=using):
        endpoint.save(using=using, update_fields=["status", "status_reason", "updated_at"])
        _shift_pending(using, endpoint.id, PAUSE_SHIFT)


def _shift_pending(using: str, endpoint_id: int, shift: dt.timedelta) -> int:
    """Move ``endpoint_id``'s pending deliveries by ``shift``: ahead when pausing, back when resuming."""
    # Only those on the near side of the shift: pausing twice, or resuming an endpoint
    # that was never paused, moves nothing.
    horizon = timezone.now() + PAUSE_SHIFT / 2
    pending = Delivery.objects.using(using).filter(endpoint_id=endpoint_id, status=Delivery.Status.PENDING)
    side = (
        pending.filter(next_attempt_at__lt=horizon)
        if shift > dt.timedelta(0)
        else pending.filter(next_attempt_at__gte=horizon)
    )
    return side.update(next_attempt_at=F("next_attempt_at") + shift)


def resume_endpoint(endpoint: Endpoint, *, using: str = "default") -> None:
    """Send to ``endpoint`` again: from paused, or re-enabled after hookpost disabled it.

    Its health starts afresh (no failures counted, circuit closed), so a re-enabled
    endpoint is not disabled again at its first failure. Deliveries cancelled when it
    was disabled stay cancelled: replay them (``replay`` or the admin's action) if wanted.
    """
    parked_until = endpoint.blocked_until
    endpoint.status = Endpoint.Status.ACTIVE
    endpoint.status_reason = ""
    endpoint.consecutive_failures = 0
    endpoint.failing_since = None
    endpoint.blocked_until = None
    with transaction.atomic(using=using):
        endpoint.save(
            using=using,
            update_fields=[
                "status",
                "status_reason",
                "consecutive_failures",
                "failing_since",
                "blocked_until",
                "updated_at",
            ],
        )
        _shift_pending(using, endpoint.id, -PAUSE_SHIFT)
        if parked_until is not None:
            _unpark(using, endpoint.id, parked_until, timezone.now())


def replay(
    deliveries: Iterable[Delivery], *, using: str = "default", now: dt.datetime | None = None
) -> list[Delivery]:
    """Queue a new delivery of the same event (same ``webhook-id``) to the same endpoint for each.

    Deliveries still pending are skipped: they will be sent anyway. Returns the new rows.
    """
    now = now or timezone.now()
    done = [d for d in deliveries if d.status != Delivery.Status.PENDING]
    # A paused endpoint's replays wait set aside with its other deliveries (pause_endpoint).
    paused = set(
        Endpoint.objects.using(using)
        .filter(id__in={d.endpoint_id for d in done}, status=Endpoint.Status.PAUSED)
        .values_list("id", flat=True)
    )
    rows = [
        Delivery(
            event_id=d.event_id,
            endpoint_id=d.endpoint_id,
            replay_of_id=d.id,
            next_attempt_at=now + PAUSE_SHIFT if d.endpoint_id in paused else now,
            created_at=now,
        )
        for d in done
    ]
    return Delivery.objects.using(using).bulk_create(rows)


def prune(
    before: dt.datetime, *, using: str = "default", dry_run: bool = False, chunk: int = 5000
) -> dict[str, int]:
    """Delete what finished before ``before``: attempts, finished deliveries, then events left bare.

    Pending work is never pruned, nor an event that keeps a delivery. Deletes go in
    chunks so a large backlog never holds one huge transaction. With ``dry_run``
    nothing is deleted and the counts say what would be.
    """
    deliveries = Delivery.objects.using(using)
    kept = deliveries.filter(
        Q(status=Delivery.Status.PENDING)
        | Q(finished_at__isnull=True)
        | Q(finished_at__gte=before)
        | Q(attempts__started_at__gte=before)
        # An original goes after its replays: it anchors their (event, endpoint) uniqueness.
        | Q(replays__isnull=False)
    )
    tables: list[tuple[str, Callable[[], models.QuerySet[Any]]]] = [
        ("attempts", lambda: Attempt.objects.using(using).older_than(before).exclude(delivery__in=kept)),
        ("deliveries", lambda: deliveries.exclude(id__in=kept.values("id"))),
        (
            "events",
            lambda: (
                Event.objects.using(using)
                .filter(occurred_at__lt=before)
                .exclude(fanned_out_at__isnull=True, error="")
                .exclude(deliveries__in=kept.values("id"))
            ),
        ),
    ]
    counts: dict[str, int] = {}
    for name, query in tables:
        if dry_run:
            counts[name] = query().count()
            continue
        counts[name] = 0
        while ids := list(query().values_list("pk", flat=True)[:chunk]):
            with transaction.atomic(using=using):
                query().model._default_manager.using(using).filter(pk__in=ids).delete()
            counts[name] += len(ids)
    return counts
