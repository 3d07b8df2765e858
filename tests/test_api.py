"""The REST API: owner scoping, REST Hooks, CRUD, secrets shown once, rotation, pages, limits, the catalog."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from typing import Any

import jsonschema
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import models
from django.test.utils import override_settings
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from hookpost import outbox
from hookpost.api.catalog import field_schema
from hookpost.delivery import build_request
from hookpost.models import Attempt, Delivery, Endpoint, Event, validate_retry_schedule
from hookpost.retry import Outcome, RetryPolicy
from hookpost.worker import Worker
from library.models import Author, Book, Tag
from library.signals import book_borrowed
from tests.receiver import Receiver

API = "/api"


# --- helpers -------------------------------------------------------------------------------------


class Api:
    """An API client for one user that keeps every response body, for the secrecy checks."""

    bodies: list[str]

    def __init__(self, user: User | None, bodies: list[str]) -> None:
        self.user = user
        self.client = APIClient()
        if user is not None:
            self.client.force_authenticate(user)
        self.bodies = bodies

    def call(self, method: str, path: str, data: Any = None, **extra: Any) -> Any:
        kwargs: dict[str, Any] = {"format": "json"} if data is not None else {}
        response = getattr(self.client, method)(f"{API}{path}", data, **kwargs, **extra)
        self.bodies.append(response.content.decode())
        return response

    def get(self, path: str, **extra: Any) -> Any:
        return self.call("get", path, **extra)

    def post(self, path: str, data: Any = None, **extra: Any) -> Any:
        return self.call("post", path, data if data is not None else {}, **extra)

    def patch(self, path: str, data: Any) -> Any:
        return self.call("patch", path, data)

    def put(self, path: str, data: Any) -> Any:
        return self.call("put", path, data)

    def delete(self, path: str) -> Any:
        return self.call("delete", path)


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    # Throttle counters live in the cache, and user ids repeat between tests.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def bodies() -> list[str]:
    return []


def make_user(name: str, *, staff: bool = False, perms: tuple[str, ...] = ()) -> User:
    user = User.objects.create_user(name, password="pw", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="hookpost", codename=codename)
        )
    return User.objects.get(pk=user.pk)  # no stale permission cache


@pytest.fixture
def alice(db, bodies) -> Api:
    return Api(make_user("alice"), bodies)


@pytest.fixture
def bob(db, bodies) -> Api:
    return Api(make_user("bob"), bodies)


def create(api: Api, **fields: Any) -> dict[str, Any]:
    fields.setdefault("url", "https://hooks.example.com/in")
    fields.setdefault("event_types", ["library.*"])
    response = api.post("/endpoints/", fields)
    assert response.status_code == 201, response.content
    return response.json()


def secret_forms(endpoint_id: int, *secrets: str) -> list[str]:
    """Every form of an endpoint's secrets that must never appear: plaintext, its key, sealed token."""
    forms = []
    for secret in secrets:
        forms += [secret, secret.removeprefix("whsec_")]
    for entry in Endpoint.objects.get(pk=endpoint_id).secrets:
        forms += [entry["key"], entry["key"].partition(":")[2]]
    assert all(len(form) > 20 for form in forms)
    return forms


def assert_secret_free(bodies: list[str], forms: list[str]) -> None:
    for body in bodies:
        for form in forms:
            assert form not in body, f"a secret leaked into {body[:200]}"


# --- authentication and owner scoping ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/endpoints/"),
        ("post", "/endpoints/"),
        ("get", "/endpoints/1/"),
        ("post", "/hooks/"),
        ("delete", "/hooks/1/"),
        ("get", "/event-types/"),
        ("get", "/endpoints/1/deliveries/"),
    ],
)
def test_anonymous_requests_are_refused(bodies, method, path):
    response = Api(None, bodies).call(method, path, {} if method == "post" else None)
    assert response.status_code in (401, 403)


def _bob_world(bob: Api) -> tuple[dict[str, Any], Delivery]:
    endpoint = create(bob, description="bob's")
    delivery = outbox.send_test_event(Endpoint.objects.get(pk=endpoint["id"]))
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DEAD, attempt_count=1)
    Attempt.objects.create(
        delivery=delivery, number=1, started_at=timezone.now(), status_code=500, verdict="gave_up"
    )
    return endpoint, delivery


