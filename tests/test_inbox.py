"""The inbox: how each processing mode stores and handles received webhooks, retries, replays, reprocess."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, transaction
from django.test.utils import override_settings
from django.utils import timezone

from hookpost import inbox, signals, signing, sources
from hookpost.inbox import Outcome
from hookpost.models import Event, InboundWebhook
from hookpost.worker import Worker
from library.models import Author

pytestmark = pytest.mark.django_db

SECRET = signing.generate_secret()
Status = InboundWebhook.Status


def make_source(mode: str = "inline", *, event_types: tuple[str, ...] = ()) -> sources.SourceConfig:
    return sources.build("partner", {"secrets": [SECRET], "mode": mode, "event_types": list(event_types)})


def deliver(
    source: sources.SourceConfig,
    msg_id: str = "msg_1",
    *,
    event_type: str = "library.book.deleted",
    data: Any = None,
) -> inbox.Received:
    """Sign, verify, decode and receive one webhook, as the view does."""
    body = json.dumps({"type": event_type, "data": {"pk": 1} if data is None else data}).encode()
    headers = signing.sign_headers(msg_id, int(time.time()), body, [SECRET])
    message = signing.verify(headers, body, source.keys)
    text, payload = inbox.decode(body)
    return inbox.receive(source, message, event_type=event_type, body=text, payload=payload, headers=headers)


class Handler:
    """A webhook_received receiver that records its calls and can write, fail, or wait."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.write = False
        self.entered = threading.Event()
        self.release: threading.Event | None = None

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        self.calls.append({"sender": sender, **kwargs})
        self.entered.set()
        if self.release is not None:
            self.release.wait(10)
        if self.write:
            Author.objects.create(name=f"written by handler {len(self.calls)}")
        if self.error is not None:
            raise self.error


@pytest.fixture
def handler():
    h = Handler()
    signals.webhook_received.connect(h, weak=False, dispatch_uid="test-inbox-handler")
    yield h
    signals.webhook_received.disconnect(dispatch_uid="test-inbox-handler")


@pytest.fixture
def schedule():
    """Handling retries after 1 s, then 1 h, then never (three attempts), without jitter."""
    hookpost = {**settings.HOOKPOST, "RECEIVER_RETRY_SCHEDULE": [0, "1s", "1h"], "RETRY_JITTER": 0}
    with override_settings(HOOKPOST=hookpost):
        yield


def row(received: inbox.Received) -> InboundWebhook:
    return InboundWebhook.objects.get(pk=received.webhook.pk)


def row_status(webhook: InboundWebhook) -> tuple[str, int]:
    fresh = InboundWebhook.objects.get(pk=webhook.pk)
    return fresh.status, fresh.attempts


def make_due(webhook: InboundWebhook | int) -> None:
    pk = webhook if isinstance(webhook, int) else webhook.pk
    InboundWebhook.objects.filter(pk=pk).update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1))


def lease_expired(webhook: InboundWebhook) -> None:
    InboundWebhook.objects.filter(pk=webhook.pk).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )


# --- inline ---------------------------------------------------------------------------------------


def test_an_inline_webhook_is_handled_at_once_and_stored_processed(handler):
    before = timezone.now()
    received = deliver(make_source("inline"))
    assert received.outcome is Outcome.PROCESSED and received.error is None
    assert len(handler.calls) == 1
    webhook = row(received)
    assert (webhook.status, webhook.attempts, webhook.last_error) == (Status.PROCESSED, 1, "")
    assert before <= webhook.processed_at <= timezone.now()
    assert webhook.next_attempt_at is None and webhook.lease_expires_at is None
    assert (webhook.source, webhook.webhook_id) == ("partner", "msg_1")
    assert webhook.event_type == "library.book.deleted"


def test_an_inline_handler_failure_marks_the_row_failed_and_rolls_back_the_handlers_writes(handler):
    handler.write = True
    handler.error = RuntimeError("the handler broke")
    received = deliver(make_source("inline"))
    assert received.outcome is Outcome.FAILED and received.error is handler.error
    webhook = row(received)
    assert (webhook.status, webhook.attempts, webhook.processed_at) == (Status.FAILED, 1, None)
    assert webhook.last_error.startswith("Traceback (most recent call last):")
    assert "RuntimeError: the handler broke" in webhook.last_error
    assert "in __call__" in webhook.last_error
    # The author the handler created, and the event its capture wrote, went with the savepoint.
    assert not Author.objects.exists()
    assert not Event.objects.exists()


