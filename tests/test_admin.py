"""The sending side's admin: endpoints (secret shown once, health, tools), events, deliveries, attempts."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import INFO, SUCCESS, WARNING
from django.test import Client
from django.test.utils import override_settings
from django.urls import reverse
from django.utils import timezone

from hookpost import admin, outbox, signing
from hookpost.models import PAUSE_SHIFT, Attempt, Delivery, Endpoint, Event
from hookpost.registry import registry
from hookpost.worker import Worker
from library.models import Author
from tests.receiver import Receiver

pytestmark = pytest.mark.django_db

SECRET_RE = re.compile(r"whsec_[A-Za-z0-9+/=]+")
Status = Delivery.Status
Verdict = Attempt.Verdict


# --- helpers ----------------------------------------------------------------------------------------


def url(name: str, *args: Any) -> str:
    return reverse(f"admin:hookpost_{name}", args=args)


def endpoint_form(**changes: Any) -> dict[str, Any]:
    """POST data for the endpoint add or change form."""
    data: dict[str, Any] = {
        "url": "https://hooks.example.com/in",
        "description": "Partner",
        "event_types_0": ["library.book.deleted"],
        "event_types_1": "",
        "status": "active",
        "owner": "",
        "headers": "{}",
        "rate_limit": "",
        "max_in_flight": "",
        "timeout": "",
        "retry_schedule": "",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def form_of(endpoint: Endpoint, **changes: Any) -> dict[str, Any]:
    """The change form's data for ``endpoint`` as it is, with ``changes``."""
    catalog = registry.event_types()
    data = endpoint_form(
        url=endpoint.url,
        description=endpoint.description,
        event_types_0=[t for t in endpoint.event_types if t in catalog],
        event_types_1="\n".join(t for t in endpoint.event_types if t not in catalog),
        status=endpoint.status,
        owner=str(endpoint.owner_id or ""),
        headers=json.dumps(endpoint.headers),
    )
    if endpoint.fifo:
        data["fifo"] = "on"
    data.update(changes)
    return data


def page(client: Client, address: str, **query: Any) -> str:
    response = client.get(address, query)
    assert response.status_code == 200, (address, response.status_code)
    return response.content.decode()


def shown_secrets(html: str) -> list[str]:
    return SECRET_RE.findall(html)


def message_list(response) -> list[tuple[int, str]]:
    return [(m.level, str(m.message)) for m in response.context["messages"]]


def run_action(client: Client, model: str, action: str, objects: list[Any], **extra: Any):
    """Run a changelist action on ``objects``, following the redirect back."""
    data = {"action": action, "index": "0", "_selected_action": [o.pk for o in objects], **extra}
    return client.post(url(f"{model}_changelist"), data, follow=True)


def make_endpoint(**options: Any) -> Endpoint:
    options.setdefault("url", "https://hooks.example.com/in")
    options.setdefault("event_types", ["library.*"])
    return Endpoint.objects.create(**options)


def make_event(event_type: str = "library.book.deleted", pk: Any = 1, **fields: Any) -> Event:
    now = timezone.now()
    payload = {
        "type": event_type,
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"model": "library.book", "pk": pk, "fields": fields},
    }
    return Event.objects.create(
        type=event_type, payload=json.dumps(payload), occurred_at=now, fanned_out_at=now
    )


def make_delivery(
    event: Event, endpoint: Endpoint, status: str = Status.DELIVERED, **options: Any
) -> Delivery:
    finished = None if status == Status.PENDING else timezone.now()
    return Delivery.objects.create(
        event=event, endpoint=endpoint, status=status, finished_at=finished, **options
    )


def make_attempt(
    delivery: Delivery,
    number: int = 1,
    status_code: int | None = 200,
    verdict: str = Verdict.DELIVERED,
    **options: Any,
) -> Attempt:
    options.setdefault("started_at", timezone.now())
    options.setdefault("duration_ms", 12)
    return Attempt.objects.create(
        delivery=delivery, number=number, status_code=status_code, verdict=verdict, **options
    )


def add_endpoint(client: Client, **changes: Any) -> tuple[Endpoint, str, Any]:
    """Add an endpoint through the form; the endpoint, the secret shown and the response."""
    before = set(Endpoint.objects.values_list("pk", flat=True))
    response = client.post(url("endpoint_add"), endpoint_form(**changes))
    assert response.status_code == 200, response.content.decode()[:2000]
    [endpoint] = Endpoint.objects.exclude(pk__in=before)
    [secret] = shown_secrets(response.content.decode())
    return endpoint, secret, response