def test_a_user_cannot_reach_another_users_endpoint_and_learns_nothing(alice, bob):
    endpoint, delivery = _bob_world(bob)
    own = create(alice)
    e, d = endpoint["id"], delivery.pk
    before = Endpoint.objects.get(pk=e)
    requests = [
        ("get", f"/endpoints/{e}/", None),
        ("patch", f"/endpoints/{e}/", {"description": "mine now"}),
        ("put", f"/endpoints/{e}/", {"url": "https://evil.example.com/", "event_types": ["*"]}),
        ("post", f"/endpoints/{e}/rotate-secret/", {}),
        ("post", f"/endpoints/{e}/test/", {}),
        ("post", f"/endpoints/{e}/pause/", {}),
        ("post", f"/endpoints/{e}/resume/", {}),
        ("get", f"/endpoints/{e}/deliveries/", None),
        ("get", f"/endpoints/{e}/deliveries/{d}/", None),
        ("get", f"/endpoints/{e}/deliveries/{d}/attempts/", None),
        ("post", f"/endpoints/{e}/deliveries/{d}/replay/", {}),
        # Bob's delivery through Alice's own endpoint id.
        ("get", f"/endpoints/{own['id']}/deliveries/{d}/", None),
        ("get", f"/endpoints/{own['id']}/deliveries/{d}/attempts/", None),
        ("post", f"/endpoints/{own['id']}/deliveries/{d}/replay/", {}),
        ("delete", f"/endpoints/{e}/", None),
        ("delete", f"/hooks/{e}/", None),
    ]
    for method, path, data in requests:
        response = alice.call(method, path, data)
        # 404, never 403, with the very answer a missing id gets: ids do not leak.
        missing = alice.call(method, path.replace(f"/{e}/", "/999999/").replace(f"/{d}/", "/999999/"), data)
        assert (response.status_code, response.json()) == (404, missing.json()), (method, path)
    # OPTIONS describes the operation, and tells Bob's endpoint from a missing one no better.
    assert (
        alice.call("options", f"/endpoints/{e}/").json() == alice.call("options", "/endpoints/999999/").json()
    )
    assert "actions" in alice.call("options", f"/endpoints/{own['id']}/").json()
    assert [x["id"] for x in alice.get("/endpoints/").json()["results"]] == [own["id"]]
    after = Endpoint.objects.get(pk=e)
    assert (after.description, after.url, after.status, after.secrets) == (
        before.description,
        before.url,
        before.status,
        before.secrets,
    )
    assert Delivery.objects.filter(endpoint_id=e).count() == 1  # no test event, no replay


def test_staff_see_everything_with_view_permission_and_change_it_only_with_change_permission(bob, bodies):
    endpoint, delivery = _bob_world(bob)
    e = endpoint["id"]
    viewer = Api(make_user("viewer", staff=True, perms=("view_endpoint",)), bodies)
    assert viewer.get(f"/endpoints/{e}/").status_code == 200
    assert [x["id"] for x in viewer.get("/endpoints/").json()["results"]] == [e]
    assert viewer.get(f"/endpoints/{e}/deliveries/{delivery.pk}/attempts/").status_code == 200
    for method, path in [("patch", f"/endpoints/{e}/"), ("post", f"/endpoints/{e}/rotate-secret/")]:
        assert viewer.call(method, path, {"description": "x"}).status_code == 404
    editor = Api(make_user("editor", staff=True, perms=("change_endpoint",)), bodies)
    assert editor.patch(f"/endpoints/{e}/", {"description": "checked"}).json()["description"] == "checked"
    assert editor.post(f"/endpoints/{e}/deliveries/{delivery.pk}/replay/").status_code == 202
    assert editor.delete(f"/endpoints/{e}/").status_code == 404  # deleting needs delete_endpoint
    # A permission without staff status opens nothing.
    outsider = Api(make_user("outsider", perms=("view_endpoint", "change_endpoint")), bodies)
    assert outsider.get(f"/endpoints/{e}/").status_code == 404
    remover = Api(make_user("remover", staff=True, perms=("delete_endpoint",)), bodies)
    assert remover.delete(f"/endpoints/{e}/").status_code == 204
    assert not Endpoint.objects.filter(pk=e).exists()


# --- CRUD ----------------------------------------------------------------------------------------------


def test_the_orm_can_delete_an_endpoint_whose_delivery_was_replayed(alice):
    endpoint = Endpoint.objects.create(url="https://hooks.example.com/", event_types=["*"])
    delivery = outbox.send_test_event(endpoint)
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DEAD)
    delivery.refresh_from_db()
    outbox.replay([delivery])
    endpoint.delete()
    assert not Endpoint.objects.exists()


