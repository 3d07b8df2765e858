"""Outages: the receiver goes down and returns, the circuit breaker holds requests, the database restarts.

A real worker process runs through each outage; the checks are what the README promises:
everything arrives once it is possible, after the scheduled retries and no sooner, the
attempt log tells the story, and nothing is lost or left stuck.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections import Counter

import pytest
from django.conf import settings
from django.test.utils import override_settings
from django.utils import timezone

from hookpost.models import Attempt, Delivery, Endpoint, Event
from hookpost.retry import Breaker
from hookpost.worker import Worker
from library.models import Author
from tests.receiver import Receiver
from tests.reliability import pg_cluster
from tests.reliability._faults import (
    Child,
    check_attempt_log,
    check_deliveries,
    check_nothing_stuck,
    children,
    duplicates_of,
    free_port,
    receiver_at,
    verify,
    wait_until,
)
from tests.reliability.conftest import report, size

POSTGRESQL = os.environ.get("HOOKPOST_DB", "sqlite") == "postgresql"


def create_authors(count: int, prefix: str = "author-") -> None:
    for n in range(count):
        Author.objects.create(name=f"{prefix}{n}")


def seconds(entry: str | int) -> float:
    return float(str(entry).rstrip("s"))


# --- the receiver is down, then back --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_receiver_down_for_a_while_gets_everything_after_the_scheduled_retries():
    port = free_port()  # nothing listens there: every connection is refused
    events = size(10, 100)
    schedule = [0, "1s", "2s", "2s", "2s"]
    endpoint = Endpoint.objects.create(
        url=f"http://127.0.0.1:{port}/hooks",
        event_types=["library.*"],
        retry_schedule=schedule,
        max_in_flight=events,
    )
    create_authors(events)
    hookpost = {"RETRY_JITTER": 0, "CIRCUIT_THRESHOLD": 10_000}  # the breaker has a test of its own
    with children() as started:
        worker = Child("worker", hookpost=hookpost, args={"concurrency": events})
        started.append(worker)
        went_down = time.monotonic()
        # Down until every delivery has failed twice; the third attempt is due 2 s after the second.
        wait_until(
            lambda: Delivery.objects.filter(attempt_count=2).count() == events,
            timeout=60,
            what="every delivery to fail twice",
        )
        back_at = timezone.now()
        down_for = time.monotonic() - went_down
        with receiver_at(port) as receiver:
            receiver.wait_for(events, timeout=60)
            wait_until(lambda: Delivery.objects.delivered().count() == events, 30, "every delivery recorded")
            assert worker.terminate() == 0, worker.errors()
        numbers = check_deliveries(receiver, {"/hooks": endpoint.signing_secrets()[0]})
    assert numbers["duplicates"] == 0
    check_nothing_stuck()
    # The attempt log, per delivery: refused twice while down, then one 2xx once it was back.
    for delivery in Delivery.objects.all():
        log = list(delivery.attempts.order_by("number"))
        assert [(a.number, a.status_code, a.verdict) for a in log] == [
            (1, None, "retry"),
            (2, None, "retry"),
            (3, 200, "delivered"),
        ]
        assert all("ConnectError" in a.error and a.started_at < back_at for a in log[:2])
        assert log[2].started_at >= back_at
        # Retries come no sooner than the schedule says (there is no jitter here).
        for before, after, delay in zip(log, log[1:], schedule[1:], strict=False):
            assert after.started_at - before.started_at >= dt.timedelta(seconds=seconds(delay))
    attempts = check_attempt_log()
    assert attempts == 3 * events
    report(
        "receiver outage (connection refused), then back",
        events=events,
        down_s=round(down_for, 2),
        attempts=attempts,
        attempts_per_delivery=3,
        delivered=Delivery.objects.delivered().count(),
        duplicates=numbers["duplicates"],
    )


@pytest.mark.django_db(transaction=True)
def test_the_circuit_opens_in_an_outage_sends_only_probes_then_closes_once_the_receiver_is_back():
    threshold, cooldown = 3, 0.5
    port = free_port()
    events = size(10, 100)
    # One request at a time, so the count at which the circuit opens is exact.
    endpoint = Endpoint.objects.create(
        url=f"http://127.0.0.1:{port}/hooks",
        event_types=["library.*"],
        retry_schedule=[0] + ["1s"] * 30,
        max_in_flight=1,
    )
    create_authors(events)
    hookpost = {"RETRY_JITTER": 0, "CIRCUIT_THRESHOLD": threshold, "CIRCUIT_COOLDOWN": cooldown}
    with children() as started:
        worker = Child("worker", hookpost=hookpost)
        started.append(worker)
        went_down = time.monotonic()
        # Down until the circuit has opened and two probes have failed.
        wait_until(
            lambda: Endpoint.objects.get().consecutive_failures >= threshold + 2,
            timeout=60,
            what="the circuit to open and two probes to fail",
        )
        back_at = timezone.now()
        down_for = time.monotonic() - went_down
        with receiver_at(port) as receiver:
            receiver.wait_for(events, timeout=60)
            wait_until(lambda: Delivery.objects.delivered().count() == events, 30, "every delivery recorded")
            assert worker.terminate() == 0, worker.errors()
            signals = worker.signals()
        numbers = check_deliveries(receiver, {"/hooks": endpoint.signing_secrets()[0]})
    attempts = list(Attempt.objects.order_by("started_at", "id"))
    failures = [a for a in attempts if a.verdict == "retry"]
    # Requests stopped: the threshold's worth, then the two probes, each alone; then the
    # third probe found the receiver back.
    assert len(failures) == threshold + 2
    assert all(a.started_at < back_at for a in failures)
    assert attempts[len(failures)].status_code == 200
    breaker = Breaker(threshold=threshold, cooldown=dt.timedelta(seconds=cooldown))
    for streak in range(threshold, len(failures) + 1):
        # The request after ``streak`` failures waited for the breaker's probe time.
        previous, probe = attempts[streak - 1], attempts[streak]
        assert probe.started_at >= breaker.probe_at(streak, previous.started_at)
    # Recovered, and said so once.
    assert [(name, kwargs["endpoint_id"]) for name, kwargs in signals] == [
        ("endpoint_recovered", endpoint.id)
    ]
    endpoint.refresh_from_db()
    assert (endpoint.consecutive_failures, endpoint.blocked_until) == (0, None)
    assert numbers["duplicates"] == 0
    check_nothing_stuck()
    check_attempt_log()
    report(
        "receiver outage with the circuit breaker",
        events=events,
        down_s=round(down_for, 2),
        requests_while_down=len(failures),
        probes=len(failures) - threshold + 1,
        attempts=len(attempts),
        delivered=Delivery.objects.delivered().count(),
        duplicates=numbers["duplicates"],
        recovered_signals=len(signals),
    )


@pytest.mark.django_db(transaction=True)
def test_requests_in_flight_when_the_circuit_opens_do_not_stretch_its_first_probe():
    threshold, cooldown, in_flight = 3, 30, 6
    endpoint = Endpoint.objects.create(
        url=f"http://127.0.0.1:{free_port()}/hooks",
        event_types=["library.*"],
        retry_schedule=[0, "1h"],
        max_in_flight=in_flight,
    )
    create_authors(in_flight)
    hookpost = {
        **settings.HOOKPOST,
        "RETRY_JITTER": 0,
        "CIRCUIT_THRESHOLD": threshold,
        "CIRCUIT_COOLDOWN": cooldown,
    }
    with override_settings(HOOKPOST=hookpost):
        Worker(concurrency=in_flight, poll_interval=0.01).run(burst=True)
    endpoint.refresh_from_db()
    # All six went out together, before any failure came back, and all six were refused.
    assert Attempt.objects.filter(verdict="retry").count() == in_flight
    # The circuit is open; the one probe is due one cooldown after the last failure.
    assert endpoint.blocked_until - endpoint.last_failure_at == dt.timedelta(seconds=cooldown)


# --- the database restarts ------------------------------------------------------------------


@pytest.fixture
def private_postgresql():
    """A PostgreSQL cluster of this test's own (never the shared server), removed afterwards."""
    if not POSTGRESQL:
        pytest.skip("a database restart is tested on PostgreSQL (a server to stop and start)")
    if why := pg_cluster.unavailable():
        pytest.skip(why)
    with pg_cluster.private_cluster() as cluster:
        yield cluster