def test_a_huge_error_message_is_kept_as_the_end_of_the_traceback_about_8000_characters(handler):
    handler.error = RuntimeError("x" * 50_000 + "THE END")
    webhook = row(deliver(make_source("inline")))
    assert webhook.status == Status.FAILED
    assert 7_900 <= len(webhook.last_error) <= 8_001
    assert webhook.last_error.startswith("…")
    assert webhook.last_error.endswith("xxxTHE END\n")


def test_a_duplicate_of_a_processed_webhook_is_not_handled_again(handler):
    source = make_source("inline")
    first = deliver(source)
    again = deliver(source)
    assert again.outcome is Outcome.DUPLICATE
    assert again.webhook.pk == first.webhook.pk
    assert len(handler.calls) == 1
    webhook = row(first)
    assert (webhook.status, webhook.attempts) == (Status.PROCESSED, 1)
    assert InboundWebhook.objects.count() == 1


def test_a_duplicate_of_a_failed_inline_webhook_is_handled_again(handler):
    source = make_source("inline")
    handler.error = RuntimeError("not yet")
    assert deliver(source).outcome is Outcome.FAILED
    handler.error = None
    handler.write = True
    again = deliver(source)
    assert again.outcome is Outcome.PROCESSED and again.error is None
    assert len(handler.calls) == 2
    webhook = row(again)
    assert (webhook.status, webhook.attempts, webhook.last_error) == (Status.PROCESSED, 2, "")
    assert webhook.processed_at is not None
    assert Author.objects.count() == 1


def test_a_duplicate_of_a_failed_inline_webhook_that_fails_again_counts_another_attempt(handler):
    source = make_source("inline")
    handler.error = RuntimeError("still broken")
    deliver(source)
    again = deliver(source)
    assert again.outcome is Outcome.FAILED
    webhook = row(again)
    assert (webhook.status, webhook.attempts) == (Status.FAILED, 2)
    assert "still broken" in webhook.last_error