def test_a_retry_schedule_the_model_accepts_never_crashes_the_retry_policy():
    with pytest.raises(ValidationError, match="at most 365 days"):
        validate_retry_schedule([0, "100000000d"])
    schedule = [0, "365d"]
    validate_retry_schedule(schedule)
    decision = RetryPolicy.from_config(schedule, jitter=0.2).decide(
        Outcome(status_code=500), 1, timezone.now()
    )
    assert decision.retry_at is not None


def test_deleting_an_endpoint_whose_deliveries_were_replayed(alice):
    e = create(alice)["id"]
    delivery = outbox.send_test_event(Endpoint.objects.get(pk=e))
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DEAD)
    delivery.refresh_from_db()
    [replay] = outbox.replay([delivery])
    Delivery.objects.filter(pk=replay.pk).update(status=Delivery.Status.DEAD)
    replay.refresh_from_db()
    outbox.replay([replay])  # a replay of a replay
    Attempt.objects.create(delivery=replay, number=1, started_at=timezone.now(), verdict="gave_up")
    assert alice.delete(f"/endpoints/{e}/").status_code == 204
    assert not Delivery.objects.exists() and not Attempt.objects.exists()
    assert Event.objects.count() == 1  # events are the outbox's record; pruning removes them


def test_endpoint_crud(alice):
    created = create(
        alice,
        url="https://hooks.example.com/books",
        description="books",
        event_types=["library.book.*", "library.book.*", "*.deleted"],
        headers={"X-Team": "books", "Authorization": "Bearer t"},
        rate_limit=5,
        fifo=True,
        max_in_flight=2,
        timeout=3.5,
        retry_schedule=[0, "5s", 60],
    )
    endpoint = Endpoint.objects.get(pk=created["id"])
    assert endpoint.owner_id == alice.user.pk and created["owner"] == alice.user.pk
    assert endpoint.event_types == ["library.book.*", "*.deleted"]  # repeats dropped
    assert (endpoint.headers, endpoint.rate_limit, endpoint.fifo) == (
        {"X-Team": "books", "Authorization": "Bearer t"},
        5,
        True,
    )
    assert (endpoint.max_in_flight, endpoint.timeout, endpoint.retry_schedule) == (2, 3.5, [0, "5s", 60])
    assert created["status"] == "active" and created["secrets"][0]["primary"] is True

    path = f"/endpoints/{created['id']}/"
    shown = alice.get(path).json()
    assert {k: v for k, v in shown.items() if k != "updated_at"} == {
        k: v for k, v in created.items() if k not in ("secret", "updated_at")
    }
    changed = alice.patch(path, {"description": "all books", "retry_schedule": None, "fifo": False}).json()
    assert (changed["description"], changed["retry_schedule"], changed["fifo"]) == ("all books", None, False)
    assert changed["url"] == "https://hooks.example.com/books"
    replaced = alice.put(path, {"url": "https://other.example.com/", "event_types": ["library.tag.created"]})
    assert replaced.status_code == 200
    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.event_types, endpoint.description) == (
        "https://other.example.com/",
        ["library.tag.created"],
        "all books",  # PUT leaves out what it does not name: model defaults are not forced back
    )
    assert alice.put(path, {"description": "no url"}).status_code == 400

    assert alice.delete(path).status_code == 204
    assert alice.get(path).status_code == 404
    assert not Endpoint.objects.filter(pk=created["id"]).exists()


def test_status_changes_go_through_the_outbox(alice):
    created = create(alice)
    path = f"/endpoints/{created['id']}/"
    endpoint = Endpoint.objects.get(pk=created["id"])
    pending = outbox.send_test_event(endpoint)

    paused = alice.patch(path, {"status": "paused"}).json()
    assert (paused["status"], paused["status_reason"]) == ("paused", "paused by an operator")
    assert alice.post(f"{path}resume/").json()["status"] == "active"
    assert alice.post(f"{path}pause/").json()["status"] == "paused"

    Endpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=7)
    disabled = alice.patch(path, {"status": "disabled", "description": "off"}).json()
    assert (disabled["status"], disabled["status_reason"], disabled["description"]) == (
        "disabled",
        "disabled by its owner",
        "off",
    )
    pending.refresh_from_db()
    assert pending.status == Delivery.Status.CANCELLED

    enabled = alice.patch(path, {"status": "active"}).json()
    assert (enabled["status"], enabled["consecutive_failures"]) == ("active", 0)

    listed = alice.get("/endpoints/?status=active").json()["results"]
    assert [e["id"] for e in listed] == [created["id"]]
    assert alice.get("/endpoints/?status=paused").json()["results"] == []
    refused = alice.get("/endpoints/?status=sleeping")
    assert refused.status_code == 400 and "status" in refused.json()


