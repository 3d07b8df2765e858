"""Measure what recording a batch of outcomes costs per result, by batch size, during a backlog.

Run: ``.venv/bin/python bench/record.py [--deliveries 100000] [--pending 50000] [--batches 20]``
(PostgreSQL on 127.0.0.1:5432, ``HOOKPOST_PG_*`` override; the database
``hookpost_bench_record`` is created when missing). The table's statistics are taken
while every delivery is finished, then a backlog becomes pending and leased: what a
worker meets when an outage ends. Each ``record_results()`` of a batch is timed and
rolled back, so every batch meets the same table. It prints ``record_ratio_batch``
last: the cost per result of a batch of 400 over that of a batch of 100 (target: at
most 1, as a batch's fixed cost is shared by more results; a statement that compares
every result with every row grows with the batch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "src", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _postgres import configure_hookpost, empty_outbox, ensure_database, fanned_out_events  # noqa: E402

BENCH_DB = "hookpost_bench_record"
BATCH_SIZES = (25, 100, 400)


def seed(deliveries: int, pending: int) -> list[int]:
    """``deliveries`` finished and analyzed; then the newest ``pending`` leased again. Their ids."""
    from django.db import connection
    from django.utils import timezone

    from hookpost.models import Delivery, Endpoint

    empty_outbox()
    Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], max_in_flight=deliveries)
    fanned_out_events("a", deliveries, timezone.now() - dt.timedelta(hours=1))
    table = Delivery._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET status = 'delivered', attempt_count = 1, finished_at = now()")
        cursor.execute(f"VACUUM ANALYZE {table}")
    backlog = list(Delivery.objects.order_by("-id").values_list("id", flat=True)[:pending])
    Delivery.objects.filter(id__in=backlog).update(
        status="pending",
        attempt_count=0,
        finished_at=None,
        lease_owner="bench",
        lease_expires_at=timezone.now() + dt.timedelta(hours=1),
    )
    return backlog


def results_for(ids: list[int]) -> list[Any]:
    """A successful outcome for each delivery in ``ids``."""
    from django.utils import timezone

    from hookpost import outbox
    from hookpost.models import Delivery
    from hookpost.retry import Decision, Verdict

    now = timezone.now()
    rows = Delivery.objects.filter(id__in=ids).values_list("id", "endpoint_id", "event_id")
    return [
        outbox.AttemptResult(
            delivery_id=delivery_id,
            endpoint_id=endpoint_id,
            event_id=event_id,
            number=1,
            started_at=now,
            duration_ms=3,
            request_headers={"content-type": "application/json", "webhook-id": event_id},
            status_code=200,
            response_body="ok",
            error="",
            decision=Decision(Verdict.DELIVERED, None, "HTTP 200"),
        )
        for delivery_id, endpoint_id, event_id in rows
    ]


def time_record(results: list[Any]) -> float:
    """Seconds one ``record_results()`` of ``results`` takes, its transaction then rolled back."""
    from django.db import transaction

    from hookpost import outbox

    with transaction.atomic():
        begun = time.perf_counter()
        outbox.record_results(results)
        seconds = time.perf_counter() - begun
        transaction.set_rollback(True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=100_000, help="deliveries in the table")
    parser.add_argument("--pending", type=int, default=50_000, help="of them, pending and leased")
    parser.add_argument("--batches", type=int, default=20, help="batches timed per size and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.pending < max(BATCH_SIZES) or args.pending > args.deliveries:
        parser.error(f"--pending must be between {max(BATCH_SIZES)} and --deliveries")
    ensure_database(BENCH_DB)
    configure_hookpost(BENCH_DB)

    backlog = seed(args.deliveries, args.pending)
    print(
        f"record_results() of a batch of successes; {args.deliveries:,} deliveries, analyzed while all "
        f"were finished, then {args.pending:,} pending and leased"
    )
    per_result: dict[int, list[float]] = {size: [] for size in BATCH_SIZES}
    for round_number in range(args.rounds):
        for size in BATCH_SIZES:
            for batch in range(args.batches):
                start = (batch * size) % (len(backlog) - size)
                results = results_for(backlog[start : start + size])
                per_result[size].append(time_record(results) / size)
        print(f"  round {round_number + 1}/{args.rounds} done", flush=True)
    print(f"  {'batch size':>10}  µs per result (median)")
    for size, samples in per_result.items():
        print(f"  {size:>10}  {statistics.median(samples) * 1e6:10.1f}")
    hundred, largest = (statistics.median(per_result[size]) for size in (100, BATCH_SIZES[-1]))
    print(f"record_ratio_batch value={largest / hundred:.2f}")


if __name__ == "__main__":
    main()
