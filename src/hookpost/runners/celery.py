"""The Celery runner: a commit that wrote events or stored received webhooks sends a task to drain them.

Install the ``celery`` extra and set ``HOOKPOST["RUNNER"] = "celery"``; the tasks use
the project's current Celery app (the usual ``proj/celery.py`` one). The database
stays the source of truth and Celery only carries wake-ups: ``hookpost.deliver``
and ``hookpost.sweep`` both run ``Worker(...).run(burst=True)``, which fans out,
claims, sends and records whatever is due, and handles received webhooks stored
for the worker (sources in ``worker`` mode), so a lost or unsent message only delays
work until the next sweep. Schedule the sweep with celery beat,
``CELERY_BEAT_SCHEDULE = beat_schedule(30)`` (this module loads no models, so
settings may import it); the sweep also sends retries once they are due, so its
period bounds how late a retry can be. A send that fails is logged and left to the
sweep, but it runs in the committing thread: bound how long it may block with
Celery's ``task_publish_retry_policy`` and, on Redis,
``broker_transport_options={"socket_connect_timeout": ...}`` (unbounded by default).

Concurrency: on PostgreSQL any number of Celery worker processes, and tasks at once,
are safe: claims lock rows with ``skip_locked``, so each delivery goes to one task.
SQLite has no row locks: run a single Celery worker with ``--concurrency 1`` (or
``--pool solo``) for these tasks, e.g. on their own queue via ``task_routes``. The
tasks run an asyncio loop, so use the prefork or solo pool, not gevent or eventlet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import shared_task  # type: ignore[import-untyped]
from django.db import connections, transaction

from hookpost import signals
from hookpost.conf import hookpost_settings

if TYPE_CHECKING:
    from hookpost.worker import WorkerStats

__all__ = ["beat_schedule", "deliver", "sweep"]

logger = logging.getLogger("hookpost.runners.celery")

DELIVER = "hookpost.deliver"
SWEEP = "hookpost.sweep"


def _drain(using: str) -> dict[str, int]:
    # Imported here, not at the top: the worker loads models, and settings import this module.
    from hookpost.worker import Worker

    stats: WorkerStats = Worker(using=using).run(burst=True)
    return {
        "fanned_out": stats.fanned_out,
        "sent": stats.sent,
        "delivered": stats.delivered,
        "failed": stats.failed,
        "handled": stats.handled,
    }


@shared_task(name=DELIVER)  # type: ignore[untyped-decorator]
def deliver(using: str = "default") -> dict[str, int]:
    """Fan out, send and record everything due on ``using``, then return the run's counts."""
    return _drain(using)


@shared_task(name=SWEEP)  # type: ignore[untyped-decorator]
def sweep(using: str = "default") -> dict[str, int]:
    """The same drain, run periodically by celery beat: it catches lost messages and due retries."""
    return _drain(using)


def beat_schedule(seconds: float = 30, *, using: str = "default") -> dict[str, dict[str, Any]]:
    """A ``CELERY_BEAT_SCHEDULE`` fragment running ``hookpost.sweep`` every ``seconds``."""
    return {
        SWEEP if using == "default" else f"{SWEEP}:{using}": {
            "task": SWEEP,
            "schedule": seconds,
            "kwargs": {"using": using},
            # A sweep that waited longer than its period is stale (a newer one is queued):
            # dropping it keeps a backlog of sweeps from piling up while workers are down.
            "options": {"expires": seconds},
        }
    }


def _send(using: str) -> None:
    try:
        deliver.apply_async(kwargs={"using": using})
    except Exception as exc:
        # The commit already happened and the events are safe in the database: a broken
        # broker must not turn into an error in the user's request. The sweep sends them.
        logger.warning(
            "could not send %s for %r (%s: %s); the next %s delivers these events",
            DELIVER,
            using,
            type(exc).__name__,
            exc,
            SWEEP,
        )


# One callback per alias, so a transaction can tell whether it already holds ours.
_senders: dict[str, Callable[[], None]] = {}


def _sender(using: str) -> Callable[[], None]:
    sender = _senders.get(using)
    if sender is None:

        def send_deliver() -> None:
            _send(using)

        # setdefault: concurrent first calls agree on one function object.
        sender = _senders.setdefault(using, send_deliver)
    return sender


def _on_events_recorded(sender: object, *, using: str, **kwargs: Any) -> None:
    """After the transaction that wrote events or webhooks commits, send ``hookpost.deliver`` (once)."""
    # Read at send time, so override_settings works and the receiver costs nothing otherwise.
    if hookpost_settings.RUNNER != "celery":
        return
    callback = _sender(using)
    connection = connections[using]
    # Without this, a transaction writing 10,000 events one by one would send 10,000 tasks.
    # Django drops callbacks of a rolled-back savepoint from run_on_commit, so finding ours
    # there means it will run at this commit.
    if connection.in_atomic_block and any(entry[1] is callback for entry in connection.run_on_commit):
        return
    # robust: a second net under _send's own, so nothing here can fail the commit.
    transaction.on_commit(callback, using=using, robust=True)


signals.events_recorded.connect(_on_events_recorded, dispatch_uid="hookpost.runners.celery")
# A webhook received for the worker is work for the same drain.
signals.webhooks_stored.connect(_on_events_recorded, dispatch_uid="hookpost.runners.celery.inbox")
