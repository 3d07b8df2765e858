"""A child process for the fault-injection tests: a worker, a writer, or a migration, on a given database.

Run as ``python _faults_child.py MODE``. The environment says where and how:

- ``FAULTS_DB``: JSON merged into ``DATABASES["default"]`` (``NAME`` at least; ``HOST`` and
  ``PORT`` too for a private PostgreSQL cluster);
- ``FAULTS_HOOKPOST``: JSON merged into the ``HOOKPOST`` settings (timeouts, breaker, jitter);
- ``FAULTS_ARGS``: JSON arguments of the mode.

Modes:

- ``worker``: a real :class:`~hookpost.worker.Worker` (``lease``, ``concurrency``,
  ``batch_size``, ``poll_interval``, ``burst``, ``worker_id``), optionally frozen at a
  *failpoint*: ``after_lease`` (the first leases have committed, by a claim or a fan-out that
  leases what it creates, and nothing is sent) or
  ``before_record`` (requests were answered, their outcomes are not written). At a failpoint
  the worker prints ``FAILPOINT <name> <delivery ids>`` and blocks that thread, so the test
  can look at the database and kill it with SIGKILL exactly there. Operational signals are
  printed as ``SIGNAL <name> <json>``; on a clean exit, ``PEAK_RSS_KB <n>``.
  ``broken_receiver`` names a hookpost signal to connect a receiver that raises to.
- ``migrate``: ``migrate`` the database.
- ``endpoint``: create an endpoint (``url``, ``event_types``, options); prints its id and secret.
- ``authors``: create ``count`` authors named ``<prefix><n>``, one transaction each or one in all.
- ``commit``: after ``go`` on stdin, create an author named ``name`` and die by SIGKILL at
  ``when``: ``on_commit`` (the first on-commit callback, before any other could run),
  ``after_commit`` (the moment ``atomic`` returns) or ``in_transaction`` (before the commit).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "example"), str(ROOT / "src")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.DATABASES["default"].update(json.loads(os.environ["FAULTS_DB"]))
settings.HOOKPOST = {**settings.HOOKPOST, **json.loads(os.environ.get("FAULTS_HOOKPOST") or "{}")}
django.setup()

ARGS: dict[str, Any] = json.loads(os.environ.get("FAULTS_ARGS") or "{}")


def say(*words: object) -> None:
    print(*words, flush=True)


def die() -> None:
    """SIGKILL this process: no cleanup, no atexit, no on-commit callback after this one."""
    os.kill(os.getpid(), signal.SIGKILL)


def install_failpoint(name: str) -> None:
    from hookpost import outbox

    frozen = threading.Event()  # never set: the thread that reaches the failpoint stays there

    if name == "after_lease":
        real_claim, real_fan_out = outbox.claim, outbox.fan_out_and_lease

        def claim(**kwargs: Any) -> list[outbox.Claim]:
            return frozen_after(real_claim(**kwargs))

        def fan_out_and_lease(**kwargs: Any) -> outbox.FannedOut:
            done = real_fan_out(**kwargs)
            frozen_after(done.claims)
            return done

        def frozen_after(claims: list[outbox.Claim]) -> list[outbox.Claim]:
            # A worker leases one way at a time: with this thread frozen, no other leases.
            if claims:
                say("FAILPOINT after_lease", *(c.delivery.id for c in claims))
                frozen.wait()
            return claims

        outbox.claim = claim  # type: ignore[assignment]
        outbox.fan_out_and_lease = fan_out_and_lease  # type: ignore[assignment]
    elif name == "before_record":
        real_record = outbox.record_results

        def record_results(results: Any, **kwargs: Any) -> None:
            say("FAILPOINT before_record", *(r.delivery_id for r in results))
            frozen.wait()
            real_record(results, **kwargs)

        outbox.record_results = record_results  # type: ignore[assignment]
    elif name:
        raise SystemExit(f"unknown failpoint {name!r}")


def print_signals() -> None:
    from hookpost import signals

    for name in ("endpoint_recovered", "endpoint_disabled", "delivery_exhausted"):

        def show(sender: object, _name: str = name, **kwargs: Any) -> None:
            kwargs.pop("signal", None)
            say("SIGNAL", _name, json.dumps(kwargs, default=str))

        getattr(signals, name).connect(show, weak=False)


def connect_broken_receiver(name: str) -> None:
    """A project's receiver of hookpost signal ``name`` with a bug: it raises."""
    from hookpost import signals

    def broken(**kwargs: Any) -> None:
        raise RuntimeError(f"a bug in the project's own {name} receiver")

    getattr(signals, name).connect(broken, weak=False)


def own_peak_rss_kb() -> int:
    """This process's own peak resident set (``VmHWM``, KiB).

    Not ``ru_maxrss``: Linux carries that over from the parent through fork and exec, so
    a worker started by a soak-sized test process reported the test process's 740 MB.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_worker() -> None:
    import datetime as dt

    from hookpost.worker import Worker

    install_failpoint(ARGS.get("failpoint", ""))
    print_signals()
    if ARGS.get("broken_receiver"):
        connect_broken_receiver(ARGS["broken_receiver"])
    worker = Worker(
        worker_id=ARGS.get("worker_id"),
        lease=dt.timedelta(seconds=float(ARGS.get("lease", 60))),
        poll_interval=float(ARGS.get("poll_interval", 0.05)),
        concurrency=int(ARGS.get("concurrency", 20)),
        batch_size=int(ARGS.get("batch_size", 100)),
    )
    say("WORKER", worker.worker_id)
    stats = worker.run(burst=bool(ARGS.get("burst")), handle_signals=True)
    say("STATS", stats.line())
    say("PEAK_RSS_KB", own_peak_rss_kb())


def create_endpoint() -> None:
    from hookpost.models import Endpoint

    endpoint = Endpoint.objects.create(**ARGS)
    say("ENDPOINT", json.dumps({"id": endpoint.id, "secret": endpoint.signing_secrets()[0]}))


def create_authors() -> None:
    from django.db import transaction

    from library.models import Author

    prefix, count = ARGS.get("prefix", "author-"), int(ARGS["count"])
    if ARGS.get("one_transaction"):
        with transaction.atomic():
            for n in range(count):
                Author.objects.create(name=f"{prefix}{n}")
    else:
        for n in range(count):
            Author.objects.create(name=f"{prefix}{n}")
    say("CREATED", count)


def commit_and_die() -> None:
    from django.db import connection, transaction

    from library.models import Author

    when = ARGS["when"]
    connection.ensure_connection()  # connected before "go", so the commit follows at once
    say("READY")
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go'")
    with transaction.atomic():
        if when == "on_commit":
            # Registered before the change, so it runs first once the commit is durable:
            # no callback registered later (a runner's, a notification) gets to run.
            transaction.on_commit(die)
        Author.objects.create(name=ARGS["name"])
        if when == "in_transaction":
            die()
    if when == "after_commit":
        die()
    raise SystemExit(f"still alive after {when!r}")


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    say("MIGRATED")


MODES = {
    "worker": run_worker,
    "migrate": migrate,
    "endpoint": create_endpoint,
    "authors": create_authors,
    "commit": commit_and_die,
}

if __name__ == "__main__":
    MODES[sys.argv[1]]()
