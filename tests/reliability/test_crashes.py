"""Crash points: a worker process killed with SIGKILL at each step of a delivery; writers killed at commit.

Each delivery crash ends the same way: a fresh worker process takes the dead one's
deliveries over once their (short) leases expire, and then every event has reached the
receiver, a duplicate is an exact copy with the same webhook-id (so it verifies and can be
dropped), there are no more duplicates than deliveries the dead worker held, nothing is
left pending or leased, and the attempt log adds up.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
from django.db import connection, transaction

from hookpost.models import Attempt, Delivery, Endpoint, Event
from hookpost.worker import Worker
from library.models import Author
from tests.receiver import Receiver
from tests.reliability._faults import (
    Child,
    check_attempt_log,
    check_deliveries,
    check_nothing_stuck,
    children,
    duplicates_of,
    receiver_at,
    verify,
    wait_until,
)
from tests.reliability.conftest import report, size

pytestmark = pytest.mark.django_db(transaction=True)

POSTGRESQL = os.environ.get("HOOKPOST_DB", "sqlite") == "postgresql"
#: The doomed worker's lease, so the fresh worker may take its deliveries over this soon; its
#: requests time out sooner still (a lease must outlive a request, or it is sent twice).
LEASE = 3.0
DOOMED = {"TOTAL_TIMEOUT": 2.5, "CONNECT_TIMEOUT": 1.0}
KILLED = -signal.SIGKILL


@pytest.fixture
def receiver():
    with receiver_at() as r:
        yield r


def make_endpoint(receiver: Receiver, path: str = "/hooks", **options: object) -> str:
    """An endpoint for the library's events at ``path``; its signing secret."""
    endpoint = Endpoint.objects.create(url=receiver.url(path), event_types=["library.*"], **options)
    return endpoint.signing_secrets()[0]


def create_authors(count: int, prefix: str = "author-") -> None:
    for n in range(count):
        Author.objects.create(name=f"{prefix}{n}")


def held_by(worker_id: str) -> set[int]:
    """The deliveries ``worker_id`` holds a lease on (expired or not): its work in flight."""
    return set(
        Delivery.objects.pending().filter(lease_owner=worker_id).values_list("id", flat=True).order_by()
    )


def settle(receiver: Receiver, quiet: float = 0.3) -> list:
    """The receiver's requests once none arrived for ``quiet`` s (what a dead worker sent has been read)."""
    while True:
        before = len(receiver.received())
        time.sleep(quiet)
        requests = receiver.received()
        if len(requests) == before:
            return requests


def take_over(deliveries: int, **args: object) -> float:
    """A fresh worker process runs until all ``deliveries`` are delivered, then stops; seconds it took."""
    started = time.monotonic()
    with Child("worker", args={"worker_id": "fresh", **args}) as fresh:
        wait_until(
            lambda: Delivery.objects.delivered().count() == deliveries,
            timeout=60 + deliveries / 50,
            what=f"{deliveries} deliveries delivered by the fresh worker",
        )
        assert fresh.terminate() == 0, fresh.errors()
    return time.monotonic() - started


# --- crash points of a delivery -------------------------------------------------------------


def test_a_worker_killed_after_leasing_before_any_send_sends_everything_once(receiver):
    secret = make_endpoint(receiver)
    events = size(20, 500)
    create_authors(events)
    with Child(
        "worker", hookpost=DOOMED, args={"lease": LEASE, "worker_id": "doomed", "failpoint": "after_lease"}
    ) as doomed:
        _, *claimed = doomed.wait_for_line("FAILPOINT")
        # Frozen right after its leases committed (a claim, or a fan-out leasing what it
        # made): the deliveries are leased to it, none has gone out.
        in_flight = held_by("doomed")
        assert in_flight == {int(i) for i in claimed} and in_flight
        assert receiver.received() == []
        assert doomed.kill() == KILLED
    took = take_over(events)
    numbers = check_deliveries(receiver, {"/hooks": secret})
    # Nothing had been sent: taking the leases over repeats nothing.
    assert numbers["duplicates"] == 0
    check_nothing_stuck()
    attempts = check_attempt_log()
    assert attempts == events
    report(
        "crash after claim, before send",
        events=events,
        delivered=Delivery.objects.delivered().count(),
        in_flight_at_kill=len(in_flight),
        duplicates=numbers["duplicates"],
        attempts=attempts,
        time_to_recover_s=round(took, 2),
    )


