"""The hookpost demo: library changes become signed webhooks that a local receiver verifies.

Run with ``make demo``. On a throwaway SQLite database it subscribes an endpoint
on a receiver started here (127.0.0.1), changes books and authors (one delete, a
queryset delete, a cascade, and a transaction that rolls back), runs the worker,
and prints what arrived, each request checked with the reference
``standardwebhooks`` package. Then a second receiver fails twice and the retry
gets through.
"""

import json
import os
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent / "src")]
workdir = tempfile.mkdtemp(prefix="hookpost-demo-")
os.environ["HOOKPOST_DB"] = "sqlite"
os.environ["HOOKPOST_SQLITE_PATH"] = str(Path(workdir) / "demo.sqlite3")
os.environ["HOOKPOST_DEMO"] = "1"  # settings: allow http to 127.0.0.1, quiet logs
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from standardwebhooks.webhooks import Webhook, WebhookVerificationError  # noqa: E402

from hookpost.models import Attempt, Delivery, Endpoint  # noqa: E402
from hookpost.worker import Worker  # noqa: E402
from library.models import Author, Book, Tag  # noqa: E402
from library.signals import book_borrowed  # noqa: E402

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""


class DemoReceiver:
    """A webhook receiver on 127.0.0.1 that verifies each request with ``standardwebhooks``."""

    def __init__(self, name: str, fail_first: int = 0) -> None:
        self.name = name
        self.secret = ""
        self.fail_first = fail_first
        self.arrived: list[tuple[str, str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver.answer(headers, body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        try:
            payload = Webhook(self.secret).verify(body, headers)
            verdict = f"{GREEN}signature verified{RESET}"
        except WebhookVerificationError as exc:
            payload, verdict = json.loads(body), f"{RED}REJECTED: {exc}{RESET}"
        if self.fail_first > 0:
            self.fail_first -= 1
            status = 503
        else:
            status = 200
        origin = payload.get("origin")
        how = ""
        if origin:
            how = f" (cascade from {origin['model']} {origin['pk']})" if origin["cascade"] else " (direct)"
        label = f"{payload['type']} pk={payload['data'].get('pk', '-')}{how}"
        self.arrived.append((headers["webhook-id"], label, f"{verdict} → answered {status}"))
        return status


def step(text: str) -> None:
    print(f"\n{BOLD}▸ {text}{RESET}")


def main() -> int:
    step(f"A fresh SQLite database in {workdir}")
    call_command("migrate", verbosity=0)

    receiver = DemoReceiver("partner")
    step(f"A receiver listening on {receiver.url}; subscribing it to every library event")
    endpoint = Endpoint.objects.create(url=receiver.url, event_types=["library.*"])
    receiver.secret = endpoint.signing_secrets()[0]
    print(f"  signing secret {receiver.secret[:12]}… (shown once; the receiver keeps it)")

    step("Changing the library")
    le_guin = Author.objects.create(name="Ursula K. Le Guin")
    fantasy = Tag.objects.create(name="fantasy")
    books = [
        Book.objects.create(title=title, author=le_guin, price="9.99")
        for title in ("A Wizard of Earthsea", "The Tombs of Atuan", "The Farthest Shore")
    ]
    books[0].tags.add(fantasy)
    print("  created an author, a tag and three books")
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
        print("  created an author in a transaction that rolled back (nothing must arrive)")
    le_guin.delete()
    print("  deleted the author; her remaining book goes with her (cascade)")

    step("Running the worker until nothing is due (manage.py hookpost_worker --burst)")
    stats = Worker(poll_interval=0.05).run(burst=True)
    print(f"  {stats.line()}")

    step("What arrived at the receiver")
    for msg_id, event_type, verdict in receiver.arrived:
        print(f"  {msg_id}  {event_type:<54} {verdict}")
    assert not any("Never committed" in str(a) for a in receiver.arrived)
    deletes = [a for a in receiver.arrived if a[1].startswith("library.book.deleted")]
    print(
        f"  {len(receiver.arrived)} webhooks, {len(deletes)} of them book deletes; "
        "the rolled-back author sent nothing"
    )

    step("A receiver that fails twice (503), then recovers")
    flaky = DemoReceiver("flaky", fail_first=2)
    flaky_endpoint = Endpoint.objects.create(
        url=flaky.url, event_types=["library.author.*"], retry_schedule=[0, "1s", "1s"]
    )
    flaky.secret = flaky_endpoint.signing_secrets()[0]
    Author.objects.create(name="Octavia E. Butler")
    Worker(poll_interval=0.05).run(burst=True)
    for _ in range(2):  # each retry waits a second: run the worker again when it is due
        threading.Event().wait(1.3)
        Worker(poll_interval=0.05).run(burst=True)
    delivery = Delivery.objects.get(endpoint=flaky_endpoint)
    for attempt in Attempt.objects.filter(delivery=delivery).order_by("number"):
        print(
            f"  attempt {attempt.number}: HTTP {attempt.status_code} in {attempt.duration_ms} ms"
            f" → {attempt.verdict}"
        )
    print(
        f"  delivery {delivery.status}; the same webhook-id every time: "
        f"{len({a[0] for a in flaky.arrived}) == 1}"
    )

    ok = delivery.status == Delivery.Status.DELIVERED and all(
        "verified" in a[2] for a in receiver.arrived + flaky.arrived
    )
    print(
        f"\n{GREEN if ok else RED}{'Done' if ok else 'Something went wrong'}{RESET}: "
        "every committed change arrived signed and verified, once per endpoint."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
