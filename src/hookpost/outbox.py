"""The only writer of outbox state: events go in here, and (later) delivery transitions live here.

Bulk writes bypass model instances, the costliest part of ``bulk_create`` for
thousands of rows: PostgreSQL (psycopg 3) streams them with ``COPY``, SQLite
runs one prepared ``INSERT`` with ``executemany``; other databases use
``bulk_create``. Every path writes on the given connection, inside whatever
transaction is open there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from hookpost.conf import hookpost_settings
from hookpost.events import new_message_ids
from hookpost.models import Event


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


def record_event(using: str, draft: EventDraft) -> Event:
    """Insert one event on connection ``using``, inside whatever transaction is open there."""
    [msg_id] = new_message_ids(1)
    event = Event(
        id=msg_id,
        type=draft.type,
        payload=draft.payload,
        occurred_at=draft.occurred_at,
        origin=draft.origin,
        error=draft.error,
    )
    event.save(using=using, force_insert=True)
    return event


def record_events(using: str, drafts: Sequence[EventDraft]) -> None:
    """Insert many events on ``using`` with as few statements as the database allows."""
    if not drafts:
        return
    connection = connections[using]
    ids = new_message_ids(len(drafts))
    writer = _WRITERS.get(connection.vendor, _write_with_orm)
    writer(connection, ids, drafts)


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


def _write_with_orm(connection: BaseDatabaseWrapper, ids: list[str], drafts: Sequence[EventDraft]) -> None:
    rows = [
        Event(
            id=msg_id,
            type=d.type,
            payload=d.payload,
            occurred_at=d.occurred_at,
            origin=d.origin,
            error=d.error,
        )
        for msg_id, d in zip(ids, drafts, strict=True)
    ]
    Event.objects.using(connection.alias).bulk_create(rows, batch_size=hookpost_settings.CAPTURE_BATCH_SIZE)


_WRITERS: dict[str, Callable[[BaseDatabaseWrapper, list[str], Sequence[EventDraft]], None]] = {
    "postgresql": _write_with_copy,
    "sqlite": _write_with_executemany,
}
