"""The only writer of inbox state: received webhooks stored once, handled, retried and reprocessed.

A webhook is stored by inserting its row; the unique ``(source, webhook_id)``
constraint, not a lookup, decides which of two concurrent deliveries of one id
wins, so an id is handled once however the requests interleave. Handling sends
``webhook_received`` inside a savepoint: if any receiver raises, the work of all
of them is rolled back and the row records the failure instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from hookpost import signals
from hookpost.conf import hookpost_settings
from hookpost.models import InboundWebhook
from hookpost.retry import RetryPolicy
from hookpost.signing import VerifiedMessage
from hookpost.sources import SourceConfig

__all__ = [
    "Outcome",
    "Received",
    "claim_due",
    "decode",
    "process",
    "process_due",
    "prune",
    "receive",
    "reprocess",
]

logger = logging.getLogger("hookpost.inbox")

_Status = InboundWebhook.Status
# Databases whose INSERT … ON CONFLICT DO NOTHING RETURNING the dedupe uses.
_ONE_STATEMENT_VENDORS = ("postgresql", "sqlite")
# Enough of a traceback to find the failing line in the admin, not a whole log.
_MAX_ERROR_CHARS = 8000


class Outcome(StrEnum):
    """What became of a received webhook, as the view reports it."""

    PROCESSED = "processed"
    FAILED = "failed"
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Received:
    """The result of :func:`receive`: the outcome and the inbox row behind it."""

    outcome: Outcome
    webhook: InboundWebhook
    error: BaseException | None = None


def _db() -> str:
    return router.db_for_write(InboundWebhook)


def _policy() -> RetryPolicy:
    schedule = hookpost_settings.RECEIVER_RETRY_SCHEDULE
    jitter = hookpost_settings.RETRY_JITTER
    if schedule is None:
        return RetryPolicy(jitter=jitter)
    return RetryPolicy.from_config(schedule, jitter=jitter)


def _lease() -> dt.timedelta:
    return dt.timedelta(seconds=hookpost_settings.LEASE_SECONDS)


def receive(
    source: SourceConfig,
    message: VerifiedMessage,
    *,
    event_type: str,
    body: str,
    payload: Any,
    headers: dict[str, str],
    using: str | None = None,
) -> Received:
    """Store a verified webhook once and handle it as its source's mode says.

    ``inline``: handled now, in this transaction (the row is written as processed and
    turned to failed if a handler raises). ``on_commit``: stored now, handled right after
    the transaction commits; if the process dies first, the lease runs out and the worker
    handles it. ``worker``: stored for ``hookpost_worker``. A duplicate is never handled
    again unless its earlier handling failed (a sender's retry, or a replay, is the way to
    try again).
    """
    using = using or _db()
    now = timezone.now()
    accepted = source.accepts(event_type)
    inline = accepted and source.mode == "inline"
    row = InboundWebhook(
        source=source.name,
        webhook_id=message.msg_id,
        event_type=event_type,
        sent_at=dt.datetime.fromtimestamp(message.timestamp, dt.UTC),
        received_at=now,
        body=body,
        headers=headers,
    )
    if not accepted:
        row.status = _Status.IGNORED
    elif inline:
        row.status, row.attempts, row.processed_at = _Status.PROCESSED, 1, now
    else:
        # The request itself handles an on_commit row at once; the worker keeps the schedule.
        on_commit = source.mode == "on_commit"
        row.next_attempt_at = now if on_commit else _policy().first_attempt_at(now)
        if on_commit:
            # Held by this request until it handles the row after commit; a worker takes
            # over only if the lease runs out (the process died in between).
            row.lease_expires_at = now + _lease()
    with transaction.atomic(using=using):
        if not _insert_once(row, using):
            return _again(source, row, payload, using)
        if not accepted:
            return Received(Outcome.IGNORED, row)
        if inline:
            error = _run_handlers(row, payload, using, retry=False, optimistic=True)
            return Received(Outcome.FAILED if error else Outcome.PROCESSED, row, error)
        _queue(source, row, using)
        return Received(Outcome.QUEUED, row)


def _queue(source: SourceConfig, row: InboundWebhook, using: str) -> None:
    """Hand a stored webhook on: to this request after commit, or to the runner."""
    if source.mode == "on_commit":
        transaction.on_commit(partial(process, row.pk, using=using), using=using, robust=True)
    else:
        signals.webhooks_stored.send(sender=InboundWebhook, using=using)


def _insert_once(row: InboundWebhook, using: str) -> bool:
    """Insert ``row`` unless its ``(source, webhook_id)`` is already there; whether it was inserted.

    PostgreSQL and SQLite (3.35+) do it in one ``INSERT … ON CONFLICT DO NOTHING RETURNING``
    statement (a concurrent insert of the same id waits for the other transaction, then
    does nothing); elsewhere a savepoint catches the IntegrityError.
    """
    connection = connections[using]
    if (
        connection.vendor not in _ONE_STATEMENT_VENDORS
        or not connection.features.can_return_columns_from_insert
    ):
        try:
            with transaction.atomic(using=using):
                row.save(using=using, force_insert=True)
        except IntegrityError:
            return False
        return True
    meta = InboundWebhook._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column or f.attname) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) "
        f"ON CONFLICT ({quote('source')}, {quote('webhook_id')}) DO NOTHING "
        f"RETURNING {quote(meta.pk.column or 'id')}"
    )
    params = [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchone()
    if found is None:
        return False
    row.pk = found[0]
    row._state.adding, row._state.db = False, using
    return True


def _again(source: SourceConfig, fresh: InboundWebhook, payload: Any, using: str) -> Received:
    """The id is already in the inbox: a duplicate, or another go at a failed one."""
    inbox = InboundWebhook.objects.using(using).filter(source=fresh.source, webhook_id=fresh.webhook_id)
    row = inbox.get()
    if row.status != _Status.FAILED or not source.accepts(row.event_type):
        return Received(Outcome.DUPLICATE, row)
    # Locked only to try again, so two retries of one failed id do not both run.
    row = inbox.select_for_update().get()
    if row.status != _Status.FAILED:
        return Received(Outcome.DUPLICATE, row)
    if source.mode == "inline":
        error = _run_handlers(row, payload, using, retry=False)
        return Received(Outcome.FAILED if error else Outcome.PROCESSED, row, error)
    # A fresh round of attempts, on the usual path.
    row.status, row.attempts, row.next_attempt_at = _Status.PENDING, 0, timezone.now()
    row.lease_expires_at = fresh.lease_expires_at
    row.save(using=using, update_fields=("status", "attempts", "next_attempt_at", "lease_expires_at"))
    _queue(source, row, using)
    return Received(Outcome.QUEUED, row)


def _error_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text if len(text) <= _MAX_ERROR_CHARS else "…" + text[-_MAX_ERROR_CHARS:]


def _run_handlers(
    row: InboundWebhook, payload: Any, using: str, *, retry: bool, optimistic: bool = False
) -> BaseException | None:
    """Send ``webhook_received`` for ``row`` in a savepoint and record how it went; the error, if any.

    ``optimistic``: the row was just inserted as processed, so success writes nothing more.
    """
    now = timezone.now()
    stored_processed_at = row.processed_at
    if optimistic:
        # Stored as processed already; handlers see it as in every mode: being handled.
        row.status, row.processed_at = _Status.PENDING, None
    else:
        row.attempts += 1
    try:
        with transaction.atomic(using=using):
            signals.webhook_received.send(
                sender=InboundWebhook,
                source=row.source,
                event_type=row.event_type,
                payload=payload,
                webhook=row,
            )
    except Exception as exc:
        logger.exception(
            "handling webhook %s from %r (%s) failed, attempt %d",
            row.webhook_id,
            row.source,
            row.event_type,
            row.attempts,
        )
        delay = _policy().next_delay(row.attempts) if retry else None
        row.status = _Status.PENDING if delay is not None else _Status.FAILED
        row.next_attempt_at = now + delay if delay is not None else None
        row.last_error = _error_text(exc)
        row.processed_at = None
        row.lease_expires_at = None
        row.save(
            using=using,
            update_fields=(
                "status",
                "attempts",
                "next_attempt_at",
                "last_error",
                "processed_at",
                "lease_expires_at",
            ),
        )
        return exc
    if optimistic:
        row.status, row.processed_at = _Status.PROCESSED, stored_processed_at
    else:
        row.status, row.processed_at, row.last_error = _Status.PROCESSED, now, ""
        row.next_attempt_at = row.lease_expires_at = None
        row.save(
            using=using,
            update_fields=(
                "status",
                "attempts",
                "processed_at",
                "last_error",
                "next_attempt_at",
                "lease_expires_at",
            ),
        )
    return None


def process(webhook_id: int, *, using: str | None = None) -> BaseException | None:
    """Handle one stored, pending webhook now (after commit, or for the worker); the error, if any.

    The row is locked while its handlers run, so if two processors reach it (a lease ran
    out mid-way) the second sees it handled and does nothing.
    """
    using = using or _db()
    with transaction.atomic(using=using):
        # Due, re-checked under the lock: a processor that waited for it must not run a
        # webhook that the one before it just failed and put off until later.
        row = (
            InboundWebhook.objects.using(using)
            .select_for_update()
            .filter(pk=webhook_id, status=_Status.PENDING, next_attempt_at__lte=timezone.now())
            .first()
        )
        if row is None:
            return None
        return _run_handlers(row, row.payload, using, retry=True)


def reprocess(webhook_ids: Sequence[int], *, using: str | None = None) -> dict[int, BaseException | None]:
    """Handle webhooks now whatever their status (the admin's "reprocess"); each id's error, if any.

    A failure here is recorded as failed, without automatic retries: whoever asked sees it.
    """
    using = using or _db()
    errors: dict[int, BaseException | None] = {}
    for webhook_id in webhook_ids:
        with transaction.atomic(using=using):
            row = InboundWebhook.objects.using(using).select_for_update().filter(pk=webhook_id).first()
            if row is None:
                continue
            errors[webhook_id] = _run_handlers(row, row.payload, using, retry=False)
    return errors


def claim_due(*, limit: int, using: str | None = None, now: dt.datetime | None = None) -> list[int]:
    """Lease up to ``limit`` due pending webhooks, oldest due first; their ids.

    ``skip_locked`` keeps concurrent workers apart on PostgreSQL; SQLite runs one worker.
    """
    using = using or _db()
    now = now or timezone.now()
    with transaction.atomic(using=using):
        ids = list(
            InboundWebhook.objects.using(using)
            .due(now)
            .order_by("next_attempt_at", "id")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        if ids:
            InboundWebhook.objects.using(using).filter(pk__in=ids).update(lease_expires_at=now + _lease())
    return ids


def process_due(*, limit: int = 100, using: str | None = None) -> int:
    """Claim and handle up to ``limit`` due webhooks, one transaction each; how many were claimed."""
    ids = claim_due(limit=limit, using=using)
    for webhook_id in ids:
        process(webhook_id, using=using)
    return len(ids)


def prune(before: dt.datetime, *, using: str | None = None, dry_run: bool = False, chunk: int = 5000) -> int:
    """Delete received webhooks that finished (processed, failed or ignored) before ``before``.

    Pending ones are never pruned. A pruned id is forgotten: the same id arriving again
    would be handled again, which a sender's timestamp tolerance keeps from happening by
    replay (keep retention far longer than the tolerance and any sender's retry window).
    """
    using = using or _db()
    finished = (
        InboundWebhook.objects.using(using).exclude(status=_Status.PENDING).filter(received_at__lt=before)
    )
    if dry_run:
        return finished.count()
    deleted = 0
    while ids := list(finished.values_list("pk", flat=True)[:chunk]):
        with transaction.atomic(using=using):
            InboundWebhook.objects.using(using).filter(pk__in=ids).delete()
        deleted += len(ids)
    return deleted


def decode(body: bytes) -> tuple[str, Any]:
    """The body as text and as JSON; ValueError when it is not UTF-8 JSON (NaN/Infinity refused)."""
    text = body.decode("utf-8")
    try:
        return text, json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _finite(text: str) -> float:
    # 1e999 would become inf: the same non-JSON value as "Infinity", by another spelling.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond the range of a number")
    return value


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and PostgreSQL's jsonb would refuse them later.
    raise ValueError(f"{name} is not valid JSON")
