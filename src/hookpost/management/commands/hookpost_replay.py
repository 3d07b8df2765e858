"""``manage.py hookpost_replay``: send deliveries again, as new deliveries with the same webhook-id."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q

from hookpost import outbox
from hookpost.events import type_matches, validate_type_pattern
from hookpost.management.commands._options import parse_moment
from hookpost.models import Delivery

STATUSES = ("dead", "delivered", "cancelled", "finished")


class Command(BaseCommand):
    """Replay finished deliveries chosen by id, endpoint, event type, status and time."""

    help = (
        "Replay deliveries: each becomes a new delivery of the same event (same webhook-id) "
        "to the same endpoint. Example: hookpost_replay --status dead --since 24h"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the filters."""
        parser.add_argument("--delivery", type=int, action="append", default=[], help="Delivery id.")
        parser.add_argument("--endpoint", type=int, help="Only deliveries to this endpoint id.")
        parser.add_argument("--event-type", help="Only these event types ('*' wildcards).")
        parser.add_argument("--status", choices=STATUSES, default="finished", help="(finished)")
        parser.add_argument("--since", help="Created at or after: ISO datetime or 2h, 7d…")
        parser.add_argument("--until", help="Created before: ISO datetime or 2h, 7d…")
        parser.add_argument("--dry-run", action="store_true", help="Say what would be replayed.")
        parser.add_argument("--database", default="default")

    def handle(self, *args: Any, **options: Any) -> None:
        """Select, then replay (or count, with ``--dry-run``)."""
        if not (options["delivery"] or options["endpoint"] or options["event_type"] or options["since"]):
            raise CommandError(
                "choose what to replay: --delivery ID, --endpoint ID, --event-type or --since "
                "(e.g. --status dead --since 24h)"
            )
        using = options["database"]
        deliveries = Delivery.objects.using(using).exclude(status=Delivery.Status.PENDING)
        if options["status"] != "finished":
            deliveries = deliveries.filter(status=options["status"])
        if options["delivery"]:
            deliveries = deliveries.filter(id__in=options["delivery"])
            missing = set(options["delivery"]) - set(
                Delivery.objects.using(using).filter(id__in=options["delivery"]).values_list("id", flat=True)
            )
            if missing:
                raise CommandError(f"no delivery with id {', '.join(map(str, sorted(missing)))}")
        if options["endpoint"]:
            deliveries = deliveries.filter(endpoint_id=options["endpoint"])
        if options["since"]:
            deliveries = deliveries.filter(created_at__gte=parse_moment(options["since"]))
        if options["until"]:
            deliveries = deliveries.filter(created_at__lt=parse_moment(options["until"]))
        pattern = options["event_type"]
        if pattern:
            try:
                validate_type_pattern(pattern)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            if "*" not in pattern:
                deliveries = deliveries.filter(event__type=pattern)
        # A delivery replayed already is not replayed twice by one selection.
        deliveries = deliveries.filter(Q(replays__isnull=True)).select_related("event")
        chosen = [d for d in deliveries.order_by("id") if not pattern or type_matches(pattern, d.event.type)]
        if options["dry_run"]:
            self.stdout.write(f"would replay {len(chosen)} deliveries")
            return
        created = outbox.replay(chosen, using=using)
        self.stdout.write(f"replayed {len(created)} deliveries")
