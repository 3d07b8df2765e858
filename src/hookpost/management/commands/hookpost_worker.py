"""``manage.py hookpost_worker``: run the delivery worker (a thin shell around ``Worker``)."""

from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from hookpost.management.commands._options import argument_type, positive_int
from hookpost.worker import Worker, WorkerStats

# A usage error, not a traceback, on the command line for a bad number.
_count = argument_type(positive_int)


class Command(BaseCommand):
    """Deliver webhooks until stopped; ``--burst`` drains what is due and exits."""

    help = "Deliver webhooks: fan out committed events, send due deliveries, retry failures."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the options."""
        parser.add_argument("--burst", action="store_true", help="Exit once nothing is due.")
        parser.add_argument("--concurrency", type=_count, default=50, help="Requests in flight at once (50).")
        parser.add_argument(
            "--batch-size", type=_count, default=200, help="Deliveries claimed per query (200)."
        )
        parser.add_argument("--worker-id", default=None, help="Name in lease columns and logs.")
        parser.add_argument("--database", default="default", help="Database alias (default).")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the worker; SIGTERM finishes requests in flight, a second signal exits at once."""
        if options["database"] not in connections:
            from django.core.management.base import CommandError

            raise CommandError(
                f"unknown database {options['database']!r}; settings.DATABASES has {', '.join(connections)}"
            )
        live = sys.stdout.isatty() and options["verbosity"] >= 1
        worker = Worker(
            using=options["database"],
            worker_id=options["worker_id"],
            concurrency=options["concurrency"],
            batch_size=options["batch_size"],
            on_progress=_ProgressLine(self.stdout.write) if live else None,
        )
        stats = worker.run(burst=options["burst"], handle_signals=True)
        if live:
            self.stdout.write("")
        if options["verbosity"] >= 1:
            self.stdout.write(f"worker {worker.worker_id}: {stats.line()}")


class _ProgressLine:
    """Rewrites one terminal line with the worker's counts, at most five times a second."""

    def __init__(self, write: Any) -> None:
        self.write = write
        self.last = 0.0

    def __call__(self, stats: WorkerStats) -> None:
        now = time.monotonic()
        if now - self.last >= 0.2:
            self.last = now
            self.write(f"\r\033[K{stats.line()}", ending="")
