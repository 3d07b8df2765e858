"""Management commands: hookpost_worker, hookpost_replay and hookpost_prune, with their errors."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from hookpost import outbox
from hookpost.models import Attempt, Delivery, Endpoint, Event, InboundWebhook
from library.models import Author
from tests.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- hookpost_worker -------------------------------------------------------------------------


def test_worker_burst_delivers_and_reports(receiver):
    Endpoint.objects.create(url=receiver.url(), event_types=["*"])
    Author.objects.create(name="a")
    out = run("hookpost_worker", "--burst", "--concurrency", "5", "--worker-id", "cmd-test")
    assert "worker cmd-test:" in out and "delivered 1" in out
    assert len(receiver.received()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "at least 1"),
        (["--batch-size", "x"], "at least 1"),
        (["--database", "nope"], "unknown database 'nope'"),
    ],
)
def test_worker_refuses_bad_options_with_a_hint(args, message):
    with pytest.raises(CommandError, match=message):
        run("hookpost_worker", "--burst", *args)


# --- hookpost_replay ---------------------------------------------------------------------------


@pytest.fixture
def dead_delivery(receiver):
    receiver.script("/hooks", 500)
    Endpoint.objects.create(url=receiver.url(), event_types=["*"], retry_schedule=[0])
    Author.objects.create(name="a")
    run("hookpost_worker", "--burst")
    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.DEAD
    return delivery


def test_replay_of_dead_deliveries_resends_with_the_same_webhook_id(receiver, dead_delivery):
    receiver.script("/hooks", 200)
    assert run("hookpost_replay", "--status", "dead", "--since", "1h") == "replayed 1 deliveries\n"
    replay = Delivery.objects.get(replay_of=dead_delivery)
    assert replay.status == Delivery.Status.PENDING
    run("hookpost_worker", "--burst")
    first, second = receiver.received()
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == dead_delivery.event_id
    replay.refresh_from_db()
    assert replay.status == Delivery.Status.DELIVERED
    # Already replayed: the same selection does not replay it again.
    assert run("hookpost_replay", "--status", "dead", "--since", "1h") == "replayed 0 deliveries\n"


def test_replay_by_id_endpoint_and_type_pattern(dead_delivery):
    assert "would replay 1" in run("hookpost_replay", "--delivery", str(dead_delivery.id), "--dry-run")
    endpoint = str(dead_delivery.endpoint_id)
    assert "would replay 1" in run("hookpost_replay", "--endpoint", endpoint, "--dry-run")
    assert "would replay 1" in run("hookpost_replay", "--event-type", "library.*", "--dry-run")
    assert "would replay 0" in run("hookpost_replay", "--event-type", "shop.*", "--dry-run")
    assert "would replay 0" in run("hookpost_replay", "--status", "delivered", "--since", "1h", "--dry-run")
    assert not Delivery.objects.filter(replay_of__isnull=False).exists()


def test_pending_deliveries_are_never_replayed(receiver):
    Endpoint.objects.create(url=receiver.url(), event_types=["*"])
    Author.objects.create(name="a")
    outbox.fan_out()
    pending = Delivery.objects.get()
    assert run("hookpost_replay", "--delivery", str(pending.id)) == "replayed 0 deliveries\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "choose what to replay"),
        (["--delivery", "999999"], "no delivery with id 999999"),
        (["--since", "yesterday-ish"], "cannot read 'yesterday-ish' as a time"),
        (["--event-type", "bad type"], "invalid event type pattern"),
    ],
)
def test_replay_refuses_bad_selections_with_a_hint(args, message):
    with pytest.raises(CommandError, match=message):
        run("hookpost_replay", *args)


# --- hookpost_prune ----------------------------------------------------------------------------


def test_prune_deletes_old_finished_work_and_keeps_pending_and_recent(receiver):
    Endpoint.objects.create(url=receiver.url(), event_types=["*"])
    Author.objects.create(name="old")
    run("hookpost_worker", "--burst")
    old = timezone.now() - dt.timedelta(days=40)
    Event.objects.update(occurred_at=old)
    Delivery.objects.update(finished_at=old, created_at=old)
    Attempt.objects.update(started_at=old)
    Author.objects.create(name="recent")
    run("hookpost_worker", "--burst")
    Author.objects.create(name="pending, old")
    outbox.fan_out()
    Event.objects.filter(deliveries__status="pending").update(occurred_at=old)

    out = run("hookpost_prune", "--days", "30", "--dry-run")
    assert out.startswith("would delete 1 attempts, 1 deliveries, 1 events")
    assert Attempt.objects.count() == 2

    out = run("hookpost_prune", "--days", "30")
    assert out.startswith("deleted 1 attempts, 1 deliveries, 1 events")
    assert Attempt.objects.count() == 1
    assert sorted(Delivery.objects.values_list("status", flat=True)) == ["delivered", "pending"]
    assert Event.objects.count() == 2


def test_prune_deletes_old_handled_received_webhooks_and_keeps_pending_and_recent():
    old = timezone.now() - dt.timedelta(days=40)
    for number, (status, received_at) in enumerate(
        [
            ("processed", old),
            ("failed", old),
            ("ignored", old),
            ("pending", old),
            ("processed", timezone.now()),
        ]
    ):
        InboundWebhook.objects.create(
            source="library",
            webhook_id=f"msg_{number}",
            sent_at=received_at,
            received_at=received_at,
            body="{}",
            status=status,
        )

    out = run("hookpost_prune", "--days", "30", "--dry-run")
    assert out.startswith("would delete 0 attempts, 0 deliveries, 0 events, 3 received webhooks")
    assert InboundWebhook.objects.count() == 5

    out = run("hookpost_prune", "--days", "30")
    assert out.startswith("deleted 0 attempts, 0 deliveries, 0 events, 3 received webhooks")
    assert sorted(InboundWebhook.objects.values_list("webhook_id", flat=True)) == ["msg_3", "msg_4"]


def test_prune_refuses_a_bad_day_count():
    with pytest.raises(CommandError, match="at least 1"):
        run("hookpost_prune", "--days", "0")


def test_prune_keeps_an_original_while_its_replay_lives(receiver, dead_delivery):
    run("hookpost_replay", "--delivery", str(dead_delivery.id))
    old = timezone.now() - dt.timedelta(days=40)
    Delivery.objects.filter(id=dead_delivery.id).update(finished_at=old)
    Attempt.objects.update(started_at=old)
    run("hookpost_prune", "--days", "30")
    assert Delivery.objects.filter(id=dead_delivery.id).exists()
    assert Delivery.objects.filter(replay_of=dead_delivery).count() == 1
