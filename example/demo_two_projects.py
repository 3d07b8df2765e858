"""The two-project demo: the library's deletes reach a second Django project, the mirror.

Run with ``make demo`` (after demo.py). Both projects get throwaway SQLite databases
in a temporary directory.

- The mirror (``example/inbound_site`` with the app ``example/mirror``) runs as a real
  HTTP server in its own process and mounts hookpost's receiver at
  ``/webhooks/<source>/``. Its handlers (``mirror/handlers.py``) log deleted books.
- The library (``example/example``, the sender) runs here: it subscribes the mirror,
  deletes a book and an author (whose books go with her), and runs the worker.

The mirror verifies each webhook, stores it once in its inbox and runs its handlers.
Then one delivery is replayed: the same webhook-id arrives again, the mirror answers
200 "duplicate" and its handler does not run a second time.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent / "src")]
workdir = tempfile.mkdtemp(prefix="hookpost-two-projects-")
os.environ["HOOKPOST_DB"] = "sqlite"
os.environ["HOOKPOST_SQLITE_PATH"] = str(Path(workdir) / "library.sqlite3")
os.environ["HOOKPOST_DEMO"] = "1"  # settings: allow http to 127.0.0.1, quiet logs
# This process is the library; the mirror's processes get their own settings module.
os.environ["DJANGO_SETTINGS_MODULE"] = "example.settings"

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402

from hookpost.models import Delivery, Endpoint  # noqa: E402
from hookpost.worker import Worker  # noqa: E402
from library.models import Author, Book  # noqa: E402

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""

HANDLER_LINE = "mirror: recorded removed book"
STARTUP_TIMEOUT = 30.0


class DemoFailure(Exception):
    """Something did not happen as the demo expects; the message says what."""


class Mirror:
    """The receiving project in subprocesses: its manage.py commands and its HTTP server."""

    def __init__(self, directory: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
        self.env.update(
            DJANGO_SETTINGS_MODULE="inbound_site.settings",
            MIRROR_SQLITE_PATH=str(Path(directory) / "mirror.sqlite3"),
            PYTHONUNBUFFERED="1",
        )
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.base_url = ""

    def manage(self, *args: str) -> str:
        """Run ``example/inbound_manage.py ARGS`` and return its output."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "inbound_manage.py"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise DemoFailure(f"inbound_manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def report(self) -> dict[str, list[dict[str, object]]]:
        """The mirror's removed-book log and inbox rows, read from its database."""
        data: dict[str, list[dict[str, object]]] = json.loads(self.manage("mirror_report", "--json"))
        return data

    def start(self, secret: str) -> None:
        """Start ``example/inbound_serve.py`` with the library's secret; wait until it answers."""
        self.env["MIRROR_LIBRARY_SECRET"] = secret
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "inbound_serve.py")],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        first = self.wait_for(lambda lines: bool(lines), STARTUP_TIMEOUT, "the mirror to start")
        if not first[0].startswith("listening on "):
            raise DemoFailure("the mirror did not start:\n" + "\n".join(first))
        self.base_url = first[0].removeprefix("listening on ")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                probe = urllib.request.Request(self.url("library"), method="HEAD")
                with urllib.request.urlopen(probe, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise DemoFailure(f"the mirror does not answer at {self.url('library')}: {exc}") from exc
            time.sleep(0.1)

    def url(self, source: str) -> str:
        return f"{self.base_url}webhooks/{source}/"

    def _read(self, process: "subprocess.Popen[str]") -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, done: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
        """Wait until ``done(lines)`` holds for the server's output; its lines so far."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(self.lines):
                left = deadline - time.monotonic()
                exited = self.process is not None and self.process.poll() is not None
                if left <= 0 or exited:
                    output = "\n".join(self.lines) or "(nothing)"
                    why = "it exited" if exited else f"after {timeout:.0f} s"
                    raise DemoFailure(f"waited for {what}, in vain ({why}); the mirror printed:\n{output}")
                self.changed.wait(min(left, 0.2))
            return list(self.lines)

    def handler_lines(self) -> list[str]:
        with self.changed:
            return [line for line in self.lines if line.startswith(HANDLER_LINE)]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def step(text: str) -> None:
    print(f"\n{BOLD}▸ {text}{RESET}")


def check(ok: bool, problem: str) -> None:
    if not ok:
        raise DemoFailure(problem)


def show_mirror_lines(lines: list[str]) -> None:
    for line in lines:
        print(f"  {DIM}mirror process │{RESET} {line}")


def run(mirror: Mirror) -> None:
    step(f"Two projects, two throwaway SQLite databases in {workdir}")
    call_command("migrate", verbosity=0)
    print("  library (the sender, example/example): migrated")
    mirror.manage("migrate", "--verbosity", "0")
    print("  mirror (the receiver, example/inbound_site + app example/mirror): migrated")

    step("Starting the mirror as a real HTTP server and subscribing it to every library event")
    endpoint = Endpoint(event_types=["library.*"], description="the mirror project")
    secret = endpoint.add_secret()
    mirror.start(secret)
    endpoint.url = mirror.url("library")
    endpoint.save()
    print(f"  the mirror listens on {mirror.base_url} in its own process (example/inbound_serve.py)")
    print(f"  the library's endpoint: {endpoint.url}")
    print(
        f"  its signing secret {secret[:12]}… is the mirror's "
        "HOOKPOST['RECEIVER_SOURCES']['library']['secrets'] (env MIRROR_LIBRARY_SECRET)"
    )

    step("Changing the library")
    le_guin = Author.objects.create(name="Ursula K. Le Guin")
    books = [
        Book.objects.create(title=title, author=le_guin, price="9.99")
        for title in ("A Wizard of Earthsea", "The Tombs of Atuan", "The Farthest Shore")
    ]
    removed = {book.pk: book.title for book in books}
    tombs_pk = books[1].pk
    print("  created an author and three books")
    books[1].delete()
    print(f'  deleted the book "The Tombs of Atuan" (pk {tombs_pk})')
    le_guin.delete()
    print("  deleted the author; her two other books go with her (cascade)")

    step("Running the library's worker until nothing is due (manage.py hookpost_worker --burst)")
    # One request at a time, so the mirror's lines below come in the order things happened.
    stats = Worker(concurrency=1, poll_interval=0.05).run(burst=True)
    print(f"  {stats.line()}")
    originals = list(Delivery.objects.filter(replay_of=None).select_related("event").order_by("id"))
    for delivery in originals:
        attempt = delivery.attempts.order_by("-number").first()
        answer = (
            f"mirror answered HTTP {attempt.status_code} {attempt.response_body}" if attempt else "not sent"
        )
        print(f"  {delivery.event.id}  {delivery.event.type:<24} {delivery.status:<10} {answer}")
    undelivered = [d for d in originals if d.status != Delivery.Status.DELIVERED]
    check(
        bool(originals) and not undelivered,
        f"{len(undelivered)} of {len(originals)} webhooks were not delivered to the mirror "
        "(see the answers above)",
    )

    step("What the mirror's handlers printed, in the mirror's process")
    lines = mirror.wait_for(
        lambda lines: sum(line.startswith(HANDLER_LINE) for line in lines) >= len(removed),
        10,
        f"{len(removed)} '{HANDLER_LINE}' lines",
    )
    show_mirror_lines(lines[1:])

    step("What the mirror stored (python example/inbound_manage.py mirror_report)")
    print("\n".join(f"  {line}" for line in mirror.manage("mirror_report").splitlines()))
    report = mirror.report()
    recorded = Counter(row["book_pk"] for row in report["removed_books"])
    check(
        recorded == Counter(removed.keys()),
        f"the mirror should have recorded books {sorted(removed)} once each, not {dict(recorded)}",
    )
    not_processed = [row for row in report["inbox"] if row["status"] != "processed"]
    check(
        len(report["inbox"]) == len(originals) and not not_processed,
        f"the mirror's inbox should hold {len(originals)} processed webhooks: {report['inbox']}",
    )

    step("Replaying one delivery: the same webhook arrives a second time")
    original = next(
        d
        for d in originals
        if d.event.type == "library.book.deleted" and json.loads(d.event.payload)["data"]["pk"] == tombs_pk
    )
    out = StringIO()
    call_command("hookpost_replay", "--delivery", str(original.pk), stdout=out)
    print(f"  $ python example/manage.py hookpost_replay --delivery {original.pk}")
    print(f"  {out.getvalue().strip()}")
    handled_before = len(mirror.handler_lines())
    Worker(concurrency=1, poll_interval=0.05).run(burst=True)
    replayed = Delivery.objects.filter(replay_of=original).first()
    attempt = replayed.attempts.order_by("-number").first() if replayed else None
    check(
        replayed is not None and attempt is not None,
        f"the replay of delivery {original.pk} was not sent",
    )
    print(
        f"  {original.event.id}  {original.event.type:<24} {replayed.status:<10} "
        f"mirror answered HTTP {attempt.status_code} {attempt.response_body}"
    )
    try:
        answer = json.loads(attempt.response_body)
    except ValueError:
        answer = None
    check(
        attempt.status_code == 200 and answer == {"status": "duplicate"},
        f'the mirror should answer the replay 200 {{"status": "duplicate"}}, not '
        f"{attempt.status_code} {attempt.response_body!r}",
    )
    time.sleep(0.3)  # Give a wrongly repeated handler the time to print.
    report = mirror.report()
    again = [row for row in report["removed_books"] if row["book_pk"] == tombs_pk]
    inbox_row = next(row for row in report["inbox"] if row["webhook_id"] == original.event.id)
    check(
        len(mirror.handler_lines()) == handled_before and len(again) == 1 and inbox_row["attempts"] == 1,
        f"the mirror's handler ran again for the replayed webhook {original.event.id}",
    )
    print(
        f'  the mirror answered 200 "duplicate"; its handler ran once (still {len(again)} row for book '
        f"{tombs_pk}, inbox row handled {inbox_row['attempts']} time, no new line from the mirror)"
    )


def main() -> int:
    mirror = Mirror(workdir)
    try:
        run(mirror)
    except DemoFailure as exc:
        print(f"\n{RED}Something went wrong{RESET}: {exc}")
        printed = mirror.lines[1:]
        if printed and "the mirror printed" not in str(exc):
            print("The mirror printed:")
            show_mirror_lines(printed)
        return 1
    finally:
        mirror.stop()
        connections.close_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{GREEN}Done{RESET}: two Django projects, one sending and one receiving; "
        "every webhook verified, stored once and handled once."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
