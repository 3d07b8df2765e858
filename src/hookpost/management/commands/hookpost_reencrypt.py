"""``manage.py hookpost_reencrypt``: seal every stored secret again with the first encryption key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from hookpost import crypto
from hookpost.exceptions import ConfigurationError
from hookpost.models import Endpoint, Source


class Command(BaseCommand):
    """Re-seal endpoint secrets and source keys, after a new key was put first in ENCRYPTION_KEYS."""

    help = (
        "Seal every endpoint secret and source key again with the first of HOOKPOST['ENCRYPTION_KEYS'] "
        "(plaintext left from before encryption is sealed too). Then older keys can be removed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the options."""
        parser.add_argument("--dry-run", action="store_true", help="Count what would change, write nothing.")
        parser.add_argument("--database", default="default")

    def handle(self, *args: Any, **options: Any) -> None:
        """Re-seal in one transaction, so a failure leaves every row as it was."""
        using, dry_run = options["database"], options["dry_run"]
        endpoints = sources = 0
        try:
            with transaction.atomic(using=using):
                for endpoint in Endpoint.objects.using(using).select_for_update().only("id", "secrets"):
                    for entry in endpoint.secrets:
                        entry["key"] = crypto.reseal(entry["key"])
                    endpoint.save(update_fields=["secrets"])
                    endpoints += 1
                for source in Source.objects.using(using).select_for_update().only("id", "secrets"):
                    source.secrets = crypto.reseal(source.secrets)
                    source.save(update_fields=["secrets"])
                    sources += 1
                if dry_run:
                    transaction.set_rollback(True, using=using)
        except ConfigurationError as exc:
            raise CommandError(
                f"{exc}. Put the key that sealed them back in ENCRYPTION_KEYS (anywhere after the "
                "first), run this again, then remove it."
            ) from exc
        verb = "would re-seal" if dry_run else "re-sealed"
        self.stdout.write(f"{verb} the secrets of {endpoints} endpoints and {sources} sources")