def test_a_worker_killed_while_the_receiver_holds_its_requests_sends_each_again_with_the_same_id(receiver):
    release = threading.Event()
    receiver.script("/hooks", lambda request: (release.wait(60), 200)[1])
    events = size(10, 50)
    secret = make_endpoint(receiver, max_in_flight=events)
    create_authors(events)
    with Child(
        "worker", hookpost=DOOMED, args={"lease": LEASE, "worker_id": "doomed", "concurrency": events}
    ) as doomed:
        # Every request has reached the receiver, which has not answered yet.
        held = receiver.wait_for(events, timeout=60)
        assert doomed.kill() == KILLED
    in_flight = held_by("doomed")
    assert len(in_flight) == events and not Attempt.objects.exists()
    release.set()  # the held requests are answered, to a worker that is gone
    took = take_over(events)
    numbers = check_deliveries(receiver, {"/hooks": secret})
    # Each held request went again, once, with the id and body of the first.
    assert set(duplicates_of(receiver.received())) == {(r.path, r.headers["webhook-id"]) for r in held}
    assert numbers["duplicates"] == events <= len(in_flight)
    check_nothing_stuck()
    attempts = check_attempt_log()
    report(
        "crash with requests at the receiver, unanswered",
        events=events,
        delivered=Delivery.objects.delivered().count(),
        in_flight_at_kill=len(in_flight),
        duplicates=numbers["duplicates"],
        attempts=attempts,
        time_to_recover_s=round(took, 2),
    )


def test_a_worker_killed_after_the_receiver_answered_before_recording_sends_those_again(receiver):
    events = size(20, 500)
    secret = make_endpoint(receiver)
    create_authors(events)
    with Child(
        "worker", hookpost=DOOMED, args={"lease": LEASE, "worker_id": "doomed", "failpoint": "before_record"}
    ) as doomed:
        _, *answered = doomed.wait_for_line("FAILPOINT")
        # Frozen as it was about to write outcomes: the receiver said 200, the database knows nothing.
        assert answered
        assert doomed.kill() == KILLED
    received = settle(receiver)
    in_flight = held_by("doomed")
    assert not Delivery.objects.delivered().exists() and not Attempt.objects.exists()
    took = take_over(events)
    numbers = check_deliveries(receiver, {"/hooks": secret})
    # Exactly the requests made before the kill are repeated: acknowledged, but never recorded.
    assert set(duplicates_of(receiver.received())) == {(r.path, r.headers["webhook-id"]) for r in received}
    assert numbers["duplicates"] == len(received) <= len(in_flight)
    check_nothing_stuck()
    attempts = check_attempt_log()
    report(
        "crash after the receiver answered, before recording",
        events=events,
        delivered=Delivery.objects.delivered().count(),
        in_flight_at_kill=len(in_flight),
        duplicates=numbers["duplicates"],
        attempts=attempts,
        time_to_recover_s=round(took, 2),
    )