@pytest.fixture
def staff_viewer(db) -> Client:
    """A staff user who may view hookpost's records but change nothing."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="hookpost",
            codename__in=["view_endpoint", "view_event", "view_delivery", "view_attempt"],
        )
    )
    client = Client()
    client.force_login(user)
    return client


# --- the event-type picker ---------------------------------------------------------------------------


def test_the_add_page_offers_every_registered_event_type_as_a_checkbox(admin_client):
    html = page(admin_client, url("endpoint_add"))
    catalog = registry.event_types()
    assert "library.book.deleted" in catalog and "library.book.borrowed" in catalog
    for event_type in catalog:
        assert f'type="checkbox" name="event_types_0" value="{event_type}"' in html
    assert 'name="event_types_1"' in html  # patterns are typed there
    assert "shown once" in html


def test_the_picker_offers_types_registered_later_without_a_restart(admin_client, isolated_registry):
    from library.signals import book_borrowed

    isolated_registry.register_signal(book_borrowed, "shop.order.paid", lambda sender, **kw: {})
    html = page(admin_client, url("endpoint_add"))
    assert 'value="shop.order.paid"' in html


def test_ticked_types_and_typed_patterns_are_stored_as_one_list(admin_client):
    endpoint, _, _ = add_endpoint(
        admin_client,
        event_types_0=["library.book.deleted", "library.author.created"],
        event_types_1="library.book.*\n *.deleted , library.book.deleted\n\n",
    )
    assert endpoint.event_types == [
        "library.book.deleted",
        "library.author.created",
        "library.book.*",
        "*.deleted",
    ]


def test_the_change_page_ticks_stored_types_and_lists_the_patterns(admin_client):
    endpoint = make_endpoint(event_types=["library.book.deleted", "library.*", "*.gone"])
    html = page(admin_client, url("endpoint_change", endpoint.pk))
    assert re.search(r'value="library\.book\.deleted"[^>]*checked', html)
    assert not re.search(r'value="library\.book\.created"[^>]*checked', html)
    assert re.search(r"<textarea[^>]*name=\"event_types_1\"[^>]*>\s*library\.\*\n\*\.gone</textarea>", html)


def test_an_endpoint_needs_an_event_type(admin_client):
    response = admin_client.post(url("endpoint_add"), endpoint_form(event_types_0=[], event_types_1=" "))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["event_types"] == [
        "Pick at least one event type, or type a pattern such as library.book.* (or * for all)."
    ]
    assert not Endpoint.objects.exists()


def test_an_invalid_pattern_is_refused_with_a_message_naming_it(admin_client):
    response = admin_client.post(url("endpoint_add"), endpoint_form(event_types_1="library..book\nok.*"))
    assert response.status_code == 200
    [error] = response.context["adminform"].form.errors["event_types"]
    assert "'library..book'" in error and "'*' matches any run of characters" in error
    assert not Endpoint.objects.exists()


# --- creating an endpoint: the secret, once ----------------------------------------------------------


def test_adding_an_endpoint_shows_its_signing_secret_exactly_once(admin_client, admin_user):
    endpoint, secret, response = add_endpoint(admin_client, description="Partner hooks")
    html = response.content.decode()
    assert response.templates[0].name == "admin/hookpost/endpoint/secret.html"
    assert html.count(secret) == 1
    assert "shown once" in html
    # The secret is the endpoint's, and the only one it has.
    assert endpoint.signing_secrets() == [secret]
    assert endpoint.secret_summaries()[0]["fingerprint"] == signing.parse_secret(secret).fingerprint
    assert signing.parse_secret(secret).fingerprint in html
    # Stored sealed, never as plaintext.
    assert secret not in json.dumps(endpoint.secrets)
    # No cache may keep the page.
    assert "no-store" in response["Cache-Control"]
    # The added endpoint is the form's, owned by whoever added it unless told otherwise.
    assert (endpoint.url, endpoint.description, endpoint.status) == (
        "https://hooks.example.com/in",
        "Partner hooks",
        "active",
    )
    assert reverse("admin:hookpost_endpoint_change", args=[endpoint.pk]) in html
    assert "was added successfully" in html


def test_the_add_page_proposes_the_current_user_as_owner(admin_client, admin_user):
    html = page(admin_client, url("endpoint_add"))
    assert re.search(rf'name="owner" value="{admin_user.pk}"', html)
    endpoint, _, _ = add_endpoint(admin_client, owner=str(admin_user.pk))
    assert endpoint.owner == admin_user


def test_the_secret_page_continues_where_the_admin_would_have_gone(admin_client):
    endpoint, _, response = add_endpoint(admin_client, _addanother="1")
    assert f'href="{url("endpoint_add")}"' in response.content.decode()
    endpoint, _, response = add_endpoint(admin_client, _save="1")
    assert f'href="{url("endpoint_changelist")}"' in response.content.decode()
    endpoint, _, response = add_endpoint(admin_client, _continue="1")
    assert f'href="{url("endpoint_change", endpoint.pk)}' in response.content.decode()


def test_after_creation_the_change_page_shows_fingerprints_never_the_secret(admin_client):
    endpoint, secret, _ = add_endpoint(admin_client)
    html = page(admin_client, url("endpoint_change", endpoint.pk))
    assert shown_secrets(html) == []
    assert secret.removeprefix("whsec_") not in html
    assert f"whsec_…{signing.parse_secret(secret).fingerprint}" in html
    assert "primary" in html


def test_an_add_form_sent_back_with_errors_creates_nothing_and_shows_no_secret(admin_client):
    response = admin_client.post(url("endpoint_add"), endpoint_form(url="ftp://hooks.example.com/in"))
    assert response.status_code == 200
    assert "url" in response.context["adminform"].form.errors
    assert not Endpoint.objects.exists()
    assert shown_secrets(response.content.decode()) == []


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("not a url", "Enter a valid URL.", id="not-a-url"),
        pytest.param("ftp://hooks.example.com/in", "Enter a valid URL.", id="ftp"),
        pytest.param("http://10.1.2.3/in", "10.1.2.3 is not a public address", id="private-address"),
        pytest.param(
            "http://169.254.169.254/latest", "169.254.169.254 is not a public address", id="metadata"
        ),
    ],
)
def test_urls_the_worker_would_refuse_are_refused_by_the_form(admin_client, address, expected):
    response = admin_client.post(url("endpoint_add"), endpoint_form(url=address))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["url"]
    assert any(expected in e for e in errors), errors
    assert not Endpoint.objects.exists()


def test_plain_http_is_refused_unless_allowed(admin_client, settings):
    settings.HOOKPOST = {**settings.HOOKPOST, "ALLOW_HTTP": False}
    response = admin_client.post(url("endpoint_add"), endpoint_form(url="http://hooks.example.com/in"))
    [error] = response.context["adminform"].form.errors["url"]
    assert error.startswith("Use an https:// URL")
    assert not Endpoint.objects.exists()


def test_a_url_without_a_scheme_gets_https(admin_client):
    endpoint, _, _ = add_endpoint(admin_client, url="hooks.example.com/in")
    assert endpoint.url == "https://hooks.example.com/in"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        pytest.param(
            "headers", '{"webhook-id": "x"}', "These headers are set by hookpost", id="reserved-header"
        ),
        pytest.param("headers", '["x"]', "Give custom headers as a mapping", id="headers-not-a-dict"),
        pytest.param("headers", "{nope", "Enter a valid JSON.", id="headers-not-json"),
        pytest.param("retry_schedule", '["soon"]', "", id="bad-schedule"),
        pytest.param("rate_limit", "0", "Ensure this value is greater than or equal to 0.01.", id="rate"),
        pytest.param("max_in_flight", "0", "greater than or equal to 1", id="in-flight"),
        pytest.param("timeout", "-1", "greater than or equal to 0.1", id="timeout"),
    ],
)
def test_bad_delivery_options_are_field_errors(admin_client, field, value, expected):
    response = admin_client.post(url("endpoint_add"), endpoint_form(**{field: value}))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors[field]
    assert errors and expected in errors[0], errors
    assert not Endpoint.objects.exists()


def test_delivery_options_are_saved(admin_client):
    endpoint, _, _ = add_endpoint(
        admin_client,
        headers='{"Authorization": "Bearer t"}',
        rate_limit="2.5",
        fifo="on",
        max_in_flight="3",
        timeout="4",
        retry_schedule='[0, "5s", "1m"]',
    )
    assert endpoint.headers == {"Authorization": "Bearer t"}
    assert (endpoint.rate_limit, endpoint.fifo, endpoint.max_in_flight, endpoint.timeout) == (
        2.5,
        True,
        3,
        4.0,
    )
    assert endpoint.retry_schedule == [0, "5s", "1m"]


def test_a_blank_headers_field_means_no_custom_headers(admin_client):
    endpoint, _, _ = add_endpoint(admin_client, headers="")
    assert endpoint.headers == {}


# --- editing -----------------------------------------------------------------------------------------


def test_editing_changes_the_fields_and_keeps_the_secrets(admin_client):
    endpoint = make_endpoint()
    secrets = endpoint.signing_secrets()
    response = admin_client.post(
        url("endpoint_change", endpoint.pk),
        form_of(endpoint, description="renamed", event_types_0=["library.book.deleted"], event_types_1="x.*"),
    )
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.description, endpoint.event_types) == ("renamed", ["library.book.deleted", "x.*"])
    assert endpoint.signing_secrets() == secrets


def test_saving_the_form_does_not_undo_what_the_worker_wrote_meanwhile(admin_client):
    endpoint = make_endpoint()
    data = form_of(endpoint, description="renamed")
    # Between loading the page and saving it, the worker records failures and a rotation happens.
    now = timezone.now()
    Endpoint.objects.filter(pk=endpoint.pk).update(
        consecutive_failures=4, failing_since=now, last_failure_at=now, last_sequence=9
    )
    rotated = Endpoint.objects.get(pk=endpoint.pk)
    new_secret = rotated.rotate_secret()
    rotated.save()
    assert admin_client.post(url("endpoint_change", endpoint.pk), data).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.description == "renamed"
    assert (endpoint.consecutive_failures, endpoint.failing_since, endpoint.last_sequence) == (4, now, 9)
    assert endpoint.signing_secrets()[0] == new_secret


def test_pausing_in_the_form_pauses_the_way_the_outbox_does(admin_client):
    endpoint = make_endpoint()
    assert (
        admin_client.post(url("endpoint_change", endpoint.pk), form_of(endpoint, status="paused")).status_code
        == 302
    )
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.status_reason) == ("paused", "paused by an operator")


def test_disabling_in_the_form_cancels_pending_deliveries(admin_client):
    endpoint = make_endpoint()
    pending = make_delivery(make_event(), endpoint, Status.PENDING)
    done = make_delivery(make_event(), endpoint, Status.DELIVERED)
    response = admin_client.post(url("endpoint_change", endpoint.pk), form_of(endpoint, status="disabled"))
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.status_reason) == ("disabled", "disabled by an operator")
    statuses = dict(Delivery.objects.values_list("pk", "status"))
    assert statuses == {pending.pk: Status.CANCELLED, done.pk: Status.DELIVERED}


def test_activating_in_the_form_resets_the_health(admin_client):
    endpoint = make_endpoint(status="disabled", status_reason="answered 410", consecutive_failures=7)
    response = admin_client.post(url("endpoint_change", endpoint.pk), form_of(endpoint, status="active"))
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.status_reason, endpoint.consecutive_failures) == ("active", "", 0)


# --- the change page ---------------------------------------------------------------------------------


def test_the_change_page_shows_every_secret_as_a_fingerprint_with_its_state(admin_client):
    endpoint = make_endpoint()
    first = endpoint.signing_secrets()[0]
    second = endpoint.rotate_secret(dt.timedelta(hours=2))
    endpoint.save()
    third = endpoint.rotate_secret(dt.timedelta(0))
    endpoint.save()
    html = page(admin_client, url("endpoint_change", endpoint.pk))
    for secret in (first, second, third):
        assert f"whsec_…{signing.parse_secret(secret).fingerprint}" in html
        assert secret.removeprefix("whsec_") not in html
    assert "primary" in html and "retired" in html
    assert shown_secrets(html) == []


def test_the_change_page_shows_a_secret_in_grace_with_its_end(admin_client):
    endpoint = make_endpoint()
    endpoint.rotate_secret(dt.timedelta(hours=3))
    endpoint.save()
    html = page(admin_client, url("endpoint_change", endpoint.pk))
    assert "still signing for 2" in html and "(grace period)" in html


def test_the_change_page_shows_the_health_of_the_last_day(admin_client):
    endpoint = make_endpoint(consecutive_failures=2, last_failure_at=timezone.now())
    ok = make_delivery(make_event(), endpoint)
    make_attempt(ok, duration_ms=10)
    bad = make_delivery(make_event(), endpoint, Status.DEAD)
    make_attempt(bad, status_code=500, verdict=Verdict.GAVE_UP, duration_ms=30)
    make_attempt(bad, number=2, status_code=200, duration_ms=20)
    # Older than a day: not counted.
    make_attempt(
        ok, number=3, status_code=500, verdict=Verdict.RETRY, started_at=timezone.now() - dt.timedelta(days=2)
    )
    html = page(admin_client, url("endpoint_change", endpoint.pk))
    assert "66.7%</span> (2/3)" in html
    assert "1 delivered, 1 dead, 0 pending" in html
    assert "3 (1 failed)" in html
    assert "p50 20 ms" in html
    assert "<th>consecutive failures</th><td>2</td>" in html
    assert f"?endpoint__id__exact={endpoint.pk}" in html


def test_the_change_page_offers_the_tools_that_fit_the_status(admin_client):
    tools = {
        "active": "pause",
        "paused": "resume",
        "disabled": "reenable",
    }
    for status, expected in tools.items():
        endpoint = make_endpoint(status=status)
        html = page(admin_client, url("endpoint_change", endpoint.pk))
        offered = set(re.findall(r'data-action="(\w+)"', html))
        assert offered == {
            "send_test_event",
            "rotate_secret",
            "rotate_leaked_secret",
            "replay_failed",
            expected,
        }, status


def test_a_viewer_sees_the_endpoint_but_no_tools_and_no_secret(staff_viewer):
    endpoint = make_endpoint()
    html = page(staff_viewer, url("endpoint_change", endpoint.pk))
    assert "data-action" not in html
    assert shown_secrets(html) == []
    response = staff_viewer.post(url("endpoint_run", endpoint.pk, "rotate_secret"))
    assert response.status_code == 403
    assert Endpoint.objects.get(pk=endpoint.pk).secrets == endpoint.secrets


# --- the changelist: health at a glance ---------------------------------------------------------------


def test_the_changelist_shows_each_endpoints_health(admin_client):
    now = timezone.now()
    healthy = make_endpoint(url="https://a.example.com/in", last_success_at=now - dt.timedelta(minutes=5))
    failing = make_endpoint(
        url="https://b.example.com/in",
        status="disabled",
        status_reason="answered 410 Gone",
        consecutive_failures=3,
        last_failure_at=now - dt.timedelta(hours=2),
    )
    idle = make_endpoint(url="https://c.example.com/in", status="paused")
    for _ in range(3):
        make_attempt(make_delivery(make_event(), healthy), number=1)
    make_attempt(make_delivery(make_event(), healthy, Status.DEAD), status_code=500, verdict=Verdict.GAVE_UP)
    make_attempt(
        make_delivery(make_event(), failing, Status.DEAD), status_code=410, verdict=Verdict.ENDPOINT_GONE
    )
    response = admin_client.get(url("endpoint_changelist"))
    html = response.content.decode()
    rows = {e.pk: e for e in response.context["cl"].result_list}
    assert set(rows) == {healthy.pk, failing.pk, idle.pk}
    assert "75%</span> (3/4)" in html
    assert "0%</span> (0/1)" in html
    assert "No requests in the last 24 h" in html
    assert "5\xa0minutes ago" in html and "2\xa0hours ago" in html
    assert 'title="answered 410 Gone"' in html
    for label in ("Active", "Disabled", "Paused"):
        assert f">{label}</span>" in html


def test_the_changelist_reads_health_in_one_batch_for_the_page(admin_client, django_assert_max_num_queries):
    def fill(count: int) -> None:
        for _ in range(count):
            endpoint = make_endpoint(url=f"https://e{Endpoint.objects.count()}.example.com/in")
            make_attempt(make_delivery(make_event(), endpoint))
            make_attempt(
                make_delivery(make_event(), endpoint, Status.DEAD), status_code=500, verdict="gave_up"
            )

    fill(1)
    admin_client.get(url("endpoint_changelist"))  # warm the session and content types
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as one:
        assert admin_client.get(url("endpoint_changelist")).status_code == 200
    fill(20)
    with django_assert_max_num_queries(len(one)):
        response = admin_client.get(url("endpoint_changelist"))
    assert len(response.context["cl"].result_list) == 21
    assert response.content.decode().count("50%</span> (1/2)") == 21


def test_endpoints_can_be_searched_and_filtered(admin_client):
    wanted = make_endpoint(url="https://wanted.example.com/in", description="billing")
    make_endpoint(url="https://other.example.com/in", status="paused")
    assert list(admin_client.get(url("endpoint_changelist"), {"q": "billing"}).context["cl"].result_list) == [
        wanted
    ]
    assert list(
        admin_client.get(url("endpoint_changelist"), {"status__exact": "active"}).context["cl"].result_list
    ) == [wanted]
    owned = make_endpoint(owner=User.objects.create_user("carol"))
    assert results(admin_client, "endpoint", q="carol") == [owned]


# --- endpoint actions --------------------------------------------------------------------------------


def test_the_send_test_event_action_queues_a_test_event_to_each_endpoint_only(admin_client):
    first, second, bystander = (
        make_endpoint(),
        make_endpoint(status="paused"),
        make_endpoint(event_types=["*"]),
    )
    response = run_action(admin_client, "endpoint", "send_test_event", [first, second])
    deliveries = Delivery.objects.order_by("endpoint_id")
    assert [(d.endpoint_id, d.event.type, d.status) for d in deliveries] == [
        (first.pk, "hookpost.test", "pending"),
        (second.pk, "hookpost.test", "pending"),
    ]
    assert not Delivery.objects.filter(endpoint=bystander).exists()
    [(level, text)] = message_list(response)
    assert level == SUCCESS
    assert text.startswith("Test event queued for 2 endpoint(s); the worker sends it:")
    assert url("delivery_change", deliveries[0].pk) in text
    assert "1 of them not active: the event waits until resumed." in text
    assert LogEntry.objects.filter(object_id=str(first.pk), change_message="Sent a test event.").exists()


def test_the_test_event_button_runs_the_action_for_that_endpoint_and_comes_back(admin_client):
    endpoint = make_endpoint()
    response = admin_client.post(url("endpoint_run", endpoint.pk, "send_test_event"))
    assert response.status_code == 302 and response["Location"] == url("endpoint_change", endpoint.pk)
    delivery = Delivery.objects.get()
    assert (delivery.endpoint_id, delivery.event.type) == (endpoint.pk, "hookpost.test")


def test_the_tool_url_takes_only_post_known_actions_and_existing_endpoints(admin_client):
    endpoint = make_endpoint()
    assert admin_client.get(url("endpoint_run", endpoint.pk, "send_test_event")).status_code == 405
    assert admin_client.post(url("endpoint_run", endpoint.pk, "delete_selected")).status_code == 403
    assert admin_client.post(url("endpoint_run", endpoint.pk, "nonsense")).status_code == 403
    assert admin_client.post(url("endpoint_run", endpoint.pk + 100, "send_test_event")).status_code == 404
    # Resume is not offered for an active endpoint.
    assert admin_client.post(url("endpoint_run", endpoint.pk, "resume")).status_code == 403
    assert not Delivery.objects.exists()


def test_rotating_shows_the_new_secret_once_and_the_old_one_signs_on_for_the_grace_period(admin_client):
    endpoint = make_endpoint()
    [old] = endpoint.signing_secrets()
    response = admin_client.post(url("endpoint_run", endpoint.pk, "rotate_secret"))
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    [new] = shown_secrets(html)
    assert new != old and html.count(new) == 1
    assert "keeps signing beside it until" in html
    endpoint.refresh_from_db()
    assert endpoint.signing_secrets() == [new, old]
    expires = dt.datetime.fromisoformat(endpoint.secret_summaries()[1]["expires_at"])
    assert dt.timedelta(hours=23, minutes=59) < expires - timezone.now() <= dt.timedelta(hours=24)
    assert f'href="{url("endpoint_change", endpoint.pk)}"' in html
    fingerprint = signing.parse_secret(new).fingerprint
    assert LogEntry.objects.filter(change_message__contains=f"new {fingerprint}").exists()
    after = page(admin_client, url("endpoint_change", endpoint.pk))
    assert new not in after and old not in after and shown_secrets(after) == []


@override_settings(
    HOOKPOST={"ALLOWED_NETWORKS": ["127.0.0.0/8"], "ALLOW_HTTP": True, "SECRET_ROTATION_GRACE": 600}
)
def test_the_grace_period_comes_from_the_settings(admin_client):
    endpoint = make_endpoint()
    admin_client.post(url("endpoint_run", endpoint.pk, "rotate_secret"))
    endpoint.refresh_from_db()
    expires = dt.datetime.fromisoformat(endpoint.secret_summaries()[1]["expires_at"])
    assert dt.timedelta(minutes=9) < expires - timezone.now() <= dt.timedelta(minutes=10)


def test_rotating_a_leaked_secret_stops_the_old_one_at_once(admin_client):
    endpoint = make_endpoint()
    response = admin_client.post(url("endpoint_run", endpoint.pk, "rotate_leaked_secret"))
    html = response.content.decode()
    [new] = shown_secrets(html)
    assert "stopped signing now" in html
    endpoint.refresh_from_db()
    assert endpoint.signing_secrets() == [new]


def test_rotating_several_endpoints_shows_each_new_secret_once(admin_client):
    first, second = make_endpoint(), make_endpoint()
    old = {first.pk: first.signing_secrets(), second.pk: second.signing_secrets()}
    response = admin_client.post(
        url("endpoint_changelist"),
        {"action": "rotate_secret", "index": "0", "_selected_action": [first.pk, second.pk]},
    )
    html = response.content.decode()
    shown = shown_secrets(html)
    assert len(shown) == len(set(shown)) == 2
    for endpoint in (first, second):
        endpoint.refresh_from_db()
        [new] = [s for s in shown if s in endpoint.signing_secrets()]
        assert endpoint.signing_secrets() == [new, *old[endpoint.pk]]
    assert f'href="{url("endpoint_changelist")}"' in html


def test_rotation_writes_only_the_secrets(admin_client):
    endpoint = make_endpoint()
    stale = Endpoint.objects.get(pk=endpoint.pk)
    Endpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=5, description="changed meanwhile")
    admin_client.post(url("endpoint_run", stale.pk, "rotate_secret"))
    endpoint.refresh_from_db()
    assert (endpoint.consecutive_failures, endpoint.description) == (5, "changed meanwhile")
    assert len(endpoint.signing_secrets()) == 2


def test_pause_and_resume_actions_skip_endpoints_not_in_the_right_state(admin_client):
    active, paused, disabled = (
        make_endpoint(),
        make_endpoint(status="paused"),
        make_endpoint(status="disabled"),
    )
    response = run_action(admin_client, "endpoint", "pause", [active, paused, disabled])
    assert message_list(response) == [(SUCCESS, "1 endpoint(s) paused; 2 skipped (not active).")]
    response = run_action(admin_client, "endpoint", "resume", [active, paused, disabled])
    assert message_list(response) == [(SUCCESS, "2 endpoint(s) resumed; 1 skipped (not paused).")]
    statuses = dict(Endpoint.objects.values_list("pk", "status"))
    assert statuses == {active.pk: "active", paused.pk: "active", disabled.pk: "disabled"}
    response = run_action(admin_client, "endpoint", "pause", [])
    assert response.status_code == 200  # Django: "Items must be selected"


def test_reenabling_a_disabled_endpoint_resets_its_health_and_points_at_its_cancelled_deliveries(
    admin_client,
):
    endpoint = make_endpoint(
        status="disabled",
        status_reason="failing with no success since …",
        consecutive_failures=40,
        failing_since=timezone.now(),
        blocked_until=timezone.now(),
    )
    make_delivery(make_event(), endpoint, Status.CANCELLED)
    response = run_action(admin_client, "endpoint", "reenable", [endpoint])
    assert message_list(response) == [
        (SUCCESS, "1 endpoint(s) re-enabled."),
        (
            INFO,
            "1 deliveries were cancelled when they were disabled: send them with “Replay failed deliveries”.",
        ),
    ]
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.status_reason, endpoint.consecutive_failures) == ("active", "", 0)
    assert (endpoint.failing_since, endpoint.blocked_until) == (None, None)


def test_the_reenable_button_works_for_a_disabled_endpoint(admin_client):
    endpoint = make_endpoint(status="disabled")
    response = admin_client.post(url("endpoint_run", endpoint.pk, "reenable"), follow=True)
    assert message_list(response) == [(SUCCESS, "1 endpoint(s) re-enabled.")]
    assert Endpoint.objects.get(pk=endpoint.pk).status == "active"


def test_replay_failed_sends_again_the_last_dead_or_cancelled_delivery_of_each_chain(admin_client):
    endpoint, other = make_endpoint(), make_endpoint()
    dead = make_delivery(make_event(), endpoint, Status.DEAD)
    cancelled = make_delivery(make_event(), endpoint, Status.CANCELLED)
    make_delivery(make_event(), endpoint, Status.DELIVERED)
    make_delivery(make_event(), endpoint, Status.PENDING)
    # Replayed once already, and the replay died too: only the replay goes again.
    chain_start = make_delivery(make_event(), endpoint, Status.DEAD)
    chain_end = make_delivery(chain_start.event, endpoint, Status.DEAD, replay_of=chain_start)
    make_delivery(make_event(), other, Status.DEAD)
    response = run_action(admin_client, "endpoint", "replay_failed", [endpoint])
    assert message_list(response) == [(SUCCESS, "3 failed deliveries queued again (same webhook-id).")]
    new = Delivery.objects.filter(status=Status.PENDING, replay_of__isnull=False)
    assert sorted(d.replay_of_id for d in new) == sorted([dead.pk, cancelled.pk, chain_end.pk])
    assert all(d.endpoint_id == endpoint.pk and d.event_id == d.replay_of.event_id for d in new)
    response = run_action(admin_client, "endpoint", "replay_failed", [other, endpoint])
    assert message_list(response)[0] == (SUCCESS, "1 failed deliveries queued again (same webhook-id).")


def test_replay_failed_says_when_there_is_nothing_to_replay(admin_client):
    endpoint = make_endpoint(status="paused")
    response = run_action(admin_client, "endpoint", "replay_failed", [endpoint])
    assert message_list(response) == [(WARNING, "No failed deliveries to replay.")]
    make_delivery(make_event(), endpoint, Status.DEAD)
    response = run_action(admin_client, "endpoint", "replay_failed", [endpoint])
    assert message_list(response) == [
        (
            SUCCESS,
            "1 failed deliveries queued again (same webhook-id). 1 endpoint(s) not active: "
            "their deliveries wait until resumed.",
        )
    ]


def test_a_viewer_gets_no_endpoint_actions(staff_viewer):
    endpoint = make_endpoint()
    response = staff_viewer.get(url("endpoint_changelist"))
    assert response.status_code == 200
    assert "send_test_event" not in response.content.decode()
    response = staff_viewer.post(
        url("endpoint_changelist"),
        {"action": "send_test_event", "index": "0", "_selected_action": [endpoint.pk]},
    )
    assert not Delivery.objects.exists()


def replayed_twice(endpoint: Endpoint) -> list[Delivery]:
    """A dead delivery, its replay (dead too) and the replay's replay, each with an attempt."""
    original = make_delivery(make_event(), endpoint, Status.DEAD)
    replay = make_delivery(original.event, endpoint, Status.DEAD, replay_of=original)
    again = make_delivery(original.event, endpoint, Status.PENDING, replay_of=replay)
    for delivery in (original, replay):
        make_attempt(delivery, status_code=500, verdict=Verdict.GAVE_UP)
    return [original, replay, again]


