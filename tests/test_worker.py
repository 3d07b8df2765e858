"""The worker end to end: real HTTP receivers on 127.0.0.1, both databases, every outcome."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings
from django.test.utils import override_settings
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from hookpost import crypto, signals
from hookpost.models import Attempt, Delivery, Endpoint, Event
from hookpost.worker import Worker
from library.models import Author, Book
from tests.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def make_endpoint(receiver: Receiver, path: str = "/hooks", **options: object) -> Endpoint:
    options.setdefault("event_types", ["library.*"])
    return Endpoint.objects.create(url=receiver.url(path), **options)


def drain(**options: object) -> Worker:
    worker = Worker(concurrency=options.pop("concurrency", 10), poll_interval=0.01, **options)
    worker.run(burst=True)
    return worker


def listen(signal):
    seen: list[dict] = []

    def receiver(**kwargs):
        seen.append(kwargs)

    signal.connect(receiver, weak=False, dispatch_uid=f"test-{id(seen)}")
    return seen


# --- delivering -----------------------------------------------------------------------------


def test_a_committed_change_arrives_signed_and_verifiable(receiver):
    endpoint = make_endpoint(receiver)
    author = Author.objects.create(name="Le Guin")
    drain()
    [request] = receiver.received()
    payload = Webhook(endpoint.signing_secrets()[0]).verify(request.body, request.headers)
    assert payload["type"] == "library.author.created"
    assert payload["data"]["pk"] == author.pk
    event = Event.objects.get()
    assert request.headers["webhook-id"] == event.id
    assert request.body == event.payload.encode()
    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.DELIVERED
    assert delivery.attempt_count == 1 and delivery.lease_owner == ""
    attempt = Attempt.objects.get()
    assert (attempt.status_code, attempt.verdict, attempt.number) == (200, "delivered", 1)
    assert attempt.response_body == "ok"
    assert attempt.request_headers["webhook-id"] == event.id
    endpoint.refresh_from_db()
    assert endpoint.last_success_at == attempt.started_at
    assert (endpoint.consecutive_failures, endpoint.failing_since) == (0, None)


def test_every_subscribed_endpoint_gets_each_event_once_and_others_none(receiver):
    books = make_endpoint(receiver, "/books", event_types=["library.book.*"])
    everything = make_endpoint(receiver, "/all", event_types=["*"])
    make_endpoint(receiver, "/paused", status=Endpoint.Status.PAUSED)
    make_endpoint(receiver, "/disabled", status=Endpoint.Status.DISABLED)
    author = Author.objects.create(name="a")
    Book.objects.create(title="b", author=author)
    drain()
    assert len(receiver.received("/books")) == 1
    assert len(receiver.received("/all")) == 2
    assert receiver.received("/paused") == receiver.received("/disabled") == []
    # The paused endpoint's delivery waits; the disabled one never had one.
    paused = Delivery.objects.filter(endpoint__status="paused")
    assert [(d.status, d.attempt_count) for d in paused] == [("pending", 0)] * 2
    assert Delivery.objects.filter(endpoint__status="disabled").count() == 0
    assert {d.endpoint_id for d in Delivery.objects.delivered()} == {books.id, everything.id}


def test_no_webhook_for_a_rolled_back_transaction(receiver):
    from django.db import transaction

    make_endpoint(receiver)
    with pytest.raises(RuntimeError), transaction.atomic():
        Author.objects.create(name="never")
        raise RuntimeError
    Author.objects.create(name="kept")
    drain()
    assert [json.loads(r.body)["data"]["fields"]["name"] for r in receiver.received()] == ["kept"]


def test_deliveries_succeeded_signal_fires_after_commit(receiver):
    make_endpoint(receiver)
    seen = listen(signals.delivery_succeeded)
    Author.objects.create(name="a")
    drain()
    [call] = seen
    assert call["attempt"] == 1 and call["event_id"] == Event.objects.get().id


# --- outcomes by status class ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "verdict", "status"),
    [
        (201, "delivered", "delivered"),
        (204, "delivered", "delivered"),
        ((302, {"Location": "http://169.254.169.254/"}), "retry", "pending"),
        (400, "retry", "pending"),
        (404, "retry", "pending"),
        (500, "retry", "pending"),
        (503, "retry", "pending"),
    ],
)
def test_each_status_class_is_classified(receiver, answer, verdict, status):
    receiver.script("/hooks", answer)
    make_endpoint(receiver)
    Author.objects.create(name="a")
    drain()
    attempt = Attempt.objects.get()
    assert attempt.verdict == verdict
    delivery = Delivery.objects.get()
    assert delivery.status == status
    if status == "pending":
        # The schedule's second step is 5 s (±20% jitter).
        wait = (delivery.next_attempt_at - attempt.started_at).total_seconds()
        assert 3.9 <= wait <= 6.1
    assert len(receiver.received()) == 1  # a redirect is not followed


def test_retry_after_on_429_is_honoured(receiver):
    receiver.script("/hooks", (429, {"Retry-After": "120"}))
    make_endpoint(receiver)
    Author.objects.create(name="a")
    drain()
    delivery = Delivery.objects.get()
    attempt = Attempt.objects.get()
    wait = (delivery.next_attempt_at - attempt.started_at).total_seconds()
    assert 119 <= wait <= 125


def test_410_disables_the_endpoint_and_cancels_its_pending_deliveries(receiver):
    receiver.script("/hooks", 410)
    endpoint = make_endpoint(receiver, max_in_flight=1)
    disabled = listen(signals.endpoint_disabled)
    Author.objects.create(name="a")
    Author.objects.create(name="b")
    drain()
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.DISABLED
    assert "410" in endpoint.status_reason
    assert len(receiver.received()) == 1
    assert sorted(Delivery.objects.values_list("status", flat=True)) == ["cancelled", "cancelled"]
    assert [d["endpoint_id"] for d in disabled] == [endpoint.id]


def test_a_timeout_is_recorded_and_retried(receiver):
    receiver.script("/hooks", "hang")
    make_endpoint(receiver, timeout=0.3)
    Author.objects.create(name="a")
    drain()
    attempt = Attempt.objects.get()
    assert attempt.status_code is None and attempt.verdict == "retry"
    assert "Timeout" in attempt.error


@override_settings(HOOKPOST={"ALLOWED_NETWORKS": [], "ALLOW_HTTP": True})
def test_a_hostname_resolving_to_loopback_is_refused_when_not_allow_listed(receiver):
    Endpoint.objects.create(url=f"http://localhost:{receiver.port}/hooks", event_types=["*"])
    Author.objects.create(name="a")
    drain()
    attempt = Attempt.objects.get()
    assert attempt.status_code is None and "AddressNotAllowed" in attempt.error
    assert receiver.received() == []


def test_failing_twice_then_succeeding_delivers_with_the_same_webhook_id(receiver):
    receiver.script("/hooks", 500, 502, 200)
    make_endpoint(receiver, retry_schedule=[0, 0, 0, 0])
    Author.objects.create(name="a")
    drain()
    requests = receiver.received()
    assert len(requests) == 3
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert list(Attempt.objects.order_by("number").values_list("verdict", flat=True)) == [
        "retry",
        "retry",
        "delivered",
    ]
    assert Delivery.objects.get().status == "delivered"


def test_exhausted_attempts_make_the_delivery_dead(receiver):
    receiver.script("/hooks", 500)
    make_endpoint(receiver, retry_schedule=[0, 0, 0])
    exhausted = listen(signals.delivery_exhausted)
    Author.objects.create(name="a")
    drain()
    assert Delivery.objects.get().status == "dead"
    assert Attempt.objects.count() == 3 and len(exhausted) == 1


# --- fairness, ordering, limits -------------------------------------------------------------


def test_a_failing_endpoint_opens_its_circuit_and_healthy_ones_keep_flowing(receiver):
    receiver.script("/down", 503)
    # One at a time, so the count at which the circuit opens is exact.
    down = make_endpoint(receiver, "/down", retry_schedule=[0] * 20, max_in_flight=1)
    make_endpoint(receiver, "/up")
    for i in range(20):
        Author.objects.create(name=str(i))
    drain()
    assert len(receiver.received("/up")) == 20
    down.refresh_from_db()
    # 5 consecutive failures open the circuit; the rest wait for the probe time.
    assert down.consecutive_failures == 5
    assert down.blocked_until > timezone.now()
    assert len(receiver.received("/down")) == 5


def test_fifo_endpoint_receives_in_event_order_one_at_a_time_with_sequence_numbers(receiver):
    receiver.script("/fifo", 500, 500, 200)
    make_endpoint(receiver, "/fifo", fifo=True, retry_schedule=[0] * 5)
    for i in range(5):
        Author.objects.create(name=str(i))
    drain(concurrency=20)
    requests = receiver.received("/fifo")
    delivered = [json.loads(r.body)["data"]["fields"]["name"] for r in requests[2:]]
    assert delivered == ["0", "1", "2", "3", "4"]
    assert [r.headers["webhook-sequence"] for r in requests] == ["1", "1", "1", "2", "3", "4", "5"]


def test_rate_limit_spaces_requests_to_an_endpoint(receiver):
    make_endpoint(receiver, rate_limit=20)
    for i in range(10):
        Author.objects.create(name=str(i))
    drain(concurrency=20)
    times = sorted(r.at for r in receiver.received())
    assert len(times) == 10
    # 10 requests at 20/s: the last goes no sooner than 9 intervals after the first.
    assert times[-1] - times[0] >= 9 / 20 * 0.9


def counting_in_flight(seconds: float) -> tuple[Callable[[object], int], list[int]]:
    """A receiver answer that takes ``seconds``, and the list of how many were in flight as each came."""
    active: list[int] = []
    peak: list[int] = []
    lock = threading.Lock()

    def answer(request: object) -> int:
        with lock:
            active.append(1)
            peak.append(len(active))
        threading.Event().wait(seconds)
        with lock:
            active.pop()
        return 200

    return answer, peak


def test_per_endpoint_in_flight_cap_holds(receiver):
    slow, peak = counting_in_flight(0.2)
    receiver.script("/slow", slow)
    make_endpoint(receiver, "/slow", max_in_flight=2)
    for i in range(6):
        Author.objects.create(name=str(i))
    drain(concurrency=20)
    assert len(receiver.received()) == 6
    assert max(peak) <= 2


def on_each_lease(monkeypatch: pytest.MonkeyPatch, seen: Callable[[str, list, dict], object]) -> None:
    """Call ``seen(how, claims, kwargs)`` after each of the worker's leases from now on.

    ``how`` is "claim", or "fan-out" (which leases what it makes on PostgreSQL, when asked to).
    """
    from hookpost import outbox

    real_claim, real_fan_out = outbox.claim, outbox.fan_out_and_lease

    def claim(**kwargs):
        claims = real_claim(**kwargs)
        seen("claim", claims, kwargs)
        return claims

    def fan_out_and_lease(**kwargs):
        done = real_fan_out(**kwargs)
        seen("fan-out", done.claims, kwargs)
        return done

    monkeypatch.setattr(outbox, "claim", claim)
    monkeypatch.setattr(outbox, "fan_out_and_lease", fan_out_and_lease)


def claim_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of deliveries each of the worker's leases takes from now on, in order (empty ones too).

    A lease is a claim, or (on PostgreSQL) a fan-out that leases what it makes.
    """
    sizes: list[int] = []

    def seen(how: str, claims: list, kwargs: dict) -> None:
        if how == "claim" or kwargs.get("leasing") is not None:
            sizes.append(len(claims))

    on_each_lease(monkeypatch, seen)
    return sizes


