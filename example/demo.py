"""The hookpost demo: library changes become signed Standard Webhooks, on a throwaway SQLite database.

Run with ``make demo``. It migrates a fresh database, subscribes an endpoint,
changes books and authors (one delete, a queryset delete, a cascade, and a
transaction that rolls back), then shows the outbox and the signed request
each event becomes, verified by the reference ``standardwebhooks`` package.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent / "src")]
workdir = tempfile.mkdtemp(prefix="hookpost-demo-")
os.environ["HOOKPOST_DB"] = "sqlite"
os.environ["HOOKPOST_SQLITE_PATH"] = str(Path(workdir) / "demo.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from standardwebhooks.webhooks import Webhook  # noqa: E402

from hookpost.delivery import build_request  # noqa: E402
from hookpost.models import Endpoint, Event  # noqa: E402
from library.models import Author, Book, Tag  # noqa: E402
from library.signals import book_borrowed  # noqa: E402


def step(text: str) -> None:
    print(f"\n\033[1m▸ {text}\033[0m")


def main() -> int:
    step(f"Migrating a fresh SQLite database in {workdir}")
    call_command("migrate", verbosity=0)

    step("Subscribing an endpoint to every library event")
    endpoint = Endpoint.objects.create(url="http://127.0.0.1:8765/hooks", event_types=["library.*"])
    secret = endpoint.signing_secrets()[0]
    print(f"  endpoint {endpoint.url}  secret {secret[:10]}… (shown once, as in production)")

    step("Changing the library")
    le_guin = Author.objects.create(name="Ursula K. Le Guin")
    fantasy = Tag.objects.create(name="fantasy")
    books = [
        Book.objects.create(title=t, author=le_guin, price="9.99")
        for t in ("A Wizard of Earthsea", "The Tombs of Atuan", "The Farthest Shore")
    ]
    books[0].tags.add(fantasy)
    books[0].price = "11.50"
    books[0].save()
    print("  created an author, a tag and three books; repriced one")
    books[1].delete()
    print("  deleted one book")
    Book.objects.filter(title__startswith="The").delete()
    print("  deleted a queryset of books")
    book_borrowed.send(sender=Book, book=books[0], reader="Ged")
    print("  sent the custom signal book_borrowed")
    try:
        with transaction.atomic():
            Author.objects.create(name="Never committed")
            raise RuntimeError("rolled back")
    except RuntimeError:
        print("  created an author inside a transaction that rolled back (no event expected)")
    le_guin.delete()
    print("  deleted the author: her last book goes with her (cascade)")

    step("The outbox: one event per committed change, in the same transactions")
    events = list(Event.objects.order_by("id"))
    for event in events:
        payload = json.loads(event.payload)
        origin = payload.get("origin")
        how = ""
        if origin:
            how = (
                f"  (cascade from {origin['model']} {origin['pk']})" if origin["cascade"] else ("  (direct)")
            )
        print(f"  {event.id}  {event.type:<26} pk={payload['data'].get('pk', '-')}{how}")
    assert not any("Never committed" in e.payload for e in events)

    step("Each event becomes a signed request; the standardwebhooks package verifies it")
    verifier = Webhook(secret)
    for event in events:
        request = build_request(event, endpoint)
        verified = verifier.verify(request.body, request.headers)
        print(
            f"  {request.headers['webhook-id']}  {request.headers['webhook-signature'][:24]}…  "
            f"verified: {verified['type']}"
        )

    print(
        "\nDone: every committed change is in the outbox, signed and verifiable. Sending them over\n"
        "HTTP, with retries, is the worker's job; it arrives with the delivery engine."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