def test_an_endpoint_whose_deliveries_were_replayed_can_be_deleted(admin_client):
    endpoint, other = make_endpoint(), make_endpoint()
    replayed_twice(endpoint)
    kept = replayed_twice(other)
    html = page(admin_client, url("endpoint_delete", endpoint.pk))
    assert "Are you sure" in html
    response = admin_client.post(url("endpoint_delete", endpoint.pk), {"post": "yes"})
    assert response.status_code == 302
    assert list(Endpoint.objects.all()) == [other]
    assert set(Delivery.objects.all()) == set(kept)
    assert Attempt.objects.filter(delivery__endpoint=other).count() == 2
    assert Attempt.objects.count() == 2
    assert Event.objects.count() == 2  # events are the outbox's record: pruning removes them


def test_endpoints_whose_deliveries_were_replayed_can_be_deleted_in_bulk(admin_client):
    first, second, kept = make_endpoint(), make_endpoint(), make_endpoint()
    replayed_twice(first)
    replayed_twice(second)
    response = admin_client.post(
        url("endpoint_changelist"),
        {"action": "delete_selected", "post": "yes", "_selected_action": [first.pk, second.pk]},
    )
    assert response.status_code == 302
    assert list(Endpoint.objects.all()) == [kept]
    assert not Delivery.objects.exists() and not Attempt.objects.exists()