def test_a_fast_endpoints_claims_run_deeper_than_two_caps_and_its_cap_still_holds(receiver, monkeypatch):
    sizes = claim_sizes(monkeypatch)
    quick, peak = counting_in_flight(0.005)
    receiver.script("/quick", quick)
    make_endpoint(receiver, "/quick", max_in_flight=2)
    for i in range(60):
        Author.objects.create(name=str(i))
    drain(concurrency=10, batch_size=20)
    received = receiver.received()
    assert len(received) == 60 and len({r.headers["webhook-id"] for r in received}) == 60
    assert max(peak) <= 2
    # Answers in milliseconds: once one has come, a claim brings up to a batch, not a cap or two.
    assert max(sizes) > 4


def test_claim_depth_is_what_an_endpoint_sends_within_the_span_and_never_more_than_the_most():
    from hookpost.worker import claim_depth

    assert claim_depth(50, 0.015, within=15, most=100) == 100
    assert claim_depth(10, 10.0, within=15, most=100) == 15
    assert claim_depth(1, 60.0, within=15, most=100) == 0
    # An answer timed at zero does not divide by zero.
    assert claim_depth(1, 0.0, within=15, most=100) == 100


def test_a_claim_that_waited_until_its_lease_is_nearly_out_is_released_and_sent_once(receiver, caplog):
    def slow(request):
        threading.Event().wait(0.6)
        return 200

    receiver.script("/slow", *[slow] * 10)
    make_endpoint(receiver, "/slow", max_in_flight=1)
    for i in range(3):
        Author.objects.create(name=str(i))
    caplog.set_level("INFO", logger="hookpost.worker")
    # A one-second lease: a claim queued behind a 0.6 s request has less than half of it left.
    drain(concurrency=1, lease=dt.timedelta(seconds=1))
    received = receiver.received()
    assert sorted(r.headers["webhook-id"] for r in received) == sorted(
        Delivery.objects.values_list("event_id", flat=True)
    )
    assert Delivery.objects.delivered().count() == 3
    assert "its lease had too little left; released" in caplog.text


