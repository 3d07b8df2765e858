"""The only writer of outbox state: events go in here, and (later) delivery transitions live here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, NamedTuple

from hookpost.conf import hookpost_settings
from hookpost.events import new_message_id
from hookpost.models import Event


class EventDraft(NamedTuple):
    """An event ready to be written: everything but its id."""

    type: str
    payload: str
    occurred_at: dt.datetime
    origin: dict[str, Any] | None = None
    error: str = ""


def _to_row(draft: EventDraft) -> Event:
    return Event(
        id=new_message_id(),
        type=draft.type,
        payload=draft.payload,
        occurred_at=draft.occurred_at,
        origin=draft.origin,
        error=draft.error,
    )


def record_event(using: str, draft: EventDraft) -> Event:
    """Insert one event on connection ``using``, inside whatever transaction is open there."""
    event = _to_row(draft)
    event.save(using=using, force_insert=True)
    return event


def record_events(using: str, drafts: Sequence[EventDraft]) -> list[Event]:
    """Insert many events on ``using`` with multi-row INSERTs (one per ``CAPTURE_BATCH_SIZE``)."""
    rows = [_to_row(draft) for draft in drafts]
    return Event.objects.using(using).bulk_create(rows, batch_size=hookpost_settings.CAPTURE_BATCH_SIZE)
