"""The receiving side's admin: sources with write-only keys, received webhooks read-only with reprocess."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.contrib.messages import ERROR, SUCCESS
from django.urls import reverse

from hookpost import inbox, signals, signing, sources
from hookpost.models import InboundWebhook, Source

pytestmark = pytest.mark.django_db

Status = InboundWebhook.Status


def key_text(key: str) -> str:
    """The secret part of a key: what must never reach a page."""
    return key.split("_", 1)[1]


def fingerprint(key: str) -> str:
    parsed = signing.parse_verifying_key(key)
    return f"{parsed.scheme} {parsed.fingerprint}"


def source_form(**changes: str) -> dict[str, str]:
    data = {
        "name": "partner",
        "description": "Our partner",
        "is_active": "on",
        "secrets": "",
        "event_types": "[]",
        "mode": "",
        "tolerance": "",
        "max_body_bytes": "",
    }
    data.update(changes)
    return data


def add_url() -> str:
    return reverse("admin:hookpost_source_add")


def change_url(source: Source) -> str:
    return reverse("admin:hookpost_source_change", args=[source.pk])


def pages_of(admin_client, source: Source) -> dict[str, str]:
    return {
        "changelist": admin_client.get(reverse("admin:hookpost_source_changelist")).content.decode(),
        "change": admin_client.get(change_url(source)).content.decode(),
        "add": admin_client.get(add_url()).content.decode(),
    }


# --- sources --------------------------------------------------------------------------------------


def test_a_source_added_with_a_whsec_secret_is_saved_with_it(admin_client):
    secret = signing.generate_secret()
    response = admin_client.post(add_url(), source_form(secrets=secret, mode="worker"))
    assert response.status_code == 302
    source = Source.objects.get()
    assert (source.name, source.keys(), source.mode, source.is_active) == ("partner", secret, "worker", True)
    assert secret not in source.secrets  # sealed at rest
    config = sources.get_source("partner")
    assert config is not None and config.keys == (signing.parse_verifying_key(secret),)
    assert key_text(secret) not in response.content.decode()


def test_the_source_changelist_shows_keys_as_fingerprints_never_the_keys(admin_client):
    old, new = signing.generate_secret(), signing.generate_secret()
    Source.objects.create(name="partner", secrets=f"{old}\n{new}")
    page = admin_client.get(reverse("admin:hookpost_source_changelist")).content.decode()
    assert f"{fingerprint(old)}, {fingerprint(new)}" in page
    assert key_text(old) not in page and key_text(new) not in page


def test_the_source_change_page_shows_keys_as_fingerprints_never_the_keys(admin_client):
    secret = signing.generate_secret()
    source = Source.objects.create(name="partner", secrets=secret)
    page = admin_client.get(change_url(source)).content.decode()
    assert fingerprint(secret) in page
    assert key_text(secret) not in page


def test_no_source_page_contains_a_key(admin_client):
    secret = signing.generate_secret()
    admin_client.post(add_url(), source_form(secrets=secret))
    pages = pages_of(admin_client, Source.objects.get())
    assert [name for name, page in pages.items() if key_text(secret) in page] == []


def test_an_add_form_sent_back_with_errors_does_not_repeat_the_key(admin_client):
    secret = signing.generate_secret()
    response = admin_client.post(add_url(), source_form(secrets=secret, tolerance="-1"))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert not Source.objects.exists()
    assert key_text(secret) not in response.content.decode()


def test_saving_a_source_with_the_key_field_blank_keeps_its_keys(admin_client):
    secret = signing.generate_secret()
    source = Source.objects.create(name="partner", secrets=secret)
    response = admin_client.post(change_url(source), source_form(description="renamed", secrets=""))
    assert response.status_code == 302
    source.refresh_from_db()
    assert (source.description, source.keys()) == ("renamed", secret)


def test_saving_a_source_with_new_keys_replaces_the_old_ones(admin_client):
    old = signing.generate_secret()
    private, public = signing.generate_ed25519_keypair()
    new = signing.generate_secret()
    source = Source.objects.create(name="partner", secrets=old)
    response = admin_client.post(change_url(source), source_form(secrets=f"  {new}\n\n{public}\n"))
    assert response.status_code == 302
    source.refresh_from_db()
    assert source.keys() == f"{new}\n\n{public}"
    page = admin_client.get(reverse("admin:hookpost_source_changelist")).content.decode()
    assert f"{fingerprint(new)}, {fingerprint(public)}" in page
    assert fingerprint(public).startswith("v1a ")
    assert key_text(private) not in page


@pytest.mark.parametrize(
    "bad_key",
    [
        pytest.param("whsec_not*base64!secret", id="not-base64"),
        pytest.param("whpk_c2hvcnQ=", id="short-public-key"),
    ],
)
def test_an_invalid_key_is_refused_with_an_error_that_does_not_repeat_it(admin_client, bad_key):
    good = signing.generate_secret()
    response = admin_client.post(add_url(), source_form(secrets=f"{good}\n{bad_key}"))
    assert response.status_code == 200
    assert not Source.objects.exists()
    errors = response.context["adminform"].form.errors["secrets"]
    assert len(errors) == 1
    assert errors[0].startswith("Key on line 2:")
    assert key_text(bad_key) not in errors[0] and key_text(good) not in errors[0]


def test_a_private_whsk_key_is_refused(admin_client):
    private, _ = signing.generate_ed25519_keypair()
    response = admin_client.post(add_url(), source_form(secrets=private))
    assert response.status_code == 200
    assert not Source.objects.exists()
    [error] = response.context["adminform"].form.errors["secrets"]
    assert "whpk_" in error and "private" in error
    assert key_text(private) not in error


def test_a_new_source_needs_a_key(admin_client):
    response = admin_client.post(add_url(), source_form(secrets=""))
    assert response.status_code == 200
    assert "secrets" in response.context["adminform"].form.errors
    assert not Source.objects.exists()


def test_a_source_named_like_one_in_settings_is_refused_and_an_older_one_is_marked(admin_client, settings):
    secret = signing.generate_secret()
    Source.objects.create(name="partner", secrets=secret)
    settings.HOOKPOST = {**settings.HOOKPOST, "RECEIVER_SOURCES": {"partner": {"secrets": [secret]}}}
    # Declared in settings after the admin row was made: the list says which one answers.
    changelist = admin_client.get(reverse("admin:hookpost_source_changelist")).content.decode()
    assert "RECEIVER_SOURCES&#x27;] wins" in changelist
    response = admin_client.post(add_url(), source_form(name="partner", secrets=secret))
    assert response.status_code == 200
    assert "declares a source named &#x27;partner&#x27;" in response.content.decode()
    assert admin_client.post(add_url(), source_form(name="other", secrets=secret)).status_code == 302


def test_a_source_with_the_event_types_field_blank_accepts_every_type(admin_client):
    secret = signing.generate_secret()
    response = admin_client.post(add_url(), source_form(secrets=secret, event_types=""))
    assert response.status_code == 302
    assert Source.objects.get().event_types == []


# --- received webhooks ----------------------------------------------------------------------------

SECRET = signing.generate_secret()


def receive(msg_id: str, data: Any = None, *, mode: str = "worker") -> InboundWebhook:
    source = sources.build("partner", {"secrets": [SECRET], "mode": mode})
    body = json.dumps({"type": "library.book.deleted", "data": data or {"title": "Dune"}}).encode()
    headers = signing.sign_headers(msg_id, int(time.time()), body, [SECRET])
    message = signing.verify(headers, body, source.keys)
    text, payload = inbox.decode(body)
    received = inbox.receive(
        source, message, event_type="library.book.deleted", body=text, payload=payload, headers=headers
    )
    return InboundWebhook.objects.get(pk=received.webhook.pk)


class Handler:
    def __init__(self) -> None:
        self.handled: list[int] = []
        self.error: BaseException | None = None

    def __call__(self, sender: Any, *, webhook: InboundWebhook, **kwargs: Any) -> None:
        self.handled.append(webhook.pk)
        if self.error is not None:
            raise self.error


@pytest.fixture
def handler():
    h = Handler()
    signals.webhook_received.connect(h, weak=False, dispatch_uid="test-receiver-admin")
    yield h
    signals.webhook_received.disconnect(dispatch_uid="test-receiver-admin")


def inbound_changelist(admin_client, **query: str) -> list[InboundWebhook]:
    response = admin_client.get(reverse("admin:hookpost_inboundwebhook_changelist"), query)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def reprocess(admin_client, *webhooks: InboundWebhook) -> list[tuple[int, str]]:
    """Run the action on ``webhooks``; the messages the changelist then shows."""
    url = reverse("admin:hookpost_inboundwebhook_changelist")
    response = admin_client.post(
        url, {"action": "reprocess", "index": "0", "_selected_action": [w.pk for w in webhooks]}, follow=True
    )
    assert response.redirect_chain == [(url, 302)]
    return [(m.level, m.message) for m in response.context["messages"]]


def test_the_received_webhooks_changelist_lists_them_with_their_status(admin_client, handler):
    handler.error = RuntimeError("down")
    failed = receive("msg_failed", mode="inline")
    handler.error = None
    processed = receive("msg_processed", mode="inline")
    pending = receive("msg_pending")
    response = admin_client.get(reverse("admin:hookpost_inboundwebhook_changelist"))
    assert response.status_code == 200
    assert set(response.context["cl"].result_list) == {failed, processed, pending}
    page = response.content.decode()
    for text in ("msg_failed", "msg_processed", "msg_pending", "Failed", "Processed", "Pending"):
        assert text in page


def test_a_received_webhook_page_shows_its_status_its_body_indented_and_its_last_error(admin_client, handler):
    handler.error = RuntimeError("the <partner> is down")
    webhook = receive("msg_1", {"title": "Été"}, mode="inline")
    response = admin_client.get(reverse("admin:hookpost_inboundwebhook_change", args=[webhook.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "msg_1" in page and "Failed" in page
    assert "\n  &quot;type&quot;: &quot;library.book.deleted&quot;,\n" in page
    assert "\n    &quot;title&quot;: &quot;Été&quot;\n" in page
    assert "Traceback (most recent call last):" in page
    assert "RuntimeError: the &lt;partner&gt; is down" in page
    assert "<partner>" not in page
    # Read-only: no save button.
    assert 'name="_save"' not in page


def test_received_webhooks_cannot_be_added_in_the_admin(admin_client):
    assert admin_client.get(reverse("admin:hookpost_inboundwebhook_add")).status_code == 403
    response = admin_client.post(reverse("admin:hookpost_inboundwebhook_add"), {"webhook_id": "forged"})
    assert response.status_code == 403
    assert not InboundWebhook.objects.exists()


def test_a_received_webhook_cannot_be_changed_in_the_admin(admin_client):
    webhook = receive("msg_1")
    response = admin_client.post(
        reverse("admin:hookpost_inboundwebhook_change", args=[webhook.pk]),
        {"source": "other", "webhook_id": "forged", "status": "processed", "attempts": "9", "_save": "Save"},
    )
    assert response.status_code == 403
    assert InboundWebhook.objects.get(pk=webhook.pk) == webhook
    stored = InboundWebhook.objects.get(pk=webhook.pk)
    assert (stored.source, stored.webhook_id, stored.status, stored.attempts) == (
        "partner",
        "msg_1",
        Status.PENDING,
        0,
    )


def test_received_webhooks_can_be_found_by_their_webhook_id(admin_client):
    receive("msg_1")
    wanted = receive("msg_2")
    receive("msg_20")
    assert inbound_changelist(admin_client, q="msg_2") == [wanted]
    assert inbound_changelist(admin_client, q="msg_3") == []


def test_received_webhooks_can_be_filtered_by_status(admin_client, handler):
    handler.error = RuntimeError("down")
    failed = receive("msg_failed", mode="inline")
    handler.error = None
    processed = receive("msg_processed", mode="inline")
    pending = receive("msg_pending")
    assert inbound_changelist(admin_client, status__exact="failed") == [failed]
    assert inbound_changelist(admin_client, status__exact="processed") == [processed]
    assert inbound_changelist(admin_client, status__exact="pending") == [pending]


def test_the_reprocess_action_handles_the_selected_webhooks_and_says_so(admin_client, handler):
    handler.error = RuntimeError("down")
    failed = receive("msg_failed", mode="inline")
    handler.error = None
    processed = receive("msg_processed", mode="inline")
    untouched = receive("msg_untouched")
    handler.handled.clear()
    assert reprocess(admin_client, failed, processed) == [(SUCCESS, "2 webhook(s) processed.")]
    assert sorted(handler.handled) == sorted([failed.pk, processed.pk])
    rows = {w.pk: w for w in InboundWebhook.objects.all()}
    assert (rows[failed.pk].status, rows[failed.pk].attempts, rows[failed.pk].last_error) == (
        Status.PROCESSED,
        2,
        "",
    )
    assert (rows[processed.pk].status, rows[processed.pk].attempts) == (Status.PROCESSED, 2)
    assert (rows[untouched.pk].status, rows[untouched.pk].attempts) == (Status.PENDING, 0)


def test_the_reprocess_action_reports_a_failing_handler_and_the_row_records_it(admin_client, handler):
    processed = receive("msg_processed", mode="inline")
    pending = receive("msg_pending")
    handler.error = ValueError("cannot handle this one")
    messages = reprocess(admin_client, processed)
    assert messages == [(ERROR, "1 webhook(s) failed again; see their last error.")]
    stored = InboundWebhook.objects.get(pk=processed.pk)
    assert (stored.status, stored.attempts, stored.processed_at) == (Status.FAILED, 2, None)
    assert "ValueError: cannot handle this one" in stored.last_error
    handler.error = None
    handler.handled.clear()
    assert reprocess(admin_client, processed, pending) == [(SUCCESS, "2 webhook(s) processed.")]
    assert InboundWebhook.objects.get(pk=processed.pk).status == Status.PROCESSED


def test_the_reprocess_action_reports_successes_and_failures_together(admin_client, handler):
    first = receive("msg_1")
    second = receive("msg_2")

    def fail_second(sender: Any, *, webhook: InboundWebhook, **kwargs: Any) -> None:
        if webhook.pk == second.pk:
            raise RuntimeError("only this one")

    signals.webhook_received.connect(fail_second, weak=False, dispatch_uid="test-receiver-admin-second")
    try:
        messages = reprocess(admin_client, first, second)
    finally:
        signals.webhook_received.disconnect(dispatch_uid="test-receiver-admin-second")
    assert messages == [
        (SUCCESS, "1 webhook(s) processed."),
        (ERROR, "1 webhook(s) failed again; see their last error."),
    ]
    statuses = dict(InboundWebhook.objects.values_list("pk", "status"))
    assert statuses == {first.pk: Status.PROCESSED, second.pk: Status.FAILED}