# --- leases ---------------------------------------------------------------------------------------


def test_leases_are_released_when_the_worker_stops_with_nothing_recorded(receiver):
    make_endpoint(receiver)
    Author.objects.create(name="a")
    from hookpost import outbox

    outbox.fan_out()
    [claim] = outbox.claim(worker_id="w-gone", limit=10, lease=dt.timedelta(minutes=5))
    assert Delivery.objects.leased().count() == 1
    assert outbox.release([claim.delivery.id], worker_id="w-gone") == 1
    assert Delivery.objects.due().count() == 1


def test_an_expired_lease_is_claimed_again(receiver):
    from hookpost import outbox

    make_endpoint(receiver)
    Author.objects.create(name="a")
    outbox.fan_out()
    now = timezone.now()
    outbox.claim(worker_id="w-dead", limit=10, lease=dt.timedelta(seconds=30), now=now)
    assert outbox.claim(worker_id="w2", limit=10, lease=dt.timedelta(seconds=30), now=now) == []
    later = now + dt.timedelta(seconds=31)
    [again] = outbox.claim(worker_id="w2", limit=10, lease=dt.timedelta(seconds=30), now=later)
    assert again.delivery.lease_owner == "w2"


# --- real worker processes ----------------------------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from django.db import connection  # noqa: E402

CHILD = Path(__file__).with_name("worker_child.py")


