"""Per-endpoint delivery statistics over a time window: outcomes, success rate, latency percentiles."""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from django.db import connections
from django.db.models import Count, Q, QuerySet

from hookpost.models import Attempt, Delivery


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """What happened at one endpoint since a moment: counts, success rate and request latency."""

    endpoint_id: int
    #: Deliveries that finished since then, by how.
    delivered: int = 0
    dead: int = 0
    #: Deliveries waiting now (whatever the window).
    pending: int = 0
    #: Requests made since then, and how many of them got a 2xx.
    attempts: int = 0
    successful_attempts: int = 0
    #: Request duration percentiles, in milliseconds (None without requests).
    p50_ms: float | None = None
    p95_ms: float | None = None

    @property
    def failed_attempts(self) -> int:
        """Requests that did not get a 2xx."""
        return self.attempts - self.successful_attempts

    @property
    def success_rate(self) -> float | None:
        """Share of requests that got a 2xx, 0 to 1 (None without requests)."""
        return self.successful_attempts / self.attempts if self.attempts else None


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of sorted values, interpolated as PostgreSQL's percentile_cont does."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def endpoint_stats(
    *, since: dt.datetime, endpoint_ids: Collection[int] | None = None, using: str = "default"
) -> dict[int, EndpointStats]:
    """Statistics of every endpoint that had any activity since ``since`` (or is in ``endpoint_ids``)."""
    if endpoint_ids is not None and not endpoint_ids:
        return {}
    deliveries = Delivery.objects.using(using)
    attempts = Attempt.objects.using(using).filter(started_at__gte=since)
    if endpoint_ids is not None:
        deliveries = deliveries.filter(endpoint_id__in=list(endpoint_ids))
        attempts = attempts.filter(delivery__endpoint_id__in=list(endpoint_ids))
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    finished = (
        deliveries.filter(Q(status=Delivery.Status.PENDING) | Q(finished_at__gte=since))
        .values("endpoint_id")
        .annotate(
            delivered=Count("id", filter=Q(status=Delivery.Status.DELIVERED, finished_at__gte=since)),
            dead=Count("id", filter=Q(status=Delivery.Status.DEAD, finished_at__gte=since)),
            pending=Count("id", filter=Q(status=Delivery.Status.PENDING)),
        )
    )
    for row in finished:
        counts[row["endpoint_id"]].update(
            delivered=row["delivered"], dead=row["dead"], pending=row["pending"]
        )
    per_endpoint = (
        attempts.values("delivery__endpoint_id")
        .annotate(
            attempts=Count("id"),
            successful_attempts=Count("id", filter=Q(verdict=Attempt.Verdict.DELIVERED)),
        )
        .order_by()
    )
    for made in per_endpoint:
        counts[made["delivery__endpoint_id"]].update(
            attempts=made["attempts"], successful_attempts=made["successful_attempts"]
        )
    latency = _latency(attempts, using)
    ids = set(counts) | set(endpoint_ids or ())
    result = {}
    for endpoint_id in sorted(ids):
        p50, p95 = latency.get(endpoint_id, (None, None))
        result[endpoint_id] = EndpointStats(
            endpoint_id, **counts.get(endpoint_id, {}), p50_ms=p50, p95_ms=p95
        )
    return result


def _latency(attempts: QuerySet[Attempt], using: str) -> dict[int, tuple[float | None, float | None]]:
    """p50/p95 of request durations per endpoint: in the database on PostgreSQL, else in Python."""
    timed = attempts.filter(duration_ms__isnull=False)
    if connections[using].vendor == "postgresql":
        query = timed.values("delivery__endpoint_id", "duration_ms").query
        sql, params = query.get_compiler(using=using).as_sql()
        with connections[using].cursor() as cursor:
            cursor.execute(
                "SELECT endpoint_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) "
                f"FROM ({sql}) AS a(endpoint_id, duration_ms) GROUP BY endpoint_id",
                params,
            )
            return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    durations: dict[int, list[float]] = defaultdict(list)
    for endpoint_id, duration in timed.values_list("delivery__endpoint_id", "duration_ms").order_by(
        "delivery__endpoint_id", "duration_ms"
    ):
        durations[endpoint_id].append(float(duration or 0))
    return {
        endpoint_id: (percentile(values, 0.5), percentile(values, 0.95))
        for endpoint_id, values in durations.items()
    }