def test_a_worker_killed_at_a_random_moment_mid_batch_loses_nothing_and_repeats_only_what_was_in_flight(
    receiver,
):
    seed = int(os.environ.get("HOOKPOST_FAULT_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    events = size(150, 5000)
    deliveries = 2 * events
    delay = random.Random(seed + 1)
    for path in ("/a", "/b"):
        receiver.script(path, lambda request: (time.sleep(delay.random() * 0.01), 200)[1])
    secrets = {path: make_endpoint(receiver, path, max_in_flight=50) for path in ("/a", "/b")}
    with transaction.atomic():  # one transaction per author would only slow the setup down
        create_authors(events)
    kill_at = rng.randint(deliveries // 10, deliveries * 9 // 10)
    with Child(
        "worker", hookpost=DOOMED, args={"lease": LEASE, "worker_id": "doomed", "concurrency": 50}
    ) as doomed:
        receiver.wait_for(kill_at, timeout=120)
        assert doomed.kill() == KILLED
    received = settle(receiver)
    in_flight = held_by("doomed")
    endpoint_path = {e.id: e.url.rsplit("/", 1)[1] for e in Endpoint.objects.all()}
    recorded = {
        (f"/{endpoint_path[endpoint_id]}", event_id)
        for endpoint_id, event_id in Delivery.objects.delivered().values_list("endpoint_id", "event_id")
    }
    unrecorded = {(r.path, r.headers["webhook-id"]) for r in received} - recorded
    took = take_over(deliveries, concurrency=50)
    numbers = check_deliveries(receiver, secrets)
    repeated = set(duplicates_of(receiver.received()))
    context = f"seed={seed} kill_at={kill_at}"
    # Only requests the dead worker made and never recorded are made again, each once.
    assert repeated <= unrecorded, context
    assert numbers["duplicates"] == len(repeated) <= len(in_flight), context
    check_nothing_stuck()
    attempts = check_attempt_log()
    report(
        "crash mid-batch at a random moment",
        seed=seed,
        events=events,
        deliveries=deliveries,
        killed_after_requests=len(received),
        delivered=Delivery.objects.delivered().count(),
        in_flight_at_kill=len(in_flight),
        duplicates=numbers["duplicates"],
        attempts=attempts,
        time_to_recover_s=round(took, 2),
    )


# --- a writer killed at its commit ----------------------------------------------------------


@pytest.mark.parametrize("when", ["on_commit", "after_commit"])
def test_an_event_committed_by_a_process_killed_at_once_is_delivered(receiver, when):
    secret = make_endpoint(receiver)
    with children() as started:
        # Polling (SQLite), or LISTENing (PostgreSQL, whose NOTIFY the server sends at commit).
        worker = Child("worker", args={"poll_interval": 0.2})
        writer = Child("commit", args={"when": when, "name": "durable"}, stdin=True)
        started += [worker, writer]
        writer.wait_for_line("READY")
        writer.send("go\n")
        assert writer.wait(30) == KILLED
        [request] = receiver.wait_for(1, timeout=30)
        payload = verify(secret, request)
        assert payload["type"] == "library.author.created"
        assert payload["data"]["fields"]["name"] == "durable"
        assert request.headers["webhook-id"] == Event.objects.get().id
        wait_until(lambda: Delivery.objects.delivered().count() == 1, 30, "the delivery recorded")
        assert worker.terminate() == 0, worker.errors()
    check_nothing_stuck()
    report(f"writer killed {when.replace('_', ' ')}", events=1, delivered=1, duplicates=0)


@pytest.mark.skipif(not POSTGRESQL, reason="LISTEN/NOTIFY is PostgreSQL's; SQLite workers always poll")
def test_a_listening_worker_that_missed_the_notification_still_delivers_by_polling(receiver):
    secret = make_endpoint(receiver)
    with children() as started:
        worker = Child("worker", args={"poll_interval": 1.0})
        writer = Child("commit", args={"when": "on_commit", "name": "unheard"}, stdin=True)
        started += [worker, writer]
        writer.wait_for_line("READY")
        [listener] = wait_until(listeners, 30, "the worker's LISTEN connection")
        with connection.cursor() as cursor:
            # Its connection drops (as in a network blip); the worker reconnects a second later.
            cursor.execute("SELECT pg_terminate_backend(%s)", [listener])
        writer.send("go\n")
        assert writer.wait(30) == KILLED
        # The commit, and the NOTIFY it sent, came while nobody was listening.
        assert listeners() == []
        [request] = receiver.wait_for(1, timeout=30)
        assert verify(secret, request)["data"]["fields"]["name"] == "unheard"
        assert worker.terminate() == 0, worker.errors()
        assert "LISTEN connection lost" in worker.errors()
    report("notification missed by a listening worker", events=1, delivered=1, duplicates=0)


def listeners() -> list[int]:
    """Backends LISTENing on hookpost's channel in this test's database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = 'LISTEN hookpost' AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in cursor.fetchall()]


def test_a_process_killed_inside_its_transaction_leaves_no_event_and_sends_nothing(receiver):
    secret = make_endpoint(receiver)
    with Child("commit", args={"when": "in_transaction", "name": "never"}, stdin=True) as writer:
        writer.wait_for_line("READY")
        writer.send("go\n")
        assert writer.wait(30) == KILLED
    assert not Author.objects.filter(name="never").exists()
    assert not Event.objects.exists()
    Author.objects.create(name="control")
    Worker(poll_interval=0.01).run(burst=True)
    [request] = receiver.received()
    assert verify(secret, request)["data"]["fields"]["name"] == "control"
    report("writer killed inside its transaction", events=1, delivered=1, phantom_events=0)


# --- user code that fails after a commit ----------------------------------------------------


def test_an_operational_signal_receiver_that_raises_neither_stops_the_worker_nor_doubles_the_log(receiver):
    secret = make_endpoint(receiver)
    create_authors(3)
    with Child("worker", args={"burst": True, "broken_receiver": "delivery_succeeded"}) as worker:
        code = worker.wait(60)
        assert code == 0, worker.errors()
    assert check_deliveries(receiver, {"/hooks": secret})["duplicates"] == 0
    check_nothing_stuck()
    assert check_attempt_log() == 3