def start_worker(*, lease: float = 60, burst: bool = False, worker_id: str = "", concurrency: int = 20):
    env = {
        **os.environ,
        "HOOKPOST_CHILD_DB": connection.settings_dict["NAME"],
        "HOOKPOST_CHILD_LEASE": str(lease),
        "HOOKPOST_CHILD_BURST": "1" if burst else "",
        "HOOKPOST_CHILD_ID": worker_id or f"child-{time.monotonic_ns()}",
        "HOOKPOST_CHILD_CONCURRENCY": str(concurrency),
    }
    return subprocess.Popen(
        [sys.executable, str(CHILD)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_worker_killed_with_sigkill_loses_nothing_and_redelivers_with_the_same_ids(receiver):
    receiver.script("/hooks", "hang")
    make_endpoint(receiver)
    for i in range(5):
        Author.objects.create(name=str(i))
    child = start_worker(lease=2)
    try:
        first = receiver.wait_for(5, timeout=30)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert Delivery.objects.leased().count() == 5  # held by a dead worker
    receiver.script("/hooks", 200)
    time.sleep(2.2)  # the dead worker's leases run out
    drain()
    assert Delivery.objects.delivered().count() == 5
    again = receiver.received()[5:]
    assert sorted(r.headers["webhook-id"] for r in again) == sorted(r.headers["webhook-id"] for r in first)


def test_two_workers_never_send_the_same_delivery(receiver):
    make_endpoint(receiver, "/a", max_in_flight=50)
    make_endpoint(receiver, "/b", max_in_flight=50)
    from hookpost.capture import emit

    for i in range(150):
        emit("library.author.imported", {"n": i})
    workers = [start_worker(burst=True, worker_id=f"w{i}") for i in range(2)]
    for child in workers:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    ids = [(r.path, r.headers["webhook-id"]) for r in receiver.received()]
    assert len(ids) == 300
    assert len(set(ids)) == 300  # no delivery sent twice
    assert Delivery.objects.delivered().count() == 300
    assert not Delivery.objects.exclude(lease_owner="").exists()


def test_sigterm_finishes_requests_in_flight_then_exits(receiver):
    receiver.script("/hooks", lambda request: (time.sleep(0.5), 200)[1])
    make_endpoint(receiver)
    for i in range(3):
        Author.objects.create(name=str(i))
    child = start_worker()
    receiver.wait_for(3, timeout=30)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert Delivery.objects.delivered().count() == 3
    assert Delivery.objects.leased().count() == 0


# --- health, signals, attempt log, wake-ups ---------------------------------------------------


def test_an_open_circuit_probes_once_and_recovers_on_success(receiver):
    endpoint = make_endpoint(receiver)
    Endpoint.objects.filter(id=endpoint.id).update(
        consecutive_failures=7,
        failing_since=timezone.now() - dt.timedelta(hours=1),
        last_failure_at=timezone.now() - dt.timedelta(minutes=5),
        blocked_until=timezone.now() - dt.timedelta(seconds=1),
    )
    recovered = listen(signals.endpoint_recovered)
    for i in range(3):
        Author.objects.create(name=str(i))
    drain()
    endpoint.refresh_from_db()
    assert (endpoint.consecutive_failures, endpoint.failing_since, endpoint.blocked_until) == (0, None, None)
    assert endpoint.last_success_at is not None
    assert [r["endpoint_id"] for r in recovered] == [endpoint.id]
    assert len(receiver.received()) == 3


def test_a_probe_that_fails_keeps_the_circuit_open_longer(receiver):
    receiver.script("/hooks", 500)
    endpoint = make_endpoint(receiver)
    Endpoint.objects.filter(id=endpoint.id).update(
        consecutive_failures=5,
        failing_since=timezone.now() - dt.timedelta(hours=1),
        last_failure_at=timezone.now() - dt.timedelta(minutes=5),
        blocked_until=timezone.now() - dt.timedelta(seconds=1),
    )
    for i in range(3):
        Author.objects.create(name=str(i))
    drain()
    endpoint.refresh_from_db()
    assert len(receiver.received()) == 1  # one probe only
    assert endpoint.consecutive_failures == 6
    assert endpoint.blocked_until - endpoint.last_failure_at == dt.timedelta(seconds=60)


def test_an_endpoint_failing_past_the_disable_span_is_disabled(receiver):
    receiver.script("/hooks", 500)
    endpoint = make_endpoint(receiver)
    Endpoint.objects.filter(id=endpoint.id).update(
        consecutive_failures=1, failing_since=timezone.now() - dt.timedelta(days=5, minutes=1)
    )
    disabled = listen(signals.endpoint_disabled)
    failed = listen(signals.delivery_failed)
    Author.objects.create(name="a")
    drain()
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.DISABLED
    assert "no success since" in endpoint.status_reason
    assert Delivery.objects.get().status == Delivery.Status.CANCELLED
    assert [d["endpoint_id"] for d in disabled] == [endpoint.id]
    assert [(f["status_code"], f["verdict"]) for f in failed] == [(500, "retry")]


def test_a_success_resets_the_failure_streak(receiver):
    receiver.script("/hooks", 500, 200)
    endpoint = make_endpoint(receiver, retry_schedule=[0, 0])
    Author.objects.create(name="a")
    drain()
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 0 and endpoint.failing_since is None


def test_the_attempt_log_keeps_no_credentials_and_caps_the_response(receiver):
    receiver.script("/hooks", (500, {}, "x" * 100_000))
    make_endpoint(receiver, headers={"Authorization": "Bearer s3cret", "X-Api-Key": "k", "X-Team": "a"})
    Author.objects.create(name="a")
    with override_settings(HOOKPOST={**settings.HOOKPOST, "MAX_RESPONSE_BYTES": 1000}):
        drain()
    [request] = receiver.received()
    assert request.headers["authorization"] == "Bearer s3cret"  # sent…
    attempt = Attempt.objects.get()
    assert attempt.request_headers["Authorization"] == "[redacted]"  # …but not logged
    assert attempt.request_headers["X-Api-Key"] == "[redacted]"
    assert attempt.request_headers["X-Team"] == "a"
    assert "s3cret" not in json.dumps(attempt.request_headers)
    assert attempt.response_body == "x" * 1000 + " […truncated]"


def test_a_secret_no_key_can_unseal_is_an_attempt_that_says_so_not_a_request(receiver):
    make_endpoint(receiver)
    Author.objects.create(name="a")
    # The keys that sealed the endpoint's secret are gone (a lost ENCRYPTION_KEYS entry).
    with override_settings(HOOKPOST={**settings.HOOKPOST, "ENCRYPTION_KEYS": [crypto.generate_key()]}):
        drain()
    assert receiver.received() == []
    attempt = Attempt.objects.get()
    assert attempt.status_code is None and attempt.verdict == Attempt.Verdict.RETRY
    assert attempt.error.startswith("ConfigurationError: hookpost.E020: a stored secret cannot be decrypted")
    assert attempt.request_headers == {}
    assert Delivery.objects.get().lease_expires_at is None  # not held until the lease runs out


def test_the_transport_is_chosen_by_setting():
    from hookpost.transports.memory import MemoryTransport
    from hookpost.worker import build_transport

    with override_settings(HOOKPOST={"TRANSPORT": "hookpost.transports.memory.MemoryTransport"}):
        assert isinstance(build_transport(), MemoryTransport)


def test_the_memory_transport_records_what_the_worker_sends():
    from hookpost.transports.memory import MemoryTransport

    transport = MemoryTransport()
    transport.script("https://hooks.example.com/x", 503, 200)
    Endpoint.objects.create(url="https://hooks.example.com/x", event_types=["*"], retry_schedule=[0, 0])
    Author.objects.create(name="a")
    Worker(transport=transport, poll_interval=0.01).run(burst=True)
    assert [r.url for r in transport.requests] == ["https://hooks.example.com/x"] * 2
    assert Delivery.objects.get().status == "delivered"


@pytest.mark.skipif("os.environ.get('HOOKPOST_DB') != 'postgresql'", reason="LISTEN/NOTIFY is PostgreSQL's")
def test_postgresql_wakes_an_idle_worker_on_commit_without_polling(receiver):
    make_endpoint(receiver)
    worker = Worker(poll_interval=60)  # a poll would come far too late for this test
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(1.0)  # the worker is idle, listening
        Author.objects.create(name="wake up")
        receiver.wait_for(1, timeout=15)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_second_sigterm_abandons_requests_in_flight_and_releases_their_leases(receiver):
    receiver.script("/hooks", "hang")
    make_endpoint(receiver)
    for i in range(2):
        Author.objects.create(name=str(i))
    child = start_worker()
    receiver.wait_for(2, timeout=30)
    child.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=10)  # far less than the 15 s request timeout
    assert child.returncode == 0, err
    assert "abandoning requests in flight" in err
    assert Delivery.objects.leased().count() == 0
    assert Delivery.objects.due().count() == 2  # due again at once, for the next worker
    assert Attempt.objects.count() == 0


def test_a_repeated_fan_out_neither_doubles_nor_skips_deliveries(receiver):
    from hookpost import outbox

    make_endpoint(receiver, "/a")
    make_endpoint(receiver, "/b")
    for i in range(3):
        Author.objects.create(name=str(i))
    assert outbox.fan_out(limit=2) == 2
    # As if a crash lost the marks after the deliveries were written: the same events again.
    Event.objects.update(fanned_out_at=None)
    assert outbox.fan_out() == 3
    pairs = list(Delivery.objects.values_list("event_id", "endpoint_id"))
    assert len(pairs) == len(set(pairs)) == 6
    assert not Event.objects.awaiting_fan_out().exists()


def leased_by(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """The deliveries the worker leases from now on, by how: claimed, or born leased at fan-out."""
    leased: dict[str, list[int]] = {"claim": [], "fan-out": []}
    on_each_lease(monkeypatch, lambda how, claims, _: leased[how].extend(c.delivery.id for c in claims))
    return leased


def test_on_postgresql_new_deliveries_are_born_leased_and_need_no_claim(receiver, monkeypatch):
    leased = leased_by(monkeypatch)
    make_endpoint(receiver, max_in_flight=50)
    for i in range(40):
        Author.objects.create(name=str(i))
    drain()
    received = receiver.received()
    assert len(received) == 40 and len({r.headers["webhook-id"] for r in received}) == 40
    # Each delivery leased exactly once, one way or the other.
    assert sorted(leased["claim"] + leased["fan-out"]) == sorted(
        Delivery.objects.values_list("id", flat=True)
    )
    if connection.vendor == "postgresql":
        assert len(leased["fan-out"]) == 40
    else:
        assert leased["fan-out"] == []


def test_a_backlog_of_events_is_fanned_out_at_the_pace_it_can_be_leased(monkeypatch):
    from hookpost import outbox

    transport = memory_backlog(150)
    asked: list[tuple[int, bool]] = []
    real_fan_out = outbox.fan_out_and_lease

    def fan_out_and_lease(**kwargs):
        asked.append((kwargs["limit"], kwargs["leasing"] is not None))
        return real_fan_out(**kwargs)

    monkeypatch.setattr(outbox, "fan_out_and_lease", fan_out_and_lease)
    worker = Worker(transport=transport, poll_interval=0.01, concurrency=5, batch_size=20)
    worker.run(burst=True)
    assert len(transport.requests) == 150 and Delivery.objects.filter(status="delivered").count() == 150
    if connection.vendor == "postgresql":
        # No more events at once than the room it leases into (a batch, here): the rest
        # wait as events, in order, not as deliveries for claims to find.
        assert all(limit <= 20 for limit, leasing in asked if leasing) and any(
            leasing for _, leasing in asked
        )
    else:
        assert {limit for limit, _ in asked} == {worker.fan_out_limit} and not any(
            leasing for _, leasing in asked
        )


def test_the_fan_out_pace_follows_the_room_and_keeps_a_floor():
    worker = Worker(concurrency=50, batch_size=200)
    assert worker._fan_out_pace(0) == worker.fan_out_limit == 200
    assert worker._fan_out_pace(120) == 120
    assert worker._fan_out_pace(3) == 50  # a quarter batch: no run of tiny fan-outs
    assert Worker(batch_size=2)._fan_out_pace(1) == 1


def test_a_due_fan_out_leases_once_half_a_batch_of_room_is_open_or_goes_without_leasing(monkeypatch):
    from types import SimpleNamespace

    from hookpost import worker as worker_module

    clock = [100.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    worker = Worker(concurrency=5, batch_size=20)
    worker._leases_at_fan_out = True
    # Nothing waiting to be sent: whatever room there is, a batch at most.
    assert worker._fan_out_room(25, recorded_behind=False) == 20
    worker._waiting.add(SimpleNamespace(delivery=SimpleNamespace(endpoint_id=1), allowance=1))
    assert worker._fan_out_room(10, recorded_behind=False) == 10
    # Under half a batch while the queue is being sent: it waits, a little while at most...
    assert worker._fan_out_room(9, recorded_behind=False) is None
    clock[0] += 0.06
    assert worker._fan_out_room(9, recorded_behind=False) is None
    # ...then fans out leasing nothing: a queue that does not drain takes no more.
    clock[0] += 0.06
    assert worker._fan_out_room(9, recorded_behind=False) == 0
    assert worker._fan_out_room(9, recorded_behind=False) is None  # the next one waits afresh
    # A recorder behind, or a database whose fan-out cannot lease: never waits, never leases.
    assert worker._fan_out_room(25, recorded_behind=True) == 0
    worker._leases_at_fan_out = False
    assert worker._fan_out_room(9, recorded_behind=False) == 0


def test_a_worker_stopped_while_its_fan_out_leases_releases_those_leases(receiver, monkeypatch):
    from hookpost import outbox

    make_endpoint(receiver)
    Author.objects.create(name="a")
    worker = Worker(concurrency=10, poll_interval=0.01)
    real_fan_out = outbox.fan_out_and_lease
    born: list[outbox.Claim] = []

    def stopped_meanwhile(**kwargs):
        worker.stop()
        done = real_fan_out(**kwargs)
        born.extend(done.claims)
        return done

    monkeypatch.setattr(outbox, "fan_out_and_lease", stopped_meanwhile)
    worker.run()
    assert len(born) == (1 if connection.vendor == "postgresql" else 0)
    assert receiver.received() == [] and Attempt.objects.count() == 0
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.lease_owner, delivery.lease_expires_at) == ("pending", "", None)


def test_the_worker_keeps_no_query_log_even_with_debug_on():
    from hookpost.worker import _reconnecting

    with override_settings(DEBUG=True):
        assert _reconnecting(lambda: Endpoint.objects.count()) == 0
        # Django would keep up to 9,000 of these per connection for a long-running worker.
        assert list(connection.queries_log) == []


def memory_backlog(count: int):
    """A memory transport and ``count`` deliveries due to one endpoint it answers (200)."""
    from hookpost.transports.memory import MemoryTransport

    Endpoint.objects.create(url="https://hooks.example.com/x", event_types=["*"], max_in_flight=1000)
    for n in range(count):
        Author.objects.create(name=f"a{n}")
    return MemoryTransport()


@contextlib.contextmanager
def bursting(worker: Worker, gate: threading.Event) -> Iterator[None]:
    """Run ``worker`` in burst mode on a thread; on leaving, open ``gate`` and wait for it to finish."""
    thread = threading.Thread(target=worker.run, kwargs={"burst": True})
    thread.start()
    try:
        yield
    finally:
        gate.set()
        thread.join(60)


def test_outcomes_are_recorded_while_the_next_claim_is_still_out(monkeypatch):
    # Recording once started only between claims: a slow claim held every finished
    # request's outcome back, and the unrecorded successes (sent again if the process
    # dies) piled up until claiming stopped for them. The recorder runs on its own.
    from hookpost import outbox

    transport = memory_backlog(30)
    gate = threading.Event()
    first: list[int] = []

    def stalled_after_the_first(lease):
        # Every lease after the first that leased anything (a claim, or on PostgreSQL a
        # fan-out leasing what it makes) waits for the gate.
        def call(**kwargs):
            if first:
                gate.wait(30)
            leased = lease(**kwargs)
            claims = leased if isinstance(leased, list) else leased.claims
            if claims and not first:
                first.extend(c.delivery.id for c in claims)
            return leased

        return call

    monkeypatch.setattr(outbox, "claim", stalled_after_the_first(outbox.claim))
    monkeypatch.setattr(outbox, "fan_out_and_lease", stalled_after_the_first(outbox.fan_out_and_lease))
    worker = Worker(transport=transport, poll_interval=0.01, concurrency=10, batch_size=10)
    with bursting(worker, gate):
        delivered = Delivery.objects.filter(status="delivered")
        for _ in range(400):
            time.sleep(0.025)
            if first and delivered.count() == len(first):
                break
        # The first lease's deliveries are recorded while the next one is stalled.
        assert first and sorted(delivered.values_list("id", flat=True)) == sorted(first)
        assert not gate.is_set()
    assert Delivery.objects.filter(status="delivered").count() == 30
    assert len(transport.requests) == 30


def test_a_recorder_that_falls_behind_holds_back_claims_so_few_successes_go_unrecorded(monkeypatch):
    from hookpost import outbox

    transport = memory_backlog(120)
    # The database stands still for recording: the first flush waits until the gate opens.
    gate, record = threading.Event(), outbox.record_results

    def slow_record(*args, **kwargs):
        gate.wait(30)
        return record(*args, **kwargs)

    monkeypatch.setattr(outbox, "record_results", slow_record)
    concurrency, batch = 5, 5
    worker = Worker(transport=transport, poll_interval=0.01, concurrency=concurrency, batch_size=batch)
    with bursting(worker, gate):
        settled_at = None
        for _ in range(200):  # until the number sent stops moving
            time.sleep(0.05)
            if settled_at == len(transport.requests) and settled_at:
                break
            settled_at = len(transport.requests)
        # Unrecorded successes stop at one round's worth (plus what was already out).
        assert len(transport.requests) <= 2 * (concurrency + batch)
    assert Delivery.objects.filter(status="delivered").count() == 120
    assert len(transport.requests) == 120


def test_a_worker_claims_again_once_half_a_batch_of_room_is_open_not_for_every_few_places(monkeypatch):
    # A claim has a fixed cost whatever it brings back. Claiming whenever a few places
    # opened (half the concurrency) meant back-to-back claims of a third of a batch.
    from hookpost.transports.memory import MemoryTransport

    memory_backlog(60)
    gate, held = threading.Event(), []

    class Held(MemoryTransport):
        async def send(self, request):
            held.append(request)
            while not gate.is_set():
                await asyncio.sleep(0.01)
            return await super().send(request)

    sizes = claim_sizes(monkeypatch)
    worker = Worker(transport=Held(), poll_interval=0.01, concurrency=5, batch_size=20)
    with bursting(worker, gate):
        for _ in range(200):
            if len(held) == 5:
                break
            time.sleep(0.01)
        time.sleep(0.3)  # some thirty rounds
        # Five requests out, fifteen waiting: five places of room, under half a batch.
        assert [n for n in sizes if n] == [20] and len(held) == 5
    assert Delivery.objects.filter(status="delivered").count() == 60
    # Once the requests came back, each claim waited for half a batch of room (or an
    # empty queue) and so brought at least that many, but for the backlog's last.
    claimed = [n for n in sizes if n]
    assert sum(claimed) == 60 and all(n >= 10 for n in claimed[:-1]), claimed


def test_a_response_body_with_nul_bytes_is_logged_without_them_and_the_worker_goes_on(receiver):
    # PostgreSQL text cannot hold U+0000; a binary answer (gzip, an image) once stopped the
    # recorder: every flush failed and the delivery was sent again and again.
    receiver.script("/hooks", (200, {}, b"ok\x00\x01\xffbin"))
    make_endpoint(receiver)
    Author.objects.create(name="a")
    drain()
    assert len(receiver.received()) == 1
    attempt = Attempt.objects.get()
    assert attempt.response_body == "ok\ufffd\x01\ufffdbin"
    assert Delivery.objects.get().status == Delivery.Status.DELIVERED


def test_an_endpoint_deleted_while_its_request_is_out_does_not_stop_the_worker(receiver):
    # The attempt's foreign key once failed every flush after it: nothing else was recorded.
    doomed = make_endpoint(receiver, "/doomed")
    kept = make_endpoint(receiver, "/kept")

    def delete_then_answer(got):
        from django.db import connection

        # On the receiver's thread: its own connection, closed so the test database can go.
        Endpoint.objects.filter(id=doomed.id).delete()
        connection.close()
        return 200, {}, "ok"

    receiver.script("/doomed", delete_then_answer)
    seen = listen(signals.delivery_succeeded)
    Author.objects.create(name="a")
    drain()
    assert len(receiver.received("/doomed")) == len(receiver.received("/kept")) == 1
    [delivery] = Delivery.objects.all()
    assert (delivery.endpoint_id, delivery.status) == (kept.id, Delivery.Status.DELIVERED)
    assert [a.delivery_id for a in Attempt.objects.all()] == [delivery.id]
    assert [call["endpoint_id"] for call in seen] == [kept.id]


def burst_or_fail(worker: Worker, timeout: float = 30) -> None:
    """Run ``worker`` in burst mode; fail the test, stopping it, if it has not finished within ``timeout``."""
    thread = threading.Thread(target=worker.run, kwargs={"burst": True})
    thread.start()
    thread.join(timeout=timeout)
    if thread.is_alive():
        worker.stop()
        thread.join(timeout=timeout)
        pytest.fail("the worker did not get past the result it could not record")


def test_a_result_the_database_refuses_is_recorded_stripped_and_the_rest_of_its_batch_whole():
    # A transport's error text with a lone surrogate: SQLite's driver cannot encode it and
    # PostgreSQL's JSON refuses it. The batch once failed as a whole: on SQLite the error
    # ended the worker; on PostgreSQL every flush failed again, for ever.
    from hookpost.transports import TransportError
    from hookpost.transports.memory import MemoryTransport

    transport = MemoryTransport()
    transport.script("https://bad.example.com/x", TransportError("reset by \udcff peer"), 200)
    transport.script("https://good.example.com/x", 200)
    bad = Endpoint.objects.create(url="https://bad.example.com/x", event_types=["*"], retry_schedule=[0, 0])
    good = Endpoint.objects.create(url="https://good.example.com/x", event_types=["*"])
    Author.objects.create(name="a")
    burst_or_fail(Worker(transport=transport, poll_interval=0.01, concurrency=10))
    assert set(Delivery.objects.values_list("status", flat=True)) == {Delivery.Status.DELIVERED}
    failed, succeeded = Attempt.objects.filter(delivery__endpoint=bad).order_by("number")
    assert failed.status_code is None and failed.request_headers == {} and failed.response_body == ""
    assert failed.error.startswith("TransportError: reset by \\udcff peer; attempt details not stored")
    assert succeeded.error == "" and succeeded.request_headers["webhook-id"]
    [whole] = Attempt.objects.filter(delivery__endpoint=good)
    assert whole.request_headers["webhook-id"] and whole.status_code == 200


@pytest.mark.skipif(
    "os.environ.get('HOOKPOST_DB') != 'postgresql'", reason="an int column overflowing is PostgreSQL's"
)
def test_a_result_no_database_can_store_is_logged_and_its_delivery_keeps_its_lease_until_shutdown(caplog):
    # Attempt number 2**31 overflows the attempt log's integer column, stripped or not.
    from hookpost.transports.memory import MemoryTransport

    transport = MemoryTransport()
    stuck = Endpoint.objects.create(url="https://stuck.example.com/x", event_types=["*"])
    fine = Endpoint.objects.create(url="https://fine.example.com/x", event_types=["*"])
    Author.objects.create(name="a")
    Worker(transport=transport, poll_interval=0.01).run(burst=True)  # fan-out and deliver once
    Delivery.objects.update(status=Delivery.Status.PENDING, next_attempt_at=timezone.now())
    Delivery.objects.filter(endpoint=stuck).update(attempt_count=2**31 - 1)
    Attempt.objects.all().delete()
    transport.reset()
    with caplog.at_level("ERROR", logger="hookpost.worker"):
        burst_or_fail(Worker(transport=transport, poll_interval=0.01, concurrency=10))
    # Kept its lease through the burst: sent once, not claimed and sent again.
    assert [r.url for r in transport.requests].count(stuck.url) == 1
    left = Delivery.objects.get(endpoint=stuck)
    assert (left.status, left.attempt_count) == (Delivery.Status.PENDING, 2**31 - 1)
    assert left.lease_owner == "" and left.lease_expires_at is None  # released when the burst ended
    assert not Attempt.objects.filter(delivery=left).exists()
    assert Delivery.objects.get(endpoint=fine).status == Delivery.Status.DELIVERED
    assert any(f"delivery {left.id}: attempt {2**31} could not be recorded" in m for m in caplog.messages)
