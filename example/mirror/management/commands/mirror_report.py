"""``inbound_manage.py mirror_report``: what the mirror recorded, and hookpost's inbox behind it."""

import json

from django.core.management.base import BaseCommand

from hookpost.models import InboundWebhook
from mirror.models import RemovedBook


class Command(BaseCommand):
    help = "Print the removed-book log and the received webhooks (inbox rows) with their status."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args, **options):
        removed = list(RemovedBook.objects.values("book_pk", "title", "deleted_with", "webhook_id"))
        inbox = list(
            InboundWebhook.objects.order_by("received_at", "id").values(
                "webhook_id", "event_type", "status", "attempts"
            )
        )
        if options["json"]:
            self.stdout.write(json.dumps({"removed_books": removed, "inbox": inbox}))
            return
        self.stdout.write(f"mirror.RemovedBook: {len(removed)} rows (what the handler recorded)")
        for row in removed:
            how = f"deleted with {row['deleted_with']}" if row["deleted_with"] else "deleted directly"
            title = f'"{row["title"]}"'
            self.stdout.write(f"  book {row['book_pk']:<3} {title:<24} {how:<30} {row['webhook_id']}")
        self.stdout.write(
            f"hookpost.InboundWebhook: {len(inbox)} rows (the inbox: one per webhook-id, however often sent)"
        )
        for row in inbox:
            plural = "" if row["attempts"] == 1 else "s"
            self.stdout.write(
                f"  {row['webhook_id']}  {row['event_type']:<24} {row['status']:<10} "
                f"handled {row['attempts']} time{plural}"
            )
