"""Load: many events through real worker processes to three real endpoints, one of them failing.

Events come from hookpost's own capture path (``QuerySet.delete()`` of authors made
with ``bulk_create``), in chunks, as an application would write them. On PostgreSQL
two burst workers run side by side (``skip_locked`` keeps them apart); SQLite runs
one worker, safely, with a smaller load.

The failing endpoint answers 500 to everything and allows one attempt
(``retry_schedule=[0]``): each request it gets turns its delivery dead at once, and
after ``CIRCUIT_THRESHOLD`` failures in a row its circuit opens, so the rest of its
deliveries wait, pending and untouched, for a probe. That is the design the test
pins down: the failing endpoint costs a bounded number of requests, and every one of
its deliveries is either dead after exactly one logged attempt or pending without any.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection, transaction

from hookpost.conf import hookpost_settings
from hookpost.models import Attempt, Delivery, Endpoint, Event
from hookpost.retry import Breaker
from hookpost.worker import Worker
from library.models import Author
from tests.receiver import Receiver
from tests.reliability.conftest import SOAK, report, size

pytestmark = pytest.mark.django_db(transaction=True)

CHILD = Path(__file__).with_name("_load_worker.py")
# Measured with DEBUG off: a worker holds about 77 MB on PostgreSQL from start to the end
# of the soak's 200,000 deliveries. On SQLite it levels off near 130 MB after a passing
# peak of up to ~200 MB (native memory: SQLite and glibc's per-thread arenas; tracemalloc
# sees under 10 MB of Python objects). A leak of a kilobyte per delivery passes at CI size
# and fails this under soak.
PEAK_RSS_LIMIT_MIB = 300
DELETE_CHUNK = 5000


class Tally:
    """Counts each path's webhook-ids as they arrive, draining the receiver so its log stays small."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.ids: dict[str, Counter[str]] = {}
        self.statuses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Tally:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.drain()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.drain()

    def drain(self) -> None:
        # The Receiver keeps every request it served; at soak size that is ~200,000 of them.
        with self.receiver._lock:
            taken = self.receiver.requests[:]
            self.receiver.requests.clear()
        for request in taken:
            self.ids.setdefault(request.path, Counter())[request.headers["webhook-id"]] += 1


def capture_deletes(count: int) -> float:
    """Create ``count`` authors without signals, then delete them through capture; seconds spent deleting."""
    created = 0
    while created < count:
        n = min(DELETE_CHUNK, count - created)
        Author.objects.bulk_create(Author(name=f"author {created + i}") for i in range(n))
        created += n
    started = time.monotonic()
    while True:
        # One transaction per chunk, as an application deleting in batches would.
        with transaction.atomic():
            chunk = list(Author.objects.order_by("pk").values_list("pk", flat=True)[:DELETE_CHUNK])
            if not chunk:
                break
            Author.objects.filter(pk__in=chunk).delete()
    return time.monotonic() - started


