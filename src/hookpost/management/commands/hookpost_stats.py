"""``manage.py hookpost_stats``: per endpoint outcomes, success rate and request latency over a window."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from hookpost.management.commands._options import argument_type, parse_moment, positive_int, table
from hookpost.models import Endpoint
from hookpost.stats import EndpointStats, endpoint_stats

# Long URLs would push every other column off the screen; --json gives them whole.
_URL_WIDTH = 48


class Command(BaseCommand):
    """Print delivery statistics per endpoint: a table, or JSON for scripts."""

    help = (
        "Per endpoint since --since (24h): deliveries delivered and dead, failed requests, deliveries "
        "pending now, the share of requests answered 2xx, and p50/p95 request latency in ms. "
        "Example: hookpost_stats --since 7d --endpoint 3"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the options."""
        parser.add_argument(
            "--since", default="24h", help="Window start: ISO datetime or a duration back (24h)."
        )
        parser.add_argument(
            "--endpoint",
            dest="endpoints",
            type=argument_type(positive_int),
            action="append",
            default=[],
            metavar="ID",
            help="Only this endpoint, shown even without activity (repeat for more).",
        )
        parser.add_argument("--json", action="store_true", help="Print JSON, for scripts.")
        parser.add_argument("--database", default="default", help="Database alias (default).")

    def handle(self, *args: Any, **options: Any) -> None:
        """Compute the statistics and print them."""
        using = options["database"]
        if using not in connections:
            raise CommandError(f"unknown database {using!r}; settings.DATABASES has {', '.join(connections)}")
        since = parse_moment(options["since"])
        wanted: list[int] = options["endpoints"]
        if wanted:
            missing = set(wanted) - set(
                Endpoint.objects.using(using).filter(id__in=wanted).values_list("id", flat=True)
            )
            if missing:
                raise CommandError(
                    f"no endpoint with id {', '.join(map(str, sorted(missing)))}; "
                    "`hookpost_endpoint list` shows the endpoints"
                )
        stats = endpoint_stats(since=since, endpoint_ids=wanted or None, using=using)
        urls = dict(Endpoint.objects.using(using).filter(id__in=list(stats)).values_list("id", "url"))
        rows = [_row(s, urls.get(s.endpoint_id, "")) for s in stats.values()]
        if options["json"]:
            self.stdout.write(json.dumps({"since": since.isoformat(), "endpoints": rows}, indent=2))
            return
        self.stdout.write(f"Since {since.isoformat()}:")
        if not rows:
            self.stdout.write("No endpoint sent or waited for anything in this window.")
            return
        lines = table(
            ["ID", "URL", "DELIVERED", "FAILED", "DEAD", "PENDING", "SUCCESS", "P50 MS", "P95 MS"],
            [
                [
                    str(r["id"]),
                    _shorten(r["url"]),
                    str(r["delivered"]),
                    str(r["failed_attempts"]),
                    str(r["dead"]),
                    str(r["pending"]),
                    "-" if r["success_rate"] is None else f"{r['success_rate']:.1%}",
                    _ms(r["p50_ms"]),
                    _ms(r["p95_ms"]),
                ]
                for r in rows
            ],
        )
        for line in lines:
            self.stdout.write(line)
        self.stdout.write(
            "FAILED counts requests not answered 2xx; DELIVERED and DEAD count deliveries that "
            "finished in the window; PENDING is now."
        )


def _row(stats: EndpointStats, url: str) -> dict[str, Any]:
    return {
        "id": stats.endpoint_id,
        "url": url,
        "delivered": stats.delivered,
        "dead": stats.dead,
        "pending": stats.pending,
        "attempts": stats.attempts,
        "failed_attempts": stats.failed_attempts,
        "success_rate": stats.success_rate,
        "p50_ms": None if stats.p50_ms is None else float(stats.p50_ms),
        "p95_ms": None if stats.p95_ms is None else float(stats.p95_ms),
    }


def _shorten(url: str) -> str:
    return url if len(url) <= _URL_WIDTH else url[: _URL_WIDTH - 1] + "…"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
