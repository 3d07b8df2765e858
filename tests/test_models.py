"""Models: endpoint subscriptions and secrets, state names of the outbox, and the signed request."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import hookpost
from hookpost import events as events_module
from hookpost import outbox, signing
from hookpost.delivery import USER_AGENT, build_request
from hookpost.models import Attempt, Delivery, Endpoint, Event
from library.models import Author

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 23, 20, 0, tzinfo=dt.UTC)


def make_endpoint(**kwargs: object) -> Endpoint:
    options = {"url": "https://hooks.example.com/in", "event_types": ["library.*"], **kwargs}
    return Endpoint.objects.create(**options)


# --- endpoints -----------------------------------------------------------------------------------


def test_new_endpoint_gets_a_whsec_secret_of_32_random_bytes():
    endpoint = make_endpoint()
    [secret] = endpoint.signing_secrets()
    assert secret.startswith("whsec_")
    assert len(signing.parse_secret(secret).material) == 32  # type: ignore[attr-defined]
    assert make_endpoint().signing_secrets() != [secret]


def test_endpoint_accepts_only_the_types_it_subscribes_to():
    endpoint = make_endpoint(event_types=["library.book.*", "auth.user.registered"])
    assert endpoint.accepts("library.book.deleted")
    assert endpoint.accepts("auth.user.registered")
    assert not endpoint.accepts("library.author.deleted")
    assert not make_endpoint(event_types=[]).accepts("library.book.deleted")
    everything = make_endpoint(event_types=["*"])
    assert Endpoint.objects.active().subscribed_to("x.y") == [everything]


def test_endpoint_states_are_named_by_queryset_methods():
    active = make_endpoint()
    paused = make_endpoint(status=Endpoint.Status.PAUSED)
    disabled = make_endpoint(status=Endpoint.Status.DISABLED)
    assert list(Endpoint.objects.active()) == [active]
    assert list(Endpoint.objects.paused()) == [paused]
    assert list(Endpoint.objects.disabled()) == [disabled]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("url", "ftp://example.com/x", "Enter a valid URL"),
        ("url", "not a url", "Enter a valid URL"),
        ("event_types", "library.*", "Give a list of event types"),
        ("event_types", ["library book"], "invalid event type pattern"),
        ("headers", {"X-Token": 5}, "mapping of names to string values"),
        ("headers", {"webhook-signature": "forged"}, "set by hookpost: webhook-signature"),
        ("headers", {"Content-Type": "text/plain"}, "set by hookpost: Content-Type"),
    ],
)
def test_endpoint_validation_refuses_bad_input_with_a_reason(field, value, message):
    endpoint = Endpoint(url="https://example.com/", event_types=["*"])
    setattr(endpoint, field, value)
    with pytest.raises(ValidationError, match=message):
        endpoint.full_clean()


def test_rotated_secret_keeps_signing_during_its_grace_period_only():
    endpoint = make_endpoint()
    [old] = endpoint.signing_secrets(NOW)
    new = endpoint.rotate_secret(dt.timedelta(hours=24), now=NOW)
    endpoint.save()
    endpoint.refresh_from_db()
    assert endpoint.signing_secrets(NOW) == [new, old]
    assert endpoint.signing_secrets(NOW + dt.timedelta(hours=23)) == [new, old]
    assert endpoint.signing_secrets(NOW + dt.timedelta(hours=24, seconds=1)) == [new]


def test_rotating_with_no_grace_stops_the_leaked_secret_at_once():
    endpoint = make_endpoint()
    new = endpoint.rotate_secret(dt.timedelta(0), now=NOW)
    assert endpoint.signing_secrets(NOW) == [new]


def test_rotating_twice_does_not_extend_an_older_secrets_grace():
    endpoint = make_endpoint()
    [first] = endpoint.signing_secrets(NOW)
    second = endpoint.rotate_secret(dt.timedelta(hours=1), now=NOW)
    third = endpoint.rotate_secret(dt.timedelta(hours=5), now=NOW + dt.timedelta(minutes=30))
    later = NOW + dt.timedelta(hours=2)
    assert endpoint.signing_secrets(later) == [third, second]
    assert first not in endpoint.signing_secrets(later)


# --- outbox state names ----------------------------------------------------------------------------


def test_event_states_are_named_by_queryset_methods():
    Author.objects.create(name="a")
    hookpost.emit("x.y", {})
    invalid = Event.objects.create(type="x.z", payload="{}", occurred_at=timezone.now(), error="bad")
    assert Event.objects.valid().count() == 2
    assert list(Event.objects.invalid()) == [invalid]
    assert [e.type for e in Event.objects.awaiting_fan_out()] == ["library.author.created", "x.y"]


def test_delivery_states_are_named_by_queryset_methods():
    endpoint = make_endpoint()
    now = timezone.now()
    events = [hookpost.emit(f"t.e{i}", {}) for i in range(7)]
    past, future = now - dt.timedelta(seconds=5), now + dt.timedelta(minutes=5)
    rows = {
        "due_first": Delivery(next_attempt_at=past),
        "due_retry": Delivery(next_attempt_at=past, attempt_count=2),
        "later": Delivery(next_attempt_at=future),
        "leased": Delivery(next_attempt_at=past, lease_owner="w1", lease_expires_at=future),
        "lease_expired": Delivery(next_attempt_at=past, lease_owner="w2", lease_expires_at=past),
        "delivered": Delivery(status=Delivery.Status.DELIVERED, attempt_count=1),
        "dead": Delivery(status=Delivery.Status.DEAD, attempt_count=10),
    }
    for event, row in zip(events, rows.values(), strict=True):
        row.event, row.endpoint = event, endpoint
    Delivery.objects.bulk_create(rows.values())

    def names(qs):
        return {name for name, row in rows.items() if qs.filter(pk=row.pk).exists()}

    assert names(Delivery.objects.due(now)) == {"due_first", "due_retry", "lease_expired"}
    assert names(Delivery.objects.leased(now)) == {"leased"}
    assert names(Delivery.objects.lease_expired(now)) == {"lease_expired"}
    assert names(Delivery.objects.pending()) == {
        "due_first",
        "due_retry",
        "later",
        "leased",
        "lease_expired",
    }
    assert names(Delivery.objects.first_attempts()) >= {"due_first", "later"}
    assert names(Delivery.objects.retries()) == {"due_retry", "delivered", "dead"}
    assert names(Delivery.objects.delivered()) == {"delivered"}
    assert names(Delivery.objects.dead()) == {"dead"}
    assert names(Delivery.objects.cancelled()) == set()


def test_a_delivery_exists_once_per_event_and_endpoint():
    from django.db import IntegrityError, transaction

    endpoint, event = make_endpoint(), hookpost.emit("a.b", {})
    Delivery.objects.create(event=event, endpoint=endpoint)
    with pytest.raises(IntegrityError), transaction.atomic():
        Delivery.objects.create(event=event, endpoint=endpoint)


def test_attempts_older_than_a_time_are_named_for_pruning():
    delivery = Delivery.objects.create(event=hookpost.emit("a.b", {}), endpoint=make_endpoint())
    old = Attempt.objects.create(
        delivery=delivery, number=1, started_at=NOW - dt.timedelta(days=40), verdict="retry"
    )
    Attempt.objects.create(delivery=delivery, number=2, started_at=NOW, verdict="delivered")
    assert list(Attempt.objects.older_than(NOW - dt.timedelta(days=30))) == [old]


# --- the signed request ----------------------------------------------------------------------


def test_request_carries_the_stored_payload_byte_for_byte_signed_with_the_event_id():
    author = Author.objects.create(name="Ünïcode ☃")
    event = Event.objects.get()
    endpoint = make_endpoint(headers={"X-Tenant": "acme"})
    request = build_request(event, endpoint, now=NOW)
    assert request.url == endpoint.url and request.method == "POST"
    assert request.body == event.payload.encode("utf-8")
    assert request.headers["webhook-id"] == event.id == request.msg_id
    assert request.headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["X-Tenant"] == "acme"
    verified = signing.verify(
        request.headers, request.body, endpoint.signing_secrets(NOW), now=NOW.timestamp()
    )
    assert verified.msg_id == event.id
    assert author.name in request.body.decode("utf-8")


def test_request_is_verified_by_the_standardwebhooks_package():
    Author.objects.create(name="x")
    endpoint = make_endpoint()
    request = build_request(Event.objects.get(), endpoint)
    payload = Webhook(endpoint.signing_secrets()[0]).verify(request.body, request.headers)
    assert payload["type"] == "library.author.created"


def test_during_a_grace_period_both_secrets_sign_and_either_verifies_alone():
    Author.objects.create(name="x")
    endpoint = make_endpoint()
    [old] = endpoint.signing_secrets()
    new = endpoint.rotate_secret(dt.timedelta(hours=24))
    request = build_request(Event.objects.get(), endpoint)
    entries = request.headers["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(e.startswith("v1,") for e in entries)
    for secret in (old, new):
        Webhook(secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(request.body, request.headers)


def test_after_the_grace_period_the_old_secret_no_longer_verifies():
    Author.objects.create(name="x")
    endpoint = make_endpoint()
    [old] = endpoint.signing_secrets()
    endpoint.rotate_secret(dt.timedelta(0))
    request = build_request(Event.objects.get(), endpoint)
    assert " " not in request.headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(request.body, request.headers)


def test_custom_headers_cannot_override_the_signature_headers():
    Author.objects.create(name="x")
    endpoint = make_endpoint()
    endpoint.headers = {"webhook-id": "forged"}  # bypasses validation on purpose
    request = build_request(Event.objects.get(), endpoint)
    assert request.headers["webhook-id"] == Event.objects.get().id


def test_an_endpoint_without_secrets_cannot_build_a_request():
    Author.objects.create(name="x")
    endpoint = make_endpoint()
    endpoint.secrets = [
        {
            "key": signing.generate_secret(),
            "created_at": "",
            "expires_at": (NOW - dt.timedelta(days=1)).isoformat(),
        }
    ]
    with pytest.raises(ValueError, match="no signing secret"):
        build_request(Event.objects.get(), endpoint, now=NOW)


# --- outbox writers ------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["native", "orm"])
def test_bulk_writers_store_the_same_rows_the_orm_would(writer):
    from django.db import connection

    from hookpost import outbox

    origin = {"model": "library.author", "pk": 1, "cascade": True}
    drafts = [
        outbox.EventDraft(f"a.b{i}", f'{{"n":{i}}}', NOW, origin, json.dumps(origin)) for i in range(3)
    ] + [outbox.EventDraft("a.c", "{}", NOW, None, None, "broken")]
    if writer == "native":
        outbox.record_events("default", drafts)
    else:
        outbox._write_with_orm(connection, events_module.new_message_ids(4), drafts)
    rows = list(Event.objects.order_by("id"))
    assert [(e.type, e.payload, e.occurred_at, e.origin, e.error) for e in rows] == [
        (f"a.b{i}", f'{{"n":{i}}}', NOW, origin, "") for i in range(3)
    ] + [("a.c", "{}", NOW, None, "broken")]
    assert [e.type for e in Event.objects.awaiting_fan_out()] == ["a.b0", "a.b1", "a.b2"]


# --- endpoint URLs ------------------------------------------------------------------------------

from django.test.utils import override_settings  # noqa: E402


@pytest.mark.parametrize(
    ("url", "settings_", "message"),
    [
        ("http://hooks.example.com/", {"ALLOW_HTTP": False}, "Use an https:// URL"),
        ("https://10.1.2.3/in", {}, "10.1.2.3 is not a public address"),
        ("https://169.254.169.254/latest", {}, "169.254.169.254 is not a public address"),
        ("https://[::1]/in", {}, "::1 is not a public address"),
        ("https://127.0.0.1/in", {}, "127.0.0.1 is not a public address"),
    ],
)
def test_endpoint_urls_are_checked_when_saved_from_a_form(url, settings_, message):
    with override_settings(HOOKPOST=settings_):
        endpoint = Endpoint(url=url, event_types=["*"])
        with pytest.raises(ValidationError, match=message):
            endpoint.full_clean()


@pytest.mark.parametrize(
    ("url", "settings_"),
    [
        ("https://hooks.example.com/in", {}),
        ("http://hooks.example.com/in", {"ALLOW_HTTP": True}),
        ("https://127.0.0.1:8000/in", {"ALLOWED_NETWORKS": ["127.0.0.0/8"]}),
        ("https://93.184.215.14/in", {}),
    ],
)
def test_endpoint_urls_that_are_allowed_pass(url, settings_):
    with override_settings(HOOKPOST=settings_):
        Endpoint(url=url, event_types=["*"]).full_clean()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X Team": "a"}, "Not valid header names: 'X Team'"),
        ({"X-Team:": "a"}, "Not valid header names"),
        ({"X-Team": "a\r\nX-Injected: 1"}, "Header values must be one line: X-Team"),
        ({"X-Team": "a\nb"}, "one line"),
        ({"X-Team": "a\x00"}, "one line"),
        ({"webhook-id": "forged"}, "set by hookpost"),
    ],
)
def test_custom_headers_must_be_tokens_with_one_line_values(headers, message):
    endpoint = Endpoint(url="https://hooks.example.com/in", event_types=["*"], headers=headers)
    with pytest.raises(ValidationError, match=message):
        endpoint.full_clean()


def test_a_header_value_is_never_echoed_in_its_error():
    endpoint = Endpoint(url="https://hooks.example.com/in", event_types=["*"], headers={"Auth": "tok\nen"})
    with pytest.raises(ValidationError) as caught:
        endpoint.full_clean()
    assert "tok" not in str(caught.value)


def test_deleting_an_endpoint_takes_its_replayed_deliveries_with_it():
    endpoint = Endpoint.objects.create(url="https://hooks.example.com/in", event_types=["*"])
    delivery = outbox.send_test_event(endpoint)
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DEAD)
    delivery.refresh_from_db()
    [replay] = outbox.replay([delivery])
    assert replay.replay_of_id == delivery.pk
    endpoint.delete()
    assert not Delivery.objects.exists() and not Endpoint.objects.exists()


def indexes(model: type) -> list[tuple[str, ...]]:
    """The column lists of ``model``'s table's indexes, primary key left out, as the database reports them."""
    from django.db import connection

    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, model._meta.db_table)
    kept = [spec for spec in found.values() if (spec["index"] or spec["unique"]) and not spec["primary_key"]]
    return sorted(tuple(spec["columns"]) for spec in kept)


LEAN_DELIVERY_INDEXES = [
    ("endpoint_id", "status"),  # an endpoint's deliveries, and its foreign key
    ("event_id",),  # an event's deliveries (deleting events)
    ("event_id", "endpoint_id"),  # one original delivery per event and endpoint
    ("lease_expires_at",),  # what is in flight
    ("next_attempt_at", "id"),  # due first attempts
    ("next_attempt_at", "id"),  # due retries
    ("replay_of_id",),  # a delivery's replays, NULL left out
]


def test_the_delivery_table_carries_only_the_indexes_its_queries_use():
    # Each one is written for every delivery three times (fan-out, lease, outcome): no
    # automatic foreign-key index doubling another, no LIKE twin of a varchar column.
    assert indexes(Delivery) == LEAN_DELIVERY_INDEXES
    # Events are looked up by exact id only: their varchar primary key has no LIKE twin.
    assert indexes(Event) == [("occurred_at", "id")]  # what is left to fan out


@pytest.mark.django_db(transaction=True)
def test_migration_0007_reverses_to_the_automatic_foreign_key_indexes_and_back():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("hookpost", "0006_replay_cascade")])
    try:
        before = indexes(Delivery)
        assert {("endpoint_id",), ("event_id",), ("replay_of_id",)} <= set(before)
        if connection.vendor == "postgresql":
            assert ("id",) in indexes(Event)  # the LIKE twin of the primary key
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert indexes(Delivery) == LEAN_DELIVERY_INDEXES
