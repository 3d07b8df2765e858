"""``manage.py hookpost_prune``: delete what finished before the retention period, sent and received."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from hookpost import inbox, outbox
from hookpost.conf import hookpost_settings
from hookpost.management.commands._options import argument_type, positive_int

# A usage error, not a traceback, on the command line for a bad number.
_count = argument_type(positive_int)


class Command(BaseCommand):
    """Prune the attempt log and finished work older than the retention period."""

    help = (
        "Delete attempts, finished deliveries, bare events and handled received webhooks older than "
        "--days (RETENTION_DAYS)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the options."""
        parser.add_argument("--days", type=_count, default=None, help="Keep this many days.")
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")
        parser.add_argument("--database", default="default")

    def handle(self, *args: Any, **options: Any) -> None:
        """Prune, or count with ``--dry-run``; pending work is never touched."""
        days = options["days"] or hookpost_settings.RETENTION_DAYS
        before = timezone.now() - dt.timedelta(days=days)
        counts = outbox.prune(before, using=options["database"], dry_run=options["dry_run"])
        counts["received webhooks"] = inbox.prune(
            before, using=options["database"], dry_run=options["dry_run"]
        )
        verb = "would delete" if options["dry_run"] else "deleted"
        summary = ", ".join(f"{n} {name}" for name, n in counts.items())
        self.stdout.write(f"{verb} {summary} older than {before.isoformat()}")