def test_unknown_and_read_only_fields_are_ignored(alice, bob):
    created = create(
        alice,
        owner=bob.user.pk,
        id=12345,
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        secrets=[{"key": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}],
        consecutive_failures=9,
        status_reason="made up",
        subscription_url="https://zapier.example.com/",
    )
    endpoint = Endpoint.objects.get(pk=created["id"])
    assert endpoint.pk != 12345 and endpoint.owner_id == alice.user.pk
    assert endpoint.consecutive_failures == 0 and endpoint.status_reason == ""
    assert endpoint.signing_secrets() != ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
    assert created["secret"] == endpoint.signing_secrets()[0]
    patched = alice.patch(f"/endpoints/{endpoint.pk}/", {"owner": bob.user.pk, "secrets": []})
    assert patched.status_code == 200
    endpoint.refresh_from_db()
    assert endpoint.owner_id == alice.user.pk and len(endpoint.secrets) == 1


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"url": "not a url"}, "url", "valid URL"),
        ({"url": "ftp://files.example.com/"}, "url", "valid URL"),
        ({"url": "https://10.1.2.3/hooks"}, "url", "not a public address"),
        ({"url": "https://169.254.169.254/latest"}, "url", "not a public address"),
        ({"url": "https://[::1]/"}, "url", "not a public address"),
        ({"url": "https://x.example.com/" + "a" * 2100}, "url", "2048"),
        ({"event_types": []}, "event_types", "empty"),
        ({"event_types": ["library book"]}, "event_types", "invalid event type pattern"),
        ({"event_types": ["a..b"]}, "event_types", "invalid event type pattern"),
        ({"event_types": "library.*"}, "event_types", "list"),
        ({"event_types": [None]}, "event_types", "null"),
        ({"headers": {"webhook-id": "x"}}, "headers", "set by hookpost"),
        ({"headers": {"Content-Type": "text/plain"}}, "headers", "set by hookpost"),
        ({"headers": {"Bad Name": "x"}}, "headers", "not a header name"),
        ({"headers": {"X-Evil": "a\r\nX-Injected: 1"}}, "headers", "one line"),
        ({"headers": ["X-A"]}, "headers", "dictionary"),
        ({"retry_schedule": []}, "retry_schedule", "empty"),
        ({"retry_schedule": ["5x"]}, "retry_schedule", "duration string"),
        ({"retry_schedule": [-1]}, "retry_schedule", "duration string"),
        ({"retry_schedule": [True]}, "retry_schedule", "duration string"),
        ({"retry_schedule": ["31d"]}, "retry_schedule", "at most"),
        ({"retry_schedule": [1e308]}, "retry_schedule", "at most"),
        ({"rate_limit": 0}, "rate_limit", "greater than or equal"),
        ({"max_in_flight": 0}, "max_in_flight", "greater than or equal"),
        ({"max_in_flight": 10**30}, "max_in_flight", "less than or equal"),
        ({"timeout": "soon"}, "timeout", "valid number"),
        ({"status": "sleeping"}, "status", "not a valid choice"),
        ({"description": "d" * 256}, "description", "255"),
        ({"description": "nul\x00"}, "description", "Null characters"),
        ({"fifo": "perhaps"}, "fifo", "valid boolean"),
    ],
)
def test_bad_input_gets_400_naming_the_field(alice, fields, field, message):
    data = {"url": "https://hooks.example.com/", "event_types": ["*"], **fields}
    response = alice.post("/endpoints/", data)
    assert response.status_code == 400, response.content
    errors = response.json()
    assert set(errors) == {field}
    assert message in json.dumps(errors)
    # The same check on a change.
    endpoint = create(alice)
    patched = alice.patch(f"/endpoints/{endpoint['id']}/", fields)
    assert patched.status_code == 400 and set(patched.json()) == {field}


