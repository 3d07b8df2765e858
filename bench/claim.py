"""Measure what a dead endpoint's held backlog costs the claims of a healthy one.

Run: ``.venv/bin/python bench/claim.py [--held 50000] [--due 2000] [--rounds 5] [--claims 40]``
(PostgreSQL on 127.0.0.1:5432, ``HOOKPOST_PG_*`` override; the database
``hookpost_bench_claim`` is created when missing). It prints ``claim_ratio_held`` last:
the median claim time with the held backlog over the time without one (target: about 1).
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

BENCH_DB = "hookpost_bench_claim"
LEASE = dt.timedelta(seconds=60)


def seed(held: int, due: int) -> Any:
    """A healthy endpoint with ``due`` deliveries and a dead one with ``held``; returns the dead one."""
    from django.utils import timezone

    from hookpost.models import Endpoint

    empty_outbox()
    dead = Endpoint.objects.create(url="http://127.0.0.1:9/dead", event_types=["dead.*"], max_in_flight=10)
    Endpoint.objects.create(url="http://127.0.0.1:9/ok", event_types=["ok.*"], max_in_flight=10_000)
    # The dead endpoint's backlog is older than the healthy one's: it sits at the head of the queue.
    then = timezone.now() - dt.timedelta(minutes=5)
    fanned_out_events("dead", held, then)
    fanned_out_events("ok", due, then)
    return dead


def open_circuit(dead: Any) -> None:
    """Fail the dead endpoint's first requests through ``record_results``: its circuit opens."""
    from django.utils import timezone

    from hookpost import outbox
    from hookpost.retry import Breaker, Decision, Verdict

    now = timezone.now()
    claims = [
        c for c in outbox.claim(worker_id="dead", limit=100, lease=LEASE) if c.delivery.endpoint_id == dead.id
    ]
    results = [
        outbox.AttemptResult(
            delivery_id=c.delivery.id,
            endpoint_id=dead.id,
            event_id=c.delivery.event_id,
            number=1,
            started_at=now,
            duration_ms=1,
            request_headers={},
            status_code=500,
            response_body="",
            error="HTTP 500",
            decision=Decision(Verdict.RETRY, now + dt.timedelta(hours=1), "HTTP 500"),
        )
        for c in claims
    ]
    outbox.record_results(results, breaker=Breaker(threshold=len(results)), now=now)


def time_claims(claims: int) -> float:
    """Median seconds of one ``claim()`` of 100 of the healthy endpoint's deliveries (leases given back)."""
    from hookpost import outbox
    from hookpost.models import Delivery

    times = []
    for _ in range(claims):
        begun = time.perf_counter()
        got = outbox.claim(worker_id="bench", limit=100, lease=LEASE)
        times.append(time.perf_counter() - begun)
        assert got, "the healthy endpoint's deliveries should be claimable"
        Delivery.objects.filter(id__in=[c.delivery.id for c in got]).update(
            lease_owner="", lease_expires_at=None
        )
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=50_000, help="deliveries held by the open circuit")
    parser.add_argument("--due", type=int, default=2000, help="the healthy endpoint's due deliveries")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--claims", type=int, default=40, help="claims timed per configuration and round")
    args = parser.parse_args()
    ensure_database(BENCH_DB)
    configure_hookpost(BENCH_DB)
    from django.db import connection

    from hookpost.models import Delivery, Endpoint

    dead = seed(args.held, args.due)
    open_circuit(dead)
    dead.refresh_from_db()
    parked_until = dead.blocked_until
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {Delivery._meta.db_table}, {Endpoint._meta.db_table}")
    pending = Delivery.objects.filter(endpoint=dead, status="pending")
    print(
        f"claim() of 100 of {args.due} healthy deliveries; dead endpoint: {pending.count()} held, "
        "circuit open"
    )
    configurations = {
        "a. no held backlog in the scan (its rows due in ten years)": None,
        "b. held backlog parked at the probe time (hookpost)": "parked",
        "c. held backlog left due (before parking)": "due",
    }
    results: dict[str, list[float]] = {name: [] for name in configurations}
    for round_number in range(args.rounds):
        for name, state in configurations.items():
            if state is None:
                # Out of the scan altogether: far in the future.
                pending.update(next_attempt_at=parked_until + dt.timedelta(days=3650))
            elif state == "parked":
                pending.update(next_attempt_at=parked_until)
            else:
                pending.update(next_attempt_at=parked_until - dt.timedelta(minutes=10))
            with connection.cursor() as cursor:
                cursor.execute(f"VACUUM ANALYZE {Delivery._meta.db_table}")
            results[name].append(time_claims(args.claims))
        print(f"  round {round_number + 1}/{args.rounds} done", flush=True)
    baseline = statistics.median(results[next(iter(configurations))])
    print(f"  {'configuration':<74} median ms   vs a")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(f"  {name:<74} {median * 1000:9.2f}  {median / baseline:5.2f}x")
    parked = statistics.median(results["b. held backlog parked at the probe time (hookpost)"])
    print(f"claim_ratio_held value={parked / baseline:.2f}")


if __name__ == "__main__":
    main()