@pytest.mark.parametrize("mode", ["inline", "on_commit", "worker"])
def test_an_event_type_the_source_does_not_accept_is_stored_ignored_and_never_handled(
    handler, mode, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        received = deliver(make_source(mode, event_types=("billing.*",)))
    assert received.outcome is Outcome.IGNORED
    assert callbacks == []
    assert inbox.process_due() == 0
    assert handler.calls == []
    webhook = row(received)
    assert (webhook.status, webhook.attempts, webhook.next_attempt_at) == (Status.IGNORED, 0, None)


# --- on_commit ------------------------------------------------------------------------------------


def test_an_on_commit_webhook_is_stored_pending_under_a_lease_and_handled_after_commit(
    handler, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        before = timezone.now()
        received = deliver(make_source("on_commit"))
        assert received.outcome is Outcome.QUEUED
        assert handler.calls == []
        webhook = row(received)
        assert (webhook.status, webhook.attempts) == (Status.PENDING, 0)
        lease = dt.timedelta(seconds=60)  # LEASE_SECONDS' default
        assert before + lease <= webhook.lease_expires_at <= timezone.now() + lease
        # Leased by this request: no worker takes it meanwhile.
        assert inbox.claim_due(limit=10) == []
    assert len(callbacks) == 1
    assert len(handler.calls) == 1
    webhook = row(received)
    assert (webhook.status, webhook.attempts, webhook.lease_expires_at) == (Status.PROCESSED, 1, None)
    assert webhook.processed_at is not None and webhook.next_attempt_at is None


@pytest.mark.django_db(transaction=True)
def test_an_on_commit_webhook_is_not_handled_before_its_transaction_commits(handler):
    source = make_source("on_commit")
    with transaction.atomic():
        received = deliver(source)
        Author.objects.create(name="written in the same transaction")
        assert handler.calls == []
        assert row(received).status == Status.PENDING
    assert len(handler.calls) == 1
    assert row(received).status == Status.PROCESSED


@pytest.mark.django_db(transaction=True)
def test_an_on_commit_webhook_rolled_back_with_its_transaction_is_never_stored_nor_handled(handler):
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        deliver(make_source("on_commit"))
        raise Abort
    assert handler.calls == []
    assert not InboundWebhook.objects.exists()


def test_an_on_commit_handler_failure_leaves_the_row_pending_for_a_retry_on_schedule(
    handler, schedule, django_capture_on_commit_callbacks
):
    handler.write = True
    handler.error = RuntimeError("after commit")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        received = deliver(make_source("on_commit"))
    before = timezone.now()
    for callback in callbacks:
        callback()
    after = timezone.now()
    assert len(handler.calls) == 1
    webhook = row(received)
    assert (webhook.status, webhook.attempts, webhook.lease_expires_at) == (Status.PENDING, 1, None)
    # The schedule's delay after the first attempt: 1 s.
    delay = dt.timedelta(seconds=1)
    assert before + delay <= webhook.next_attempt_at <= after + delay
    assert "RuntimeError: after commit" in webhook.last_error
    assert webhook.processed_at is None
    assert not Author.objects.exists()
    # Not due yet; once it is, the worker retries it.
    assert inbox.process_due() == 0
    handler.error = None
    make_due(webhook)
    assert inbox.process_due() == 1
    webhook = row(received)
    assert (webhook.status, webhook.attempts, webhook.last_error) == (Status.PROCESSED, 2, "")


def test_an_on_commit_webhook_whose_process_died_before_handling_is_handled_once_its_lease_expires(
    handler, django_capture_on_commit_callbacks
):
    # The callbacks never run: the process "died" between commit and handling.
    with django_capture_on_commit_callbacks(execute=False):
        received = deliver(make_source("on_commit"))
    assert inbox.process_due() == 0
    assert handler.calls == []
    lease_expired(received.webhook)
    assert inbox.process_due() == 1
    assert len(handler.calls) == 1
    webhook = row(received)
    assert (webhook.status, webhook.attempts) == (Status.PROCESSED, 1)


@pytest.mark.django_db(transaction=True)
def test_the_worker_handles_an_on_commit_webhook_whose_process_died_right_after_commit(handler):
    class ProcessDied(Exception):
        pass

    def die() -> None:
        raise ProcessDied

    # Callbacks run in order: this one "kills the process" before the inbox's callback runs.
    with pytest.raises(ProcessDied), transaction.atomic():
        transaction.on_commit(die)
        received = deliver(make_source("on_commit"))
    assert handler.calls == []
    assert row(received).status == Status.PENDING
    assert Worker(poll_interval=0.01).run(burst=True).handled == 0
    lease_expired(received.webhook)
    stats = Worker(poll_interval=0.01).run(burst=True)
    assert stats.handled == 1
    assert len(handler.calls) == 1
    assert row(received).status == Status.PROCESSED


# --- worker ---------------------------------------------------------------------------------------


def test_a_worker_mode_webhook_is_stored_pending_unleased_and_due_now(handler):
    before = timezone.now()
    received = deliver(make_source("worker"))
    assert received.outcome is Outcome.QUEUED
    assert handler.calls == []
    webhook = row(received)
    assert (webhook.status, webhook.attempts, webhook.lease_expires_at) == (Status.PENDING, 0, None)
    assert before <= webhook.next_attempt_at <= timezone.now()
    assert list(InboundWebhook.objects.due()) == [webhook]


def test_claim_due_leases_due_webhooks_oldest_first_within_the_limit():
    source = make_source("worker")
    ids = [deliver(source, f"msg_{n}").webhook.pk for n in range(4)]
    now = timezone.now()
    # Due times out of insertion order: 2 is the oldest, then 0, then 3; 1 is not due yet.
    for pk, seconds in zip(ids, (-20, 60, -30, -10), strict=True):
        InboundWebhook.objects.filter(pk=pk).update(next_attempt_at=now + dt.timedelta(seconds=seconds))
    assert inbox.claim_due(limit=2, now=now) == [ids[2], ids[0]]
    lease = now + dt.timedelta(seconds=60)
    leases = dict(InboundWebhook.objects.values_list("pk", "lease_expires_at"))
    assert (leases[ids[2]], leases[ids[0]], leases[ids[1]], leases[ids[3]]) == (lease, lease, None, None)
    assert inbox.claim_due(limit=2, now=now) == [ids[3]]
    assert inbox.claim_due(limit=2, now=now) == []


def test_leased_webhooks_are_not_claimed_again_until_their_lease_expires():
    source = make_source("worker")
    first, second = (deliver(source, f"msg_{n}").webhook.pk for n in range(2))
    now = timezone.now()
    assert inbox.claim_due(limit=10, now=now) == [first, second]
    assert inbox.claim_due(limit=10, now=now + dt.timedelta(seconds=59)) == []
    assert inbox.claim_due(limit=10, now=now + dt.timedelta(seconds=60)) == [first, second]


def test_process_due_handles_claimed_webhooks_and_says_how_many(handler):
    source = make_source("worker")
    ids = [deliver(source, f"msg_{n}").webhook.pk for n in range(3)]
    assert inbox.process_due(limit=2) == 2
    assert [call["webhook"].pk for call in handler.calls] == ids[:2]
    assert inbox.process_due(limit=2) == 1
    assert inbox.process_due(limit=2) == 0
    assert len(handler.calls) == 3
    assert set(InboundWebhook.objects.values_list("status", "attempts")) == {(Status.PROCESSED, 1)}
    assert not InboundWebhook.objects.filter(lease_expires_at__isnull=False).exists()


def test_worker_mode_failures_are_retried_on_schedule_until_it_is_exhausted_then_failed(handler, schedule):
    handler.write = True
    handler.error = RuntimeError("down")
    received = deliver(make_source("worker"))
    expected_delays = [dt.timedelta(seconds=1), dt.timedelta(hours=1)]
    for attempt, delay in enumerate(expected_delays, start=1):
        before = timezone.now()
        assert inbox.process_due() == 1
        after = timezone.now()
        webhook = row(received)
        assert (webhook.status, webhook.attempts, webhook.lease_expires_at) == (Status.PENDING, attempt, None)
        assert before + delay <= webhook.next_attempt_at <= after + delay
        assert "RuntimeError: down" in webhook.last_error
        # Not due again before its time.
        assert inbox.process_due() == 0
        make_due(webhook)
    assert inbox.process_due() == 1
    webhook = row(received)
    assert (webhook.status, webhook.attempts, webhook.next_attempt_at) == (Status.FAILED, 3, None)
    assert "RuntimeError: down" in webhook.last_error
    assert inbox.process_due() == 0
    assert len(handler.calls) == 3
    assert not Author.objects.exists()


def test_a_worker_retry_that_succeeds_clears_the_last_error(handler, schedule):
    handler.error = RuntimeError("once")
    received = deliver(make_source("worker"))
    inbox.process_due()
    handler.error = None
    make_due(received.webhook)
    assert inbox.process_due() == 1
    webhook = row(received)
    assert (webhook.status, webhook.attempts, webhook.last_error) == (Status.PROCESSED, 2, "")
    assert webhook.next_attempt_at is None


def test_process_called_twice_for_one_webhook_handles_it_once(handler):
    received = deliver(make_source("worker"))
    assert inbox.process(received.webhook.pk) is None
    assert inbox.process(received.webhook.pk) is None
    assert len(handler.calls) == 1
    assert row(received).attempts == 1


def test_a_worker_mode_webhook_waits_for_the_first_delay_of_the_schedule(handler):
    hookpost = {**settings.HOOKPOST, "RECEIVER_RETRY_SCHEDULE": ["10s", "1m"], "RETRY_JITTER": 0}
    with override_settings(HOOKPOST=hookpost):
        before = timezone.now()
        webhook = row(deliver(make_source("worker")))
        assert before + dt.timedelta(seconds=10) <= webhook.next_attempt_at
        assert inbox.process_due() == 0
        make_due(webhook)
        assert inbox.process_due() == 1
    assert len(handler.calls) == 1


def test_process_leaves_a_pending_webhook_that_is_not_due_yet(handler, schedule):
    # A processor that waited on the row lock while the one before it failed and put the
    # webhook off must not run it again at once.
    webhook = row(deliver(make_source("worker")))
    InboundWebhook.objects.filter(pk=webhook.pk).update(
        next_attempt_at=timezone.now() + dt.timedelta(hours=1)
    )
    assert inbox.process(webhook.pk) is None
    assert handler.calls == []
    assert row_status(webhook) == (Status.PENDING, 0)


def test_process_returns_the_handlers_error(handler, schedule):
    received = deliver(make_source("worker"))
    handler.error = KeyError("missing")
    assert inbox.process(received.webhook.pk) is handler.error
    assert row(received).status == Status.PENDING


@pytest.mark.django_db(transaction=True)
def test_a_processor_that_waits_for_a_webhook_locked_by_another_does_not_handle_it_again(handler):
    received = deliver(make_source("worker"))
    handler.release = threading.Event()
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = inbox.process(received.webhook.pk)
        except Exception as exc:  # surfaced by the assertions below
            results[name] = exc
        finally:
            connections.close_all()

    first = threading.Thread(target=run, args=("first",))
    second = threading.Thread(target=run, args=("second",))
    first.start()
    try:
        assert handler.entered.wait(10)
        # The second processor reaches the row while the first holds it mid-handling.
        second.start()
        time.sleep(0.3)
    finally:
        handler.release.set()
        first.join(10)
        if second.ident is not None:
            second.join(10)
    assert results == {"first": None, "second": None}
    assert len(handler.calls) == 1
    webhook = row(received)
    assert (webhook.status, webhook.attempts) == (Status.PROCESSED, 1)


@pytest.mark.django_db(transaction=True)
def test_the_worker_handles_due_webhooks_in_batches_and_counts_them(handler):
    source = make_source("worker")
    for n in range(5):
        deliver(source, f"msg_{n}")
    deliver(make_source("worker"), "later", data={"pk": 2})
    InboundWebhook.objects.filter(webhook_id="later").update(
        next_attempt_at=timezone.now() + dt.timedelta(hours=1)
    )
    stats = Worker(batch_size=2, poll_interval=0.01).run(burst=True)
    assert stats.handled == 5
    assert len(handler.calls) == 5
    assert InboundWebhook.objects.processed().count() == 5
    assert InboundWebhook.objects.get(webhook_id="later").status == Status.PENDING


def test_a_replay_of_a_failed_worker_webhook_starts_a_fresh_round(handler, schedule):
    source = make_source("worker")
    handler.error = RuntimeError("down")
    received = deliver(source)
    for _ in range(3):
        make_due(received.webhook)
        inbox.process_due()
    assert row(received).status == Status.FAILED
    before = timezone.now()
    again = deliver(source)
    assert again.outcome is Outcome.QUEUED
    assert len(handler.calls) == 3
    webhook = row(again)
    assert webhook.pk == received.webhook.pk
    assert (webhook.status, webhook.attempts, webhook.lease_expires_at) == (Status.PENDING, 0, None)
    assert before <= webhook.next_attempt_at <= timezone.now()
    handler.error = None
    assert inbox.process_due() == 1
    webhook = row(again)
    assert (webhook.status, webhook.attempts, webhook.last_error) == (Status.PROCESSED, 1, "")


def test_a_replay_of_a_failed_on_commit_webhook_is_handled_after_its_transaction_commits(
    handler, django_capture_on_commit_callbacks
):
    source = make_source("on_commit")
    with django_capture_on_commit_callbacks(execute=False):
        received = deliver(source)
    handler.error = RuntimeError("down")
    inbox.reprocess([received.webhook.pk])
    assert row(received).status == Status.FAILED
    handler.error = None
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = deliver(source)
        assert again.outcome is Outcome.QUEUED
        webhook = row(again)
        assert (webhook.status, webhook.attempts) == (Status.PENDING, 0)
        assert webhook.lease_expires_at is not None
        assert len(handler.calls) == 1
    assert len(callbacks) == 1
    webhook = row(again)
    assert (webhook.status, webhook.attempts, webhook.last_error) == (Status.PROCESSED, 1, "")


def test_a_duplicate_of_a_pending_worker_webhook_changes_nothing(handler):
    source = make_source("worker")
    received = deliver(source)
    stored = row(received)
    again = deliver(source)
    assert again.outcome is Outcome.DUPLICATE
    assert row(again).next_attempt_at == stored.next_attempt_at
    assert InboundWebhook.objects.count() == 1
    assert handler.calls == []


# --- reprocess ------------------------------------------------------------------------------------


def one_of_each_status(handler: Handler) -> dict[str, int]:
    handler.error = RuntimeError("first time")
    failed = deliver(make_source("inline"), "failed").webhook.pk
    handler.error = None
    processed = deliver(make_source("inline"), "processed").webhook.pk
    ignored = deliver(make_source("inline", event_types=("billing.*",)), "ignored").webhook.pk
    pending = deliver(make_source("worker"), "pending").webhook.pk
    handler.calls.clear()
    return {"processed": processed, "failed": failed, "ignored": ignored, "pending": pending}


def test_reprocess_handles_webhooks_whatever_their_status_and_skips_missing_ids(handler):
    ids = one_of_each_status(handler)
    attempts = dict(InboundWebhook.objects.values_list("pk", "attempts"))
    missing = max(ids.values()) + 1000
    result = inbox.reprocess([*ids.values(), missing])
    assert result == dict.fromkeys(ids.values())
    assert sorted(call["webhook"].pk for call in handler.calls) == sorted(ids.values())
    for pk in ids.values():
        webhook = InboundWebhook.objects.get(pk=pk)
        assert (webhook.status, webhook.last_error) == (Status.PROCESSED, "")
        assert webhook.attempts == attempts[pk] + 1
        assert webhook.processed_at is not None and webhook.next_attempt_at is None


def test_reprocess_records_a_failure_as_failed_without_a_retry(handler, schedule):
    ids = one_of_each_status(handler)
    handler.write = True
    handler.error = ValueError("bad data")
    result = inbox.reprocess([ids["processed"], ids["pending"]])
    assert set(result) == {ids["processed"], ids["pending"]}
    assert all(error is handler.error for error in result.values())
    for pk in (ids["processed"], ids["pending"]):
        webhook = InboundWebhook.objects.get(pk=pk)
        assert (webhook.status, webhook.next_attempt_at, webhook.processed_at) == (Status.FAILED, None, None)
        assert "ValueError: bad data" in webhook.last_error
    assert not Author.objects.exists()
    assert inbox.process_due() == 0


# --- decode ---------------------------------------------------------------------------------------


def test_decode_returns_the_text_and_the_json_of_a_utf8_body():
    body = '{"type": "library.book.deleted", "data": {"title": "Été ☃"}}'.encode()
    text, payload = inbox.decode(body)
    assert text == body.decode("utf-8")
    assert payload == {"type": "library.book.deleted", "data": {"title": "Été ☃"}}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param('{"title": "Été"}'.encode("latin-1"), id="latin-1"),
        pytest.param('{"a": 1}'.encode("utf-16"), id="utf-16"),
        pytest.param(b'{"a": NaN}', id="NaN"),
        pytest.param(b'{"a": Infinity}', id="Infinity"),
        pytest.param(b"[-Infinity]", id="-Infinity"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
        pytest.param(b'{"a": 1', id="truncated"),
        pytest.param(b"", id="empty"),
    ],
)
def test_decode_refuses_what_is_not_utf8_json(body):
    with pytest.raises(ValueError):  # noqa: PT011
        inbox.decode(body)


# --- what handlers get ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inline", "on_commit", "worker"])
def test_handlers_get_the_row_the_decoded_payload_the_source_and_the_event_type(
    handler, mode, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        received = deliver(make_source(mode), "msg_args", data={"title": "Dune", "tags": ["sf"]})
    inbox.process_due()
    [call] = handler.calls
    assert call["sender"] is InboundWebhook
    assert call["signal"] is signals.webhook_received
    assert call["source"] == "partner"
    assert call["event_type"] == "library.book.deleted"
    assert call["payload"] == {"type": "library.book.deleted", "data": {"title": "Dune", "tags": ["sf"]}}
    webhook = call["webhook"]
    assert isinstance(webhook, InboundWebhook)
    assert webhook.pk == received.webhook.pk
    assert webhook.webhook_id == "msg_args"
    assert webhook.headers["webhook-id"] == "msg_args"
    assert webhook.attempts == 1
    assert set(call) == {"sender", "signal", "source", "event_type", "payload", "webhook"}


# --- PostgreSQL wakes the worker --------------------------------------------------------------


@pytest.fixture
def listener():
    wrapper = connections["default"]
    if wrapper.vendor != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    conn = wrapper.get_new_connection(wrapper.get_connection_params())
    conn.autocommit = True
    conn.execute("LISTEN hookpost")
    yield conn
    conn.close()


@pytest.mark.django_db(transaction=True)
def test_storing_a_worker_mode_webhook_notifies_the_worker_after_commit(listener):
    with transaction.atomic():
        deliver(make_source("worker"))
        assert list(listener.notifies(timeout=0.2)) == []
    [notify] = listener.notifies(timeout=5, stop_after=1)
    assert notify.channel == "hookpost"
    assert notify.payload == InboundWebhook._meta.db_table


@pytest.mark.django_db(transaction=True)
def test_inline_and_on_commit_webhooks_notify_nobody(listener, handler):
    deliver(make_source("inline"), "inline")
    deliver(make_source("on_commit"), "on_commit")
    deliver(make_source("worker", event_types=("billing.*",)), "ignored")
    assert InboundWebhook.objects.count() == 3
    assert len(handler.calls) == 2
    assert list(listener.notifies(timeout=0.5)) == []


@pytest.mark.django_db(transaction=True)
def test_a_replayed_failed_worker_webhook_notifies_the_worker_and_a_put_off_retry_does_not(
    listener, handler, schedule
):
    received = deliver(make_source("worker"))
    assert len(list(listener.notifies(timeout=5, stop_after=1))) == 1
    handler.error = RuntimeError("down")
    make_due(received.webhook)
    inbox.process_due()  # fails: pending again, put off by the schedule
    assert list(listener.notifies(timeout=0.3)) == []
    InboundWebhook.objects.filter(pk=received.webhook.pk).update(status=Status.FAILED)
    assert deliver(make_source("worker")).outcome is Outcome.QUEUED  # the sender's replay
    assert len(list(listener.notifies(timeout=5, stop_after=1))) == 1


@pytest.mark.parametrize("mode", ["inline", "on_commit", "worker"])
def test_handlers_see_the_webhook_as_pending_in_every_mode(handler, mode, django_capture_on_commit_callbacks):
    seen = []
    signals.webhook_received.connect(
        lambda sender, webhook, **kwargs: seen.append((webhook.status, webhook.processed_at)),
        weak=False,
        dispatch_uid="test-inbox-status",
    )
    try:
        with django_capture_on_commit_callbacks(execute=True):
            received = deliver(make_source(mode))
        inbox.process_due()
    finally:
        signals.webhook_received.disconnect(dispatch_uid="test-inbox-status")
    assert seen == [(Status.PENDING, None)]
    stored = row(received)
    assert stored.status == Status.PROCESSED and stored.processed_at is not None
    assert received.webhook.processed_at in (None, stored.processed_at)


# --- the dedupe insert: one statement where the database can, a savepoint elsewhere -------------


@pytest.mark.parametrize("path", ["one statement", "savepoint"])
def test_the_dedupe_insert_stores_a_new_id_once_on_either_path(monkeypatch, handler, path):
    if path == "savepoint":
        # What databases without INSERT … ON CONFLICT … RETURNING take.
        monkeypatch.setattr(inbox, "_ONE_STATEMENT_VENDORS", ())
    first = deliver(make_source("inline"), data={"pk": 7})
    again = deliver(make_source("inline"), data={"pk": 7})
    assert (first.outcome, again.outcome) == (Outcome.PROCESSED, Outcome.DUPLICATE)
    assert first.webhook.pk == again.webhook.pk
    stored = InboundWebhook.objects.get()
    assert (stored.source, stored.webhook_id, stored.status, stored.attempts) == (
        "partner",
        "msg_1",
        Status.PROCESSED,
        1,
    )
    assert stored.payload == {"type": "library.book.deleted", "data": {"pk": 7}}
    assert stored.headers["webhook-id"] == "msg_1"
    assert stored.sent_at.tzinfo is not None and stored.processed_at is not None
    assert len(handler.calls) == 1
    # The row handed to handlers is the stored one, saved state and all.
    assert handler.calls[0]["webhook"].pk == stored.pk
    assert not handler.calls[0]["webhook"]._state.adding