def test_plain_http_is_refused_unless_the_project_allows_it(alice):
    with override_settings(HOOKPOST={**settings.HOOKPOST, "ALLOW_HTTP": False}):
        response = alice.post("/endpoints/", {"url": "http://hooks.example.com/", "event_types": ["*"]})
        assert response.status_code == 400 and "https://" in response.json()["url"][0]
        hook = alice.post(
            "/hooks/", {"target_url": "http://hooks.example.com/", "event": "library.book.deleted"}
        )
        assert hook.status_code == 400 and set(hook.json()) == {"target_url"}
    assert alice.post("/endpoints/", {"url": "http://127.0.0.1:9/", "event_types": ["*"]}).status_code == 201


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("{not json", "application/json"),
        ('{"url": NaN}', "application/json"),
        ("[1, 2]", "application/json"),
        ('"a string"', "application/json"),
        ("url=https%3A%2F%2Fx.example.com%2F", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_bodies_get_400_or_415(alice, body, content_type):
    response = alice.client.post(f"{API}/endpoints/", body, content_type=content_type)
    assert response.status_code in (400, 415)
    assert response.json()


@pytest.mark.parametrize(
    "path",
    [
        "/endpoints/99999999999999999999999999/",
        "/endpoints/99999999999999999999999999/deliveries/",
        "/endpoints/1/deliveries/99999999999999999999999999/attempts/",
        "/hooks/99999999999999999999999999/",
    ],
)
def test_huge_ids_are_404_not_500(alice, path):
    assert alice.get(path).status_code in (404, 405)
    assert alice.delete(path).status_code in (404, 405)


def test_rotation_refuses_a_bad_grace(alice):
    endpoint = create(alice)
    for grace in (-1, "soon", 10**12, 1.5):
        response = alice.post(f"/endpoints/{endpoint['id']}/rotate-secret/", {"grace": grace})
        assert response.status_code == 400 and set(response.json()) == {"grace"}, grace


# --- REST Hooks -----------------------------------------------------------------------------------------


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.mark.django_db(transaction=True)
def test_rest_hooks_subscribe_receive_and_unsubscribe(receiver, bodies):
    zap = Api(make_user("zapier"), bodies)
    other = Api(make_user("other"), bodies)
    subscribed = zap.post(
        "/hooks/",
        # What a Zapier-style client sends; fields it adds beyond these are ignored.
        {"target_url": receiver.url("/zap"), "event": "library.book.deleted", "subscription_url": "x"},
    )
    assert subscribed.status_code == 201
    hook = subscribed.json()
    assert set(hook) == {"id", "target_url", "event", "secret"}
    assert (hook["target_url"], hook["event"]) == (receiver.url("/zap"), "library.book.deleted")
    endpoint = Endpoint.objects.get(pk=hook["id"])
    assert endpoint.owner.username == "zapier" and endpoint.event_types == ["library.book.deleted"]

    author = Author.objects.create(name="Le Guin")
    book = Book.objects.create(title="Earthsea", author=author)
    book_pk = book.pk
    book.delete()
    Worker(concurrency=5, poll_interval=0.01).run(burst=True)
    [request] = receiver.received("/zap")
    payload = Webhook(hook["secret"]).verify(request.body, request.headers)
    assert (payload["type"], payload["data"]["pk"]) == ("library.book.deleted", book_pk)

    assert other.delete(f"/hooks/{hook['id']}/").status_code == 404
    assert zap.delete(f"/hooks/{hook['id']}/").status_code == 204
    assert not Endpoint.objects.filter(pk=hook["id"]).exists()
    assert zap.delete(f"/hooks/{hook['id']}/").status_code == 404

    Book.objects.create(title="Tehanu", author=author).delete()
    Worker(concurrency=5, poll_interval=0.01).run(burst=True)
    assert len(receiver.received("/zap")) == 1
    assert_secret_free(bodies[1:], [hook["secret"], hook["secret"].removeprefix("whsec_")])


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"event": "library.book.deleted"}, "target_url"),
        ({"target_url": "https://x.example.com/"}, "event"),
        ({"target_url": "https://x.example.com/", "event": "no spaces please"}, "event"),
        ({"target_url": "https://192.168.1.1/", "event": "library.book.deleted"}, "target_url"),
        ({"target_url": "gopher://x.example.com/", "event": "library.book.deleted"}, "target_url"),
    ],
)
def test_rest_hooks_subscribe_refuses_bad_input(alice, data, field):
    response = alice.post("/hooks/", data)
    assert response.status_code == 400 and set(response.json()) == {field}
    assert not Endpoint.objects.exists()