def test_deleting_a_user_takes_their_endpoints_and_its_records_along(admin_client):
    user = User.objects.create_user("leaving")
    endpoint = make_endpoint(owner=user)
    make_attempt(make_delivery(make_event(), endpoint))
    address = reverse("admin:auth_user_delete", args=[user.pk])
    assert "Are you sure" in page(admin_client, address)
    assert admin_client.post(address, {"post": "yes"}).status_code == 302
    assert not Endpoint.objects.exists() and not Delivery.objects.exists() and not Attempt.objects.exists()


def test_deleting_a_user_whose_endpoint_had_a_replayed_delivery(admin_client):
    user = User.objects.create_user("leaving")
    replayed_twice(make_endpoint(owner=user))
    kept = replayed_twice(make_endpoint())
    response = admin_client.post(reverse("admin:auth_user_delete", args=[user.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert set(Delivery.objects.all()) == set(kept)


# --- events, deliveries, attempts: read-only ----------------------------------------------------------


@pytest.mark.parametrize("model", ["event", "delivery", "attempt"])
def test_records_cannot_be_added(admin_client, model):
    assert admin_client.get(url(f"{model}_add")).status_code == 403
    assert admin_client.post(url(f"{model}_add"), {}).status_code == 403


def test_records_cannot_be_changed(admin_client):
    endpoint = make_endpoint()
    event = make_event()
    delivery = make_delivery(event, endpoint, Status.DEAD)
    attempt = make_attempt(delivery, status_code=500, verdict=Verdict.GAVE_UP)
    for name, obj, data in [
        ("event", event, {"type": "forged"}),
        ("delivery", delivery, {"status": "delivered"}),
        ("attempt", attempt, {"status_code": "200"}),
    ]:
        html = page(admin_client, url(f"{name}_change", obj.pk))
        assert 'name="_save"' not in html
        assert admin_client.post(url(f"{name}_change", obj.pk), data).status_code == 403
        # Retention is hookpost_prune's job: no deleting either.
        assert 'class="deletelink"' not in html
        assert 'value="delete_selected"' not in page(admin_client, url(f"{name}_changelist"))
        assert admin_client.post(url(f"{name}_delete", obj.pk), {"post": "yes"}).status_code == 403
    assert Event.objects.get().type == "library.book.deleted"
    assert Delivery.objects.get().status == Status.DEAD
    assert Attempt.objects.get().status_code == 500


def results(client: Client, model: str, **query: Any) -> list[Any]:
    response = client.get(url(f"{model}_changelist"), query)
    assert response.status_code == 200, response.content.decode()[:500]
    return list(response.context["cl"].result_list)


def test_events_can_be_found_by_id_type_and_object_pk(admin_client):
    book_7 = make_event("library.book.deleted", pk=7)
    book_77 = make_event("library.book.updated", pk=77)
    uuid_pk = make_event("library.tag.created", pk="2f9c4a1e-0000-4000-8000-000000000007")
    string_7 = make_event("library.tag.created", pk="7")
    assert results(admin_client, "event", q=book_7.id) == [book_7]
    assert set(results(admin_client, "event", q="library.book")) == {book_7, book_77}
    assert set(results(admin_client, "event", q="pk:7")) == {book_7, string_7}
    assert results(admin_client, "event", q="pk:77") == [book_77]
    assert results(admin_client, "event", q="pk:2f9c4a1e-0000-4000-8000-000000000007") == [uuid_pk]
    assert results(admin_client, "event", q="pk:7 deleted") == [book_7]
    assert results(admin_client, "event", q="PK:7 tag") == [string_7]
    assert results(admin_client, "event", q="pk:8") == []
    assert results(admin_client, "event", q="pk:") == []  # searches for the text "pk:"


def test_events_can_be_filtered_by_type_from_the_catalog_and_by_date(admin_client):
    deleted = make_event("library.book.deleted")
    make_event("library.author.created")
    html = page(admin_client, url("event_changelist"))
    assert "?type=library.book.deleted" in html and "?type=hookpost.test" in html
    assert results(admin_client, "event", type="library.book.deleted") == [deleted]
    today = timezone.localtime(timezone.now())
    found = results(
        admin_client,
        "event",
        occurred_at__year=str(today.year),
        occurred_at__month=str(today.month),
        occurred_at__day=str(today.day),
    )
    assert deleted in found and len(found) == 2
    assert results(admin_client, "event", occurred_at__year=str(today.year - 1)) == []


def test_events_can_be_filtered_by_endpoint_and_state(admin_client):
    a = make_endpoint(url="https://a.example.com/in")
    b = make_endpoint(url="https://b.example.com/in")
    to_both = make_event(pk=1)
    make_delivery(to_both, a, Status.DEAD)
    make_delivery(to_both, a, Status.DELIVERED, replay_of=Delivery.objects.get())
    make_delivery(to_both, b)
    to_b = make_event(pk=2)
    make_delivery(to_b, b)
    waiting = make_event(pk=3)
    Event.objects.filter(pk=waiting.pk).update(fanned_out_at=None)
    invalid = make_event(pk=4)
    Event.objects.filter(pk=invalid.pk).update(error="data.fields.cover: not encodable")
    html = page(admin_client, url("event_changelist"))
    assert f"?endpoint={a.pk}" in html and "https://a.example.com/in" in html
    assert results(admin_client, "event", endpoint=str(a.pk)) == [to_both]  # once, despite two deliveries
    assert set(results(admin_client, "event", endpoint=str(b.pk))) == {to_both, to_b}
    assert results(admin_client, "event", endpoint="nonsense") != []  # ignored, not a 500
    assert results(admin_client, "event", state="awaiting") == [waiting]
    assert results(admin_client, "event", state="invalid") == [invalid]
    assert set(results(admin_client, "event", state="fanned_out")) == {to_both, to_b}


def test_the_event_list_shows_the_object_pk_and_state(admin_client):
    make_event(pk=4242)
    invalid = make_event("library.book.created", pk=5)
    Event.objects.filter(pk=invalid.pk).update(error="data.fields.cover: not encodable")
    html = page(admin_client, url("event_changelist"))
    assert "4242" in html and "fanned out" in html and "invalid: not sent" in html


def test_an_event_page_shows_its_payload_and_its_deliveries(admin_client):
    endpoint = make_endpoint(url="https://a.example.com/in")
    event = make_event(pk=3, title="<Dune>")
    make_delivery(event, endpoint, Status.DEAD)
    html = page(admin_client, url("event_change", event.pk))
    assert "&quot;title&quot;: &quot;&lt;Dune&gt;&quot;" in html
    assert "https://a.example.com/in" in html and "Dead" in html
    assert 'data-action="replay"' in html


def test_deliveries_can_be_found_by_event_type_object_pk_endpoint_and_status(admin_client):
    a = make_endpoint(url="https://a.example.com/in")
    b = make_endpoint(url="https://b.example.com/in")
    d1 = make_delivery(make_event("library.book.deleted", pk=1), a, Status.DEAD)
    d2 = make_delivery(make_event("library.author.created", pk=2), b)
    d3 = make_delivery(make_event("library.book.deleted", pk=2), b, Status.PENDING)
    assert results(admin_client, "delivery", q="pk:2") == [d3, d2]
    assert results(admin_client, "delivery", q="b.example.com pk:2") == [d3, d2]
    assert results(admin_client, "delivery", q="a.example.com") == [d1]
    assert results(admin_client, "delivery", q=d1.event_id) == [d1]
    assert results(admin_client, "delivery", status__exact="dead") == [d1]
    assert results(admin_client, "delivery", type="library.book.deleted") == [d3, d1]
    assert results(admin_client, "delivery", endpoint__id__exact=str(b.pk)) == [d3, d2]
    year = str(timezone.localtime(timezone.now()).year)
    assert len(results(admin_client, "delivery", created_at__year=year)) == 3


def test_attempts_can_be_found_by_event_type_object_pk_endpoint_and_response(admin_client):
    a = make_endpoint(url="https://a.example.com/in")
    b = make_endpoint(url="https://b.example.com/in")
    ok = make_attempt(make_delivery(make_event(pk=1), a))
    failed = make_attempt(
        make_delivery(make_event("library.author.created", pk=2), b, Status.PENDING),
        status_code=503,
        verdict=Verdict.RETRY,
    )
    timeout = make_attempt(
        failed.delivery, number=2, status_code=None, verdict=Verdict.RETRY, error="Timeout"
    )
    assert set(results(admin_client, "attempt", q="pk:2")) == {failed, timeout}
    assert results(admin_client, "attempt", q="a.example.com") == [ok]
    assert results(admin_client, "attempt", response="5") == [failed]
    assert results(admin_client, "attempt", response="2") == [ok]
    assert results(admin_client, "attempt", response="none") == [timeout]
    assert results(admin_client, "attempt", verdict__exact="delivered") == [ok]
    assert results(admin_client, "attempt", type="library.author.created") != []
    assert set(results(admin_client, "attempt", delivery__endpoint__id__exact=str(b.pk))) == {failed, timeout}


def test_a_delivery_page_shows_its_attempts_in_order(admin_client):
    endpoint = make_endpoint(url="https://a.example.com/in")
    delivery = make_delivery(make_event(pk=9), endpoint)
    start = timezone.now() - dt.timedelta(minutes=1)
    make_attempt(
        delivery, 1, 503, Verdict.RETRY, response_body="<busy> try later", duration_ms=812, started_at=start
    )
    make_attempt(
        delivery, 2, None, Verdict.RETRY, error="ConnectionRefusedError: nobody there", duration_ms=3
    )
    make_attempt(delivery, 3, 200, Verdict.DELIVERED, response_body="ok", duration_ms=45)
    html = page(admin_client, url("delivery_change", delivery.pk))
    rows = re.findall(r'<tr class="form-row[^"]*"[^>]*>(.*?)</tr>', html, re.S)
    assert len(rows) == 3
    assert all(
        re.search(rf'<td class="field-number">\s*<p>{n}</p>', row)
        for n, row in zip((1, 2, 3), rows, strict=True)
    )
    assert "503" in rows[0] and "812 ms" in rows[0] and "Will retry" in rows[0]
    assert "&lt;busy&gt; try later" in rows[0]
    assert "ConnectionRefusedError: nobody there" in rows[1]
    assert "200" in rows[2] and "45 ms" in rows[2] and "Delivered" in rows[2]
    assert "https://a.example.com/in" in html and delivery.event_id in html


def test_an_attempt_page_shows_the_request_headers_and_the_response(admin_client):
    endpoint = make_endpoint()
    attempt = make_attempt(
        make_delivery(make_event(), endpoint),
        request_headers={"webhook-id": "msg_x", "authorization": "[redacted]"},
        response_body="thanks",
    )
    html = page(admin_client, url("attempt_change", attempt.pk))
    assert "&quot;webhook-id&quot;: &quot;msg_x&quot;" in html
    assert "[redacted]" in html and "thanks" in html


# --- replay ------------------------------------------------------------------------------------------


def test_the_delivery_replay_action_queues_finished_ones_again_and_skips_pending_ones(admin_client):
    endpoint = make_endpoint()
    dead = make_delivery(make_event(), endpoint, Status.DEAD)
    delivered = make_delivery(make_event(), endpoint)
    pending = make_delivery(make_event(), endpoint, Status.PENDING)
    response = run_action(admin_client, "delivery", "replay", [dead, delivered, pending])
    assert message_list(response) == [
        (SUCCESS, "2 deliveries queued again (same webhook-id)."),
        (WARNING, "1 skipped: still pending, sent anyway."),
    ]
    replays = Delivery.objects.filter(replay_of__isnull=False)
    assert sorted((d.replay_of_id, d.event_id, d.status) for d in replays) == sorted(
        [(dead.pk, dead.event_id, "pending"), (delivered.pk, delivered.event_id, "pending")]
    )


def test_the_replay_button_on_a_delivery_page(admin_client):
    delivery = make_delivery(make_event(), make_endpoint(), Status.DEAD)
    assert 'data-action="replay"' in page(admin_client, url("delivery_change", delivery.pk))
    response = admin_client.post(url("delivery_run", delivery.pk, "replay"))
    assert response.status_code == 302 and response["Location"] == url("delivery_change", delivery.pk)
    assert Delivery.objects.get(replay_of=delivery).status == Status.PENDING
    pending = Delivery.objects.get(replay_of=delivery)
    assert 'data-action="replay"' not in page(admin_client, url("delivery_change", pending.pk))
    assert admin_client.post(url("delivery_run", pending.pk, "replay")).status_code == 403


def test_the_event_replay_action_sends_each_event_once_more_to_every_endpoint_that_had_it(admin_client):
    a, b = make_endpoint(), make_endpoint()
    event = make_event()
    to_a = make_delivery(event, a, Status.DEAD)
    to_a_again = make_delivery(event, a, Status.DELIVERED, replay_of=to_a)
    to_b = make_delivery(event, b)
    lonely = make_event()
    response = run_action(admin_client, "event", "replay", [event, lonely])
    assert message_list(response) == [(SUCCESS, "2 deliveries queued again (same webhook-id).")]
    new = Delivery.objects.filter(status=Status.PENDING)
    assert sorted((d.endpoint_id, d.replay_of_id) for d in new) == sorted(
        [(a.pk, to_a_again.pk), (b.pk, to_b.pk)]
    )
    response = run_action(admin_client, "event", "replay", [event])
    assert message_list(response) == [(WARNING, "2 skipped: still pending, sent anyway.")]
    response = run_action(admin_client, "event", "replay", [lonely])
    assert message_list(response) == [(WARNING, "Nothing to replay: no deliveries.")]


def test_the_attempt_replay_action_replays_each_delivery_once(admin_client):
    delivery = make_delivery(make_event(), make_endpoint(), Status.DEAD)
    first = make_attempt(delivery, 1, 500, Verdict.RETRY)
    second = make_attempt(delivery, 2, 500, Verdict.GAVE_UP)
    response = run_action(admin_client, "attempt", "replay", [first, second])
    assert message_list(response) == [(SUCCESS, "1 deliveries queued again (same webhook-id).")]
    assert Delivery.objects.filter(replay_of=delivery).count() == 1


def test_a_viewer_can_look_but_not_replay(staff_viewer):
    delivery = make_delivery(make_event(), make_endpoint(), Status.DEAD)
    for model in ("event", "delivery", "attempt"):
        html = page(staff_viewer, url(f"{model}_changelist"))
        assert 'value="replay"' not in html
    html = page(staff_viewer, url("delivery_change", delivery.pk))
    assert 'data-action="replay"' not in html
    assert staff_viewer.post(url("delivery_run", delivery.pk, "replay")).status_code == 403
    staff_viewer.post(
        url("delivery_changelist"), {"action": "replay", "index": "0", "_selected_action": [delivery.pk]}
    )
    assert Delivery.objects.count() == 1


def test_a_user_allowed_to_change_deliveries_may_replay(db):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="hookpost", codename__in=["view_delivery", "change_delivery"]
        )
    )
    client = Client()
    client.force_login(user)
    delivery = make_delivery(make_event(), make_endpoint(), Status.DEAD)
    assert 'value="replay"' in page(client, url("delivery_changelist"))
    run_action(client, "delivery", "replay", [delivery])
    assert Delivery.objects.filter(replay_of=delivery).count() == 1


# --- no N+1 ------------------------------------------------------------------------------------------


def fill_outbox(endpoints: int, deliveries_each: int, attempts_each: int) -> Delivery:
    last = None
    for e in range(endpoints):
        endpoint = make_endpoint(url=f"https://n{e}.example.com/in")
        for d in range(deliveries_each):
            last = make_delivery(make_event(pk=d), endpoint, Status.DEAD)
            for n in range(attempts_each):
                make_attempt(last, n + 1, 500, Verdict.RETRY)
    assert last is not None
    return last


@pytest.mark.parametrize("model", ["event", "delivery", "attempt"])
def test_changelists_cost_the_same_few_queries_whatever_the_number_of_rows(
    admin_client, django_assert_max_num_queries, model
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    fill_outbox(1, 1, 1)
    admin_client.get(url(f"{model}_changelist"))
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url(f"{model}_changelist"))
    fill_outbox(4, 8, 3)
    with django_assert_max_num_queries(len(few)):
        response = admin_client.get(url(f"{model}_changelist"))
    assert len(response.context["cl"].result_list) > 30


def test_a_delivery_page_costs_the_same_few_queries_whatever_the_number_of_attempts(
    admin_client, django_assert_max_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    one = fill_outbox(1, 1, 1)
    admin_client.get(url("delivery_change", one.pk))
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url("delivery_change", one.pk))
    many = fill_outbox(1, 1, 25)
    with django_assert_max_num_queries(len(few)):
        html = page(admin_client, url("delivery_change", many.pk))
    assert html.count('class="field-number"') == 25


def test_an_event_page_costs_the_same_few_queries_whatever_the_number_of_deliveries(
    admin_client, django_assert_max_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    event = make_event()
    make_delivery(event, make_endpoint())
    admin_client.get(url("event_change", event.pk))
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url("event_change", event.pk))
    for i in range(15):
        make_delivery(event, make_endpoint(url=f"https://m{i}.example.com/in"))
    with django_assert_max_num_queries(len(few)):
        html = page(admin_client, url("event_change", event.pk))
    assert html.count("https://m") == 15


# --- the secret never shows again, on any page ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_no_admin_page_shows_a_secret_after_it_was_made(admin_client):
    """Add an endpoint, deliver to it, rotate; then render every page that can touch it."""
    with Receiver() as receiver:
        receiver.script("/hooks", 500, 200)
        endpoint, first, _ = add_endpoint(
            admin_client, url=receiver.url("/hooks"), event_types_1="library.*", retry_schedule="[0, 0, 0]"
        )
        second = shown_secrets(
            admin_client.post(url("endpoint_run", endpoint.pk, "rotate_secret")).content.decode()
        )[0]
        admin_client.post(url("endpoint_run", endpoint.pk, "send_test_event"))
        Author.objects.create(name="Le Guin")
        Worker(concurrency=2, poll_interval=0.01).run(burst=True)
        assert len(receiver.received()) == 3
    endpoint.refresh_from_db()
    sealed = [entry["key"] for entry in endpoint.secrets]
    forbidden = [first, second, first.removeprefix("whsec_"), second.removeprefix("whsec_"), *sealed]
    delivery = Delivery.objects.filter(event__type="library.author.created").get()
    attempts = list(Attempt.objects.order_by("id"))
    assert [a.status_code for a in attempts if a.delivery_id == delivery.pk] in ([500, 200], [200])
    # The attempt log keeps the signatures (they prove nothing without the secret), not the secrets.
    for attempt in attempts:
        headers = json.dumps(attempt.request_headers)
        assert "webhook-signature" in attempt.request_headers
        assert not any(secret in headers for secret in forbidden)
    pages = {
        "endpoint changelist": url("endpoint_changelist"),
        "endpoint change": url("endpoint_change", endpoint.pk),
        "endpoint history": url("endpoint_history", endpoint.pk),
        "endpoint delete": url("endpoint_delete", endpoint.pk),
        "endpoint add": url("endpoint_add"),
        "deliveries of the endpoint": f"{url('delivery_changelist')}?endpoint__id__exact={endpoint.pk}",
        "delivery changelist": url("delivery_changelist"),
        "delivery change": url("delivery_change", delivery.pk),
        "attempt changelist": url("attempt_changelist"),
        "event changelist": url("event_changelist"),
        "event change": url("event_change", delivery.event_id),
        "log entries": reverse("admin:index"),
    }
    pages.update({f"attempt {a.pk}": url("attempt_change", a.pk) for a in attempts})
    for name, address in pages.items():
        html = page(admin_client, address)
        leaked = [s for s in forbidden if s in html]
        assert leaked == [] and shown_secrets(html) == [], name


def test_a_password_in_an_endpoint_url_is_masked_in_lists_and_str(admin_client):
    endpoint = Endpoint.objects.create(url="https://hook:pa55-hunter2@e.example.com/in", event_types=["*"])
    assert str(endpoint) == endpoint.display_url == "https://hook:***@e.example.com/in"
    assert Endpoint(url="https://e.example.com/in").display_url == "https://e.example.com/in"
    page = admin_client.get(reverse("admin:hookpost_endpoint_changelist")).content.decode()
    assert "hook:***@e.example.com" in page and "hunter2" not in page


def test_a_paused_endpoints_delivery_shows_when_it_will_be_due_not_the_parked_time(admin_client):
    endpoint = make_endpoint()
    due = timezone.now() + dt.timedelta(minutes=5)
    delivery = make_delivery(make_event(), endpoint, Status.PENDING, next_attempt_at=due)
    outbox.pause_endpoint(endpoint)
    shown = admin._when(due)
    listing = page(admin_client, url("delivery_changelist"))
    detail = page(admin_client, url("delivery_change", delivery.pk))
    for html in (listing, detail):
        assert f"{shown} (endpoint paused)" in html
        assert admin._when(due + PAUSE_SHIFT) not in html
    outbox.resume_endpoint(endpoint)
    listing = page(admin_client, url("delivery_changelist"))
    assert shown in listing and "(endpoint paused)" not in listing
