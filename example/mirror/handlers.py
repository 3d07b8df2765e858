"""Handlers of the library's webhooks, connected when the mirror app is ready.

Each handler runs inside the transaction that stores the webhook in hookpost's inbox:
if it raises, its writes are rolled back and the sender is answered 500 (it retries).
A webhook-id seen before is answered 200 "duplicate" and handled no second time.
"""

from django.db import transaction
from django.utils.dateparse import parse_datetime

from hookpost.receiver import on_webhook
from mirror.models import RemovedBook


def say(line):
    # Printed once the work is committed, so a rolled-back attempt says nothing.
    transaction.on_commit(lambda: print(f"mirror: {line}", flush=True))


@on_webhook("library.book.deleted", source="library")
def record_removed_book(*, payload, webhook, **kwargs):
    data = payload["data"]  # {"model": "library.book", "pk": 7, "fields": {"title": …, …}}
    title = data["fields"]["title"]
    origin = payload.get("origin") or {}
    deleted_with = ""
    if origin.get("cascade"):
        # The delete that took the book along: one row ("library.author 7") or a queryset.
        pk = origin.get("pk")
        deleted_with = f"{origin['model']} {pk}" if pk is not None else f"a {origin['model']} queryset"
    RemovedBook.objects.create(
        book_pk=data["pk"],
        title=title,
        deleted_with=deleted_with,
        webhook_id=webhook.webhook_id,
        removed_at=parse_datetime(payload["timestamp"]),
    )
    how = f", deleted with {deleted_with}" if deleted_with else ""
    say(f'recorded removed book {data["pk"]} "{title}"{how} (webhook {webhook.webhook_id})')


@on_webhook("library.author.*", source="library")
def note_author_change(*, event_type, payload, **kwargs):
    data = payload["data"]
    say(f'{event_type}: author {data["pk"]} "{data["fields"]["name"]}"')