# --- secrets ------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_test_event_reaches_a_real_receiver_and_the_secret_is_shown_only_once(receiver, bodies):
    alice = Api(make_user("alice"), bodies)
    created = create(alice, url=receiver.url("/alice"), event_types=["library.author.*"])
    secret = created.pop("secret")
    assert secret.startswith("whsec_")
    e = created["id"]

    queued = alice.post(f"/endpoints/{e}/test/")
    assert queued.status_code == 202
    assert (queued.json()["status"], queued.json()["event_type"]) == ("pending", "hookpost.test")
    Worker(concurrency=5, poll_interval=0.01).run(burst=True)
    [request] = receiver.received("/alice")
    payload = Webhook(secret).verify(request.body, request.headers)
    assert (payload["type"], payload["data"]["endpoint"]) == ("hookpost.test", e)

    [delivery] = alice.get(f"/endpoints/{e}/deliveries/").json()["results"]
    assert (delivery["status"], delivery["attempt_count"], delivery["event_id"]) == (
        "delivered",
        1,
        request.headers["webhook-id"],
    )
    detail = alice.get(f"/endpoints/{e}/deliveries/{delivery['id']}/").json()
    assert detail["payload"] == payload
    [attempt] = alice.get(f"/endpoints/{e}/deliveries/{delivery['id']}/attempts/").json()["results"]
    assert (attempt["number"], attempt["status_code"], attempt["verdict"]) == (1, 200, "delivered")
    assert attempt["request_headers"]["webhook-id"] == request.headers["webhook-id"]

    replayed = alice.post(f"/endpoints/{e}/deliveries/{delivery['id']}/replay/")
    assert replayed.status_code == 202 and replayed.json()["replay_of"] == delivery["id"]
    again = alice.post(f"/endpoints/{e}/deliveries/{replayed.json()['id']}/replay/")
    assert again.status_code == 409  # still pending: it will be sent anyway
    Worker(concurrency=5, poll_interval=0.01).run(burst=True)
    first, second = receiver.received("/alice")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]

    # Every other route, then: none of them shows the secret in any form.
    alice.get("/endpoints/")
    alice.get(f"/endpoints/{e}/")
    alice.patch(f"/endpoints/{e}/", {"description": "changed", "headers": {"X-Token": "t"}})
    alice.put(f"/endpoints/{e}/", {"url": receiver.url("/alice"), "event_types": ["*"]})
    alice.post(f"/endpoints/{e}/pause/")
    alice.post(f"/endpoints/{e}/resume/")
    alice.get(f"/endpoints/{e}/deliveries/?status=delivered")
    alice.get("/event-types/")
    alice.get("/schema/?format=json")
    forms = secret_forms(e, secret)
    assert len(bodies) > 15
    assert_secret_free(bodies[1:], forms)  # bodies[0] is the creation, the one place it shows
    assert secret in bodies[0]

    rotated = alice.post(f"/endpoints/{e}/rotate-secret/", {"grace": 0})
    new_secret = rotated.json()["secret"]
    assert new_secret != secret
    alice.get(f"/endpoints/{e}/")
    alice.get("/endpoints/")
    assert_secret_free(bodies[-2:], [*secret_forms(e, new_secret), *forms])


def test_rotation_keeps_the_old_secret_signing_for_the_grace_period(alice):
    created = create(alice)
    e, first = created["id"], created["secret"]

    rotated = alice.post(f"/endpoints/{e}/rotate-secret/", {"grace": 3600}).json()
    second = rotated["secret"]
    assert second.startswith("whsec_") and second != first
    new, old = rotated["secrets"]
    assert (new["primary"], new["in_force"], new["expires_at"]) == (True, True, None)
    assert (old["primary"], old["in_force"]) == (False, True)
    expires = dt.datetime.fromisoformat(old["expires_at"])
    assert dt.timedelta(minutes=59) < expires - timezone.now() <= dt.timedelta(hours=1)
    assert alice.get(f"/endpoints/{e}/").json()["secrets"] == rotated["secrets"]

    endpoint = Endpoint.objects.get(pk=e)
    event = outbox.send_test_event(endpoint).event
    request = build_request(event, endpoint)
    assert len(request.headers["webhook-signature"].split()) == 2
    for secret in (first, second):
        assert Webhook(secret).verify(request.body, request.headers)["type"] == "hookpost.test"

    # A leaked secret: grace 0, and only the newest one signs from now on.
    third = alice.post(f"/endpoints/{e}/rotate-secret/", {"grace": 0}).json()["secret"]
    endpoint.refresh_from_db()
    request = build_request(event, endpoint)
    assert Webhook(third).verify(request.body, request.headers)
    for secret in (first, second):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(request.body, request.headers)
    assert [s["in_force"] for s in alice.get(f"/endpoints/{e}/").json()["secrets"]] == [True, False, False]


def test_rotation_without_a_body_uses_the_default_grace(alice):
    created = create(alice)
    with override_settings(HOOKPOST={**settings.HOOKPOST, "SECRET_ROTATION_GRACE": 600}):
        rotated = alice.client.post(f"{API}/endpoints/{created['id']}/rotate-secret/")
    assert rotated.status_code == 200
    old = rotated.json()["secrets"][1]
    assert dt.timedelta(minutes=9) < dt.datetime.fromisoformat(old["expires_at"]) - timezone.now()