class Outbox:
    """Reads the private cluster's outbox with plain SQL (the test's own Django databases are elsewhere)."""

    def __init__(self, cluster: pg_cluster.PrivateCluster, name: str) -> None:
        self.conn = cluster.connect(name)

    def close(self) -> None:
        self.conn.close()

    def scalar(self, sql: str) -> int:
        row = self.conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])

    def delivered(self, prefix: str = "") -> int:
        """Deliveries delivered (of authors whose name starts with ``prefix``)."""
        d, e = Delivery._meta.db_table, Event._meta.db_table
        return self.scalar(
            f"SELECT COUNT(*) FROM {d} d JOIN {e} e ON e.id = d.event_id WHERE d.status = 'delivered' "
            f"""AND e.payload LIKE '%"name":"{prefix}%'"""
        )

    def events(self) -> set[str]:
        return {row[0] for row in self.conn.execute(f"SELECT id FROM {Event._meta.db_table}")}

    def statuses(self) -> Counter[str]:
        rows = self.conn.execute(f"SELECT status, COUNT(*) FROM {Delivery._meta.db_table} GROUP BY status")
        return Counter(dict(rows.fetchall()))

    def leased(self) -> int:
        return self.scalar(f"SELECT COUNT(*) FROM {Delivery._meta.db_table} WHERE lease_owner <> ''")

    def attempt_numbers(self) -> dict[str, tuple[int, list[int]]]:
        """Per event (there is one endpoint): its delivery's attempt count and logged attempt numbers."""
        d, a = Delivery._meta.db_table, Attempt._meta.db_table
        rows = self.conn.execute(
            f"SELECT d.event_id, d.attempt_count, COALESCE(array_agg(a.number ORDER BY a.number) "
            f"FILTER (WHERE a.id IS NOT NULL), '{{}}') FROM {d} d LEFT JOIN {a} a ON a.delivery_id = d.id "
            "GROUP BY d.id"
        )
        return {event: (count, list(numbers)) for event, count, numbers in rows.fetchall()}