def start_worker(worker_id: str, concurrency: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "HOOKPOST_CHILD_DB": connection.settings_dict["NAME"],
        "HOOKPOST_CHILD_ID": worker_id,
        "HOOKPOST_CHILD_CONCURRENCY": str(concurrency),
        # As in production. The example project's default, DEBUG on, makes Django keep the
        # last 9,000 queries of each of the worker's connections, with their parameters:
        # hundreds of megabytes that would hide (or fake) a leak of the worker's own.
        "DJANGO_DEBUG": "0",
    }
    return subprocess.Popen(
        [sys.executable, str(CHILD)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_load_through_real_workers_reaches_every_healthy_endpoint_and_accounts_for_the_failing_one():
    postgresql = connection.vendor == "postgresql"
    workers = 2 if postgresql else 1
    events = size(ci=5000, soak=100_000) if postgresql else size(ci=1500, soak=20_000)
    with Receiver() as first, Receiver() as second, Receiver() as failing:
        failing.script("/hooks", 500)
        healthy = [
            Endpoint.objects.create(url=r.url("/hooks"), event_types=["library.*"], max_in_flight=100)
            for r in (first, second)
        ]
        broken = Endpoint.objects.create(
            url=failing.url("/hooks"), event_types=["library.*"], retry_schedule=[0]
        )
        capture_seconds = capture_deletes(events)
        event_ids = set(Event.objects.values_list("id", flat=True))
        assert len(event_ids) == events
        assert set(Event.objects.values_list("type", flat=True)) == {"library.author.deleted"}

        with Tally(first) as tally_first, Tally(second) as tally_second, Tally(failing) as tally_failing:
            started = time.monotonic()
            children = [start_worker(f"load-{i}", concurrency=50) for i in range(workers)]
            outputs = []
            try:
                for child in children:
                    out, err = child.communicate(timeout=1800 if SOAK else 300)
                    assert child.returncode == 0, err[-4000:]
                    outputs.append(json.loads(out.strip().splitlines()[-1]))
            finally:
                for child in children:
                    if child.poll() is None:
                        child.kill()
                        child.communicate()
            elapsed = time.monotonic() - started

    # Every event reached each healthy endpoint, with nothing it was not sent and no duplicate.
    duplicates = {}
    for endpoint, tally in zip(healthy, (tally_first, tally_second), strict=True):
        received = tally.ids.get("/hooks", Counter())
        assert set(received) == event_ids
        duplicates[endpoint.pk] = sum(received.values()) - len(received)
        deliveries = Delivery.objects.filter(endpoint=endpoint)
        assert deliveries.count() == events
        assert deliveries.delivered().count() == events
        # Every request sent was logged, once.
        assert Attempt.objects.filter(delivery__endpoint=endpoint).count() == sum(received.values())
    # No crash and a lease far longer than the run: a duplicate here would be two workers
    # sending one delivery, which skip_locked claims must prevent.
    assert duplicates == dict.fromkeys(duplicates, 0)

    # The failing endpoint: each request it got made one delivery dead after one logged
    # attempt; the circuit held every other delivery back, pending and never attempted.
    hit = tally_failing.ids.get("/hooks", Counter())
    failing_requests = sum(hit.values())
    mine = Delivery.objects.filter(endpoint=broken)
    dead, pending = mine.dead(), mine.pending()
    assert mine.count() == events
    assert dead.count() + pending.count() == events
    assert set(dead.values_list("attempt_count", flat=True)) <= {1}
    assert set(pending.values_list("attempt_count", flat=True)) <= {0}
    assert set(dead.values_list("event_id", flat=True)) == set(hit)
    assert failing_requests == len(hit) == dead.count()
    attempts = Attempt.objects.filter(delivery__endpoint=broken)
    assert attempts.count() == failing_requests
    assert set(attempts.values_list("status_code", "verdict")) == {(500, "gave_up")}
    broken.refresh_from_db()
    assert broken.blocked_until is not None  # the circuit is open
    circuit_wait = (broken.blocked_until - broken.last_failure_at).total_seconds()
    # Bounded: the streak that opens the circuit, what was already claimed for the endpoint
    # (up to its in-flight cap, claimed ahead once more, per worker), and one probe per
    # cooldown at most while the run lasted.
    cap, threshold = hookpost_settings.MAX_IN_FLIGHT, hookpost_settings.CIRCUIT_THRESHOLD
    probes = int(elapsed // hookpost_settings.CIRCUIT_COOLDOWN) + 1
    assert failing_requests <= threshold + workers * 2 * cap + probes
    # The streak counts what opened the circuit and the failed probes, not the requests that
    # were in flight when it opened: those do not stretch the wait for the first probe.
    failed_probes = broken.consecutive_failures - threshold
    assert 0 <= failed_probes <= probes
    assert circuit_wait == min(
        hookpost_settings.CIRCUIT_COOLDOWN * 2**failed_probes, Breaker().max_cooldown.total_seconds()
    )
    # Its pending deliveries are parked at the probe time, off the head of the claim's queue,
    # but for a fan-out that committed while the circuit was being opened (at most one batch
    # per worker): those wait for the next failed probe to park them.
    unparked = pending.exclude(next_attempt_at=broken.blocked_until).count()
    assert unparked <= workers * Worker().fan_out_limit, unparked

    # Nothing is left leased once the workers are gone, and every event was fanned out.
    assert not Delivery.objects.exclude(lease_owner="").exists()
    assert not Delivery.objects.filter(lease_expires_at__isnull=False).exists()
    assert not Event.objects.filter(fanned_out_at__isnull=True).exists()

    # VmHWM, the high-water mark of this process's own memory: ru_maxrss would not do, as
    # Linux carries it over from the parent (this test process) through fork and exec.
    peaks_mib = [o["vm_hwm_kib"] / 1024 for o in outputs]
    assert all(peak > 0 for peak in peaks_mib)
    delivered = 2 * events
    report(
        "load",
        workers=workers,
        events=events,
        endpoints=3,
        delivered_healthy=delivered,
        duplicates=sum(duplicates.values()),
        failing_requests=failing_requests,
        failing_dead=failing_requests,
        failing_pending=events - failing_requests,
        circuit_wait_s=circuit_wait,
        sent_per_worker=[o["sent"] for o in outputs],
        peak_rss_mib=[round(p, 1) for p in peaks_mib],
        capture_seconds=round(capture_seconds, 2),
        delivery_seconds=round(elapsed, 2),
        deliveries_per_s=round((delivered + failing_requests) / elapsed),
    )
    print(
        f"\nload: {events} events, {workers} workers, {delivered} delivered in {elapsed:.1f}s "
        f"({(delivered + failing_requests) / elapsed:.0f}/s), capture {capture_seconds:.1f}s, "
        f"failing endpoint {failing_requests} requests (dead) / {events - failing_requests} pending, "
        f"circuit open for {circuit_wait:.0f}s, "
        f"duplicates {sum(duplicates.values())}, sent per worker {[o['sent'] for o in outputs]}, "
        f"peak RSS MiB {[round(p, 1) for p in peaks_mib]}"
    )
    assert max(peaks_mib) < PEAK_RSS_LIMIT_MIB