# --- pages and rate limits ----------------------------------------------------------------------------------


def test_endpoints_come_in_numbered_pages(alice, bob):
    ids = [create(alice, description=str(n))["id"] for n in range(7)]
    create(bob)
    first = alice.get("/endpoints/?page_size=3").json()
    assert first["count"] == 7 and [e["id"] for e in first["results"]] == ids[:3]
    assert first["previous"] is None and "page=2" in first["next"]
    last = alice.get("/endpoints/?page_size=3&page=3").json()
    assert [e["id"] for e in last["results"]] == ids[6:] and last["next"] is None
    assert alice.get("/endpoints/?page=9").status_code == 404
    assert alice.get("/endpoints/?page=x").status_code == 404


def test_deliveries_come_in_cursor_pages_newest_first(alice):
    e = create(alice)["id"]
    endpoint = Endpoint.objects.get(pk=e)
    ids = [outbox.send_test_event(endpoint).pk for _ in range(5)]
    seen, url = [], f"/endpoints/{e}/deliveries/?page_size=2"
    while url:
        page = alice.get(url).json()
        seen += [d["id"] for d in page["results"]]
        url = page["next"] and page["next"].split(API, 1)[1]
    assert seen == sorted(ids, reverse=True)
    assert alice.get(f"/endpoints/{e}/deliveries/?cursor=bogus").status_code == 404
    Delivery.objects.filter(pk=ids[0]).update(status=Delivery.Status.DEAD)
    dead = alice.get(f"/endpoints/{e}/deliveries/?status=dead").json()["results"]
    assert [d["id"] for d in dead] == [ids[0]]
    assert alice.get(f"/endpoints/{e}/deliveries/?status=lost").status_code == 400


def test_requests_beyond_the_rate_get_429(alice, bob):
    rates = {"DEFAULT_THROTTLE_RATES": {"hookpost": "3/min", "hookpost_test": "100/min"}}
    with override_settings(REST_FRAMEWORK=rates):
        assert [alice.get("/event-types/").status_code for _ in range(3)] == [200] * 3
        limited = alice.get("/endpoints/")
        assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
        assert bob.get("/endpoints/").status_code == 200  # per user


def test_test_events_have_their_own_stricter_rate(alice):
    e = create(alice)["id"]
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"hookpost_test": "2/min"}}):
        assert [alice.post(f"/endpoints/{e}/test/").status_code for _ in range(3)] == [202, 202, 429]
        assert alice.get(f"/endpoints/{e}/").status_code == 200  # the general default rate


# --- the catalog --------------------------------------------------------------------------------------------


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def date_time(value: object) -> bool:
        # RFC 3339: a date, a time and an offset (hookpost writes UTC as "Z").
        return not isinstance(value, str) or (
            "T" in value and dt.datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
        )

    @checker.checks("date", raises=ValueError)
    def date(value: object) -> bool:
        return not isinstance(value, str) or bool(dt.date.fromisoformat(value))

    @checker.checks("uuid", raises=ValueError)
    def uuid_(value: object) -> bool:
        return not isinstance(value, str) or bool(uuid.UUID(value))

    return checker


def test_the_catalog_lists_every_registered_type_with_its_schema(alice):
    catalog = {entry["type"]: entry for entry in alice.get("/event-types/").json()}
    assert set(catalog) >= {
        "library.author.created",
        "library.author.updated",
        "library.author.deleted",
        "library.book.created",
        "library.book.updated",
        "library.book.deleted",
        "library.tag.created",
        "library.tag.deleted",
        "library.book.borrowed",
        "hookpost.test",
    }
    assert "library.tag.updated" not in catalog  # Tag emits created and deleted only
    deleted = catalog["library.book.deleted"]
    assert (deleted["kind"], deleted["model"], deleted["action"]) == ("model", "library.book", "deleted")
    fields = deleted["schema"]["properties"]["data"]["properties"]["fields"]["properties"]
    assert fields == {
        "title": {"type": "string"},
        "author": {"type": "integer"},
        "isbn": {"type": "string"},
        "price": {"type": ["string", "null"], "format": "decimal", "description": "every digit kept"},
        "published": {"type": ["string", "null"], "format": "date"},
        "uid": {"type": "string", "format": "uuid"},
        "cover": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "integer"}},
    }
    assert "origin" in deleted["schema"]["properties"]
    assert "origin" not in catalog["library.book.created"]["schema"]["properties"]
    borrowed = catalog["library.book.borrowed"]
    assert (borrowed["kind"], borrowed["description"]) == (
        "signal",
        "The ``library.book.borrowed`` event data.",
    )
    assert catalog["hookpost.test"]["kind"] == "builtin"