@pytest.mark.parametrize("stop", ["fast", "immediate"])
def test_the_worker_rides_out_a_database_restart_and_loses_nothing(private_postgresql, stop):
    """``fast``: a clean shutdown that cuts every connection; ``immediate``: the server crashes."""
    cluster = private_postgresql
    name = "hookpost_restart"
    cluster.create_database(name)
    db = cluster.settings(name)
    Child("migrate", db=db).finish()
    before, after = size(60, 2000), size(30, 1000)
    outage = 2.0
    with children() as started, Receiver() as receiver:
        # Answers take a while, so requests are in flight when the server goes down.
        receiver.script("/hooks", lambda request: (time.sleep(0.03), 200)[1])
        endpoint = Child(
            "endpoint", db=db, args={"url": receiver.url("/hooks"), "event_types": ["library.*"]}
        )
        secret = json.loads(endpoint.finish().split(maxsplit=1)[1])["secret"]
        worker = Child("worker", db=db, args={"lease": 5, "poll_interval": 0.1})
        started.append(worker)
        Child("authors", db=db, args={"count": before, "prefix": "before-", "one_transaction": True}).finish()
        receiver.wait_for(before // 3, timeout=60)
        crashed = time.monotonic()
        cluster.stop(stop)
        time.sleep(outage)
        assert worker.alive()
        cluster.start()
        back = time.monotonic()
        outbox = Outbox(cluster, name)
        writer = Child("authors", db=db, args={"count": after, "prefix": "after-", "one_transaction": True})
        started.append(writer)
        wait_until(
            lambda: outbox.delivered("before-") == before, 120, "the backlog recorded after the restart"
        )
        recovered = time.monotonic() - back
        writer.finish()
        wait_until(
            lambda: outbox.delivered() == before + after, 120, "every event delivered after the restart"
        )
        assert worker.terminate() == 0, worker.errors()
        assert "database unavailable; retrying" in worker.errors()
    try:
        events = outbox.events()
        statuses, leased, attempts = outbox.statuses(), outbox.leased(), outbox.attempt_numbers()
    finally:
        outbox.close()
    # Every event committed before the stop survived it, and all arrived, signed.
    assert len(events) == before + after
    requests = receiver.received()
    assert {r.headers["webhook-id"] for r in requests} == events
    for request in requests:
        verify(secret, request)
    repeated = duplicates_of(requests)
    for copies in repeated.values():
        assert len({r.body for r in copies}) == 1
    duplicates = len(requests) - len(events)
    if stop == "fast":
        # The worker kept the outcomes it could not write and wrote them once the server was
        # back, well within its leases: nothing was sent twice.
        assert duplicates == 0
    else:
        # A crash may lose the last instants of the worker's own bookkeeping (committed without
        # waiting for the disk, see outbox._worker_transaction): only that work is repeated.
        assert all(min(r.at for r in copies) > crashed - 1.0 for copies in repeated.values())
    assert statuses == Counter({"delivered": before + after})
    assert leased == 0
    logged_twice = 0
    for event_id, (count, numbers) in attempts.items():
        copies = repeated.get(("/hooks", event_id), [None])
        if stop == "fast":
            assert (count, numbers) == (1, [1])
        else:
            # A request made twice may be logged twice, both as attempt 1: the claim that led
            # to the second did not see the first (lost with the crash), so both counted from 0.
            assert count == 1 and set(numbers) == {1} and len(numbers) <= len(copies)
            logged_twice += len(numbers) - 1
    report(
        f"database restart (pg_ctl stop -m {stop}, start)",
        events=before + after,
        events_before=before,
        events_after=after,
        outage_s=outage,
        delivered=before + after,
        duplicates=duplicates,
        attempts_logged_twice=logged_twice,
        time_to_recover_s=round(recovered, 2),
    )