@pytest.mark.django_db(transaction=True)
def test_real_events_match_their_catalog_schema(bodies):
    alice = Api(make_user("alice"), bodies)
    endpoint = Endpoint.objects.create(url="https://hooks.example.com/", event_types=["*"])
    catalog = {entry["type"]: entry["schema"] for entry in alice.get("/event-types/").json()}
    author = Author.objects.create(name="Le Guin", born=dt.date(1929, 10, 21))
    tag = Tag.objects.create(name="fantasy")
    book = Book.objects.create(title="Earthsea", author=author, price="9.99", published=dt.date(1968, 1, 1))
    book.tags.add(tag)
    book.title = "A Wizard of Earthsea"
    book.save()
    Book.objects.create(title="No price", author=author)
    book_borrowed.send(sender=Book, book=book, reader="ged")
    outbox.send_test_event(endpoint)
    author.delete()  # cascades to the books: deletes with an origin
    tag.delete()
    events = list(Event.objects.all())
    checker = _format_checker()
    for event in events:
        validator = jsonschema.Draft202012Validator(catalog[event.type], format_checker=checker)
        validator.validate(json.loads(event.payload))
    types = sorted({e.type for e in events})
    assert "library.book.deleted" in types and "hookpost.test" in types and "library.book.borrowed" in types
    # And a payload that breaks the schema is caught: the check is not vacuous.
    wrong = json.loads(next(e for e in events if e.type == "library.book.created").payload)
    wrong["data"]["fields"]["author"] = "Le Guin"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(catalog["library.book.created"]).validate(wrong)


def test_all_fields_registrations_and_field_kinds_map_to_json_types(alice, isolated_registry):
    isolated_registry.unregister(Author)
    isolated_registry.register(Author, fields="__all__", actions=["created"])
    [entry] = [e for e in alice.get("/event-types/").json() if e["type"] == "library.author.created"]
    data = entry["schema"]["properties"]["data"]
    assert data["properties"]["pk"] == {"type": "integer"}
    assert data["properties"]["fields"]["properties"] == {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "born": {"type": ["string", "null"], "format": "date"},
        "email": {"type": "string"},
    }
    assert field_schema(models.FloatField(null=True)) == {"type": ["number", "null"]}
    assert field_schema(models.BooleanField()) == {"type": "boolean"}
    assert field_schema(models.PositiveBigIntegerField()) == {"type": "integer"}
    assert field_schema(models.DateTimeField()) == {"type": "string", "format": "date-time"}
    assert field_schema(models.JSONField(null=True)) == {}
    assert field_schema(models.DurationField())["type"] == "string"
    assert field_schema(models.BinaryField())["contentEncoding"] == "base64"


# --- the schema ------------------------------------------------------------------------------------------


def test_the_openapi_schema_validates_without_warnings():
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    schema = json.loads(out.getvalue())
    assert schema["openapi"].startswith("3.")
    assert all(path.startswith("/api/") for path in schema["paths"])


def test_the_schema_is_served_with_only_the_apis_operations(alice):
    response = alice.get("/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["info"]["title"] == "django-hookpost"
    assert {
        "/api/hooks/",
        "/api/hooks/{id}/",
        "/api/event-types/",
        "/api/endpoints/{id}/rotate-secret/",
    } <= set(schema["paths"])
    assert "/api/schema/" not in schema["paths"]


def test_a_paused_endpoints_delivery_shows_when_it_will_be_due_and_that_it_waits(alice):
    e = create(alice)["id"]
    endpoint = Endpoint.objects.get(pk=e)
    delivery = outbox.send_test_event(endpoint)
    due = Delivery.objects.get(pk=delivery.pk).next_attempt_at
    outbox.pause_endpoint(endpoint)
    [shown] = alice.get(f"/endpoints/{e}/deliveries/").json()["results"]
    assert shown["paused"] is True
    assert dt.datetime.fromisoformat(shown["next_attempt_at"].replace("Z", "+00:00")) == due
    outbox.resume_endpoint(endpoint)
    [shown] = alice.get(f"/endpoints/{e}/deliveries/").json()["results"]
    assert shown["paused"] is False
    assert dt.datetime.fromisoformat(shown["next_attempt_at"].replace("Z", "+00:00")) == due
