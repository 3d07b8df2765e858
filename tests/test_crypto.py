"""Secrets at rest: sealing, key rotation, the key derived from SECRET_KEY, and what the models store."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import override_settings
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from hookpost import crypto, signing, sources
from hookpost.delivery import build_request
from hookpost.exceptions import ConfigurationError
from hookpost.models import Delivery, Endpoint, Event, Source
from hookpost.worker import Worker
from library.models import Author
from tests.receiver import Receiver

pytestmark = pytest.mark.django_db

KEY_A, KEY_B = crypto.generate_key(), crypto.generate_key()


def keys(*encryption_keys: str, **django: object) -> override_settings:
    """Settings with these ENCRYPTION_KEYS (none: the key derived from SECRET_KEY)."""
    hookpost = {**settings.HOOKPOST, "ENCRYPTION_KEYS": list(encryption_keys)}
    return override_settings(HOOKPOST=hookpost, **django)


def stored_row(endpoint: Endpoint) -> str:
    """The endpoint's secrets column as the database holds it, read with plain SQL."""
    table = connection.ops.quote_name(Endpoint._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT secrets FROM {table} WHERE id = %s", [endpoint.pk])
        value = cursor.fetchone()[0]
    return value if isinstance(value, str) else json.dumps(value)


# --- sealing ---------------------------------------------------------------------------------------


def test_a_sealed_value_opens_to_the_plaintext_and_does_not_contain_it():
    secret = signing.generate_secret()
    with keys(KEY_A):
        sealed = crypto.seal(secret)
        assert crypto.is_sealed(sealed) and not crypto.is_sealed(secret)
        assert secret not in sealed and secret.removeprefix("whsec_") not in sealed
        assert crypto.unseal(sealed) == secret


def test_sealing_twice_gives_different_tokens_and_sealing_a_sealed_value_changes_nothing():
    with keys(KEY_A):
        first, second = crypto.seal("whsec_abc"), crypto.seal("whsec_abc")
        assert first != second  # a fresh IV each time: equal secrets do not look equal at rest
        assert crypto.seal(first) == first


def test_plaintext_is_returned_as_it_is_by_unseal():
    assert crypto.unseal("whsec_not_sealed") == "whsec_not_sealed"


def test_a_new_first_key_seals_while_the_old_one_still_opens_then_reseal_moves_it_over():
    with keys(KEY_A):
        sealed = crypto.seal("whsec_rotate_me")
    with keys(KEY_B, KEY_A):
        assert crypto.unseal(sealed) == "whsec_rotate_me"
        resealed = crypto.reseal(sealed)
    assert resealed != sealed
    with keys(KEY_B):
        assert crypto.unseal(resealed) == "whsec_rotate_me"
    with keys(KEY_A), pytest.raises(ConfigurationError, match=r"hookpost.E020: a stored secret cannot be"):
        crypto.unseal(resealed)


def test_without_encryption_keys_a_key_derived_from_secret_key_seals_and_its_fallbacks_open():
    with keys(SECRET_KEY="first-secret-key-for-this-test"):
        assert crypto.uses_derived_key()
        sealed = crypto.seal("whsec_derived")
    with keys(SECRET_KEY="second-key", SECRET_KEY_FALLBACKS=["first-secret-key-for-this-test"]):
        assert crypto.unseal(sealed) == "whsec_derived"
    with keys(SECRET_KEY="second-key"), pytest.raises(ConfigurationError):
        crypto.unseal(sealed)


def test_moving_from_the_derived_key_to_encryption_keys_keeps_old_rows_readable():
    with keys():
        sealed = crypto.seal("whsec_from_before")
    with keys(KEY_A):
        assert not crypto.uses_derived_key()
        assert crypto.unseal(sealed) == "whsec_from_before"


def test_a_bad_encryption_key_is_a_configuration_error_that_does_not_echo_it():
    with keys("not-a-fernet-key"), pytest.raises(ConfigurationError) as caught:
        crypto.seal("whsec_x")
    assert "hookpost.E020" in str(caught.value) and "not-a-fernet-key" not in str(caught.value)


def test_a_tampered_token_does_not_open():
    with keys(KEY_A):
        sealed = crypto.seal("whsec_x")
        tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
        with pytest.raises(ConfigurationError):
            crypto.unseal(tampered)


# --- endpoints -------------------------------------------------------------------------------------


def test_an_endpoint_keeps_its_secret_sealed_in_the_database_and_signs_with_the_plaintext():
    endpoint = Endpoint(url="https://example.com/hooks", event_types=["*"])
    secret = endpoint.add_secret()
    endpoint.save()
    raw = stored_row(endpoint)
    assert secret not in raw and secret.removeprefix("whsec_") not in raw
    assert crypto.PREFIX in raw
    fresh = Endpoint.objects.get(pk=endpoint.pk)
    assert fresh.signing_secrets() == [secret]
    assert secret not in repr(fresh) and secret not in str(fresh)
    [summary] = fresh.secret_summaries()
    assert summary["fingerprint"] == signing.parse_secret(secret).fingerprint
    assert (summary["primary"], summary["in_force"]) == (True, True)
    assert secret not in json.dumps(fresh.secret_summaries())


def test_plaintext_secrets_put_on_an_endpoint_are_sealed_when_it_is_saved():
    secret = signing.generate_secret()
    endpoint = Endpoint(url="https://example.com/hooks", event_types=["*"])
    endpoint.secrets = [{"key": secret, "created_at": "2026-01-01T00:00:00+00:00", "expires_at": None}]
    endpoint.save()
    assert secret not in stored_row(endpoint)
    assert Endpoint.objects.get(pk=endpoint.pk).signing_secrets() == [secret]
    assert endpoint.secret_summaries()[0]["fingerprint"] == signing.parse_secret(secret).fingerprint


def test_rotation_uses_the_grace_setting_by_default_and_both_secrets_verify_a_request_during_it():
    Author.objects.create(name="x")
    endpoint = Endpoint.objects.create(url="https://example.com/hooks", event_types=["*"])
    [old] = endpoint.signing_secrets()
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with override_settings(HOOKPOST={**settings.HOOKPOST, "SECRET_ROTATION_GRACE": 3600}):
        new = endpoint.rotate_secret(now=now)
    endpoint.save()
    endpoint = Endpoint.objects.get(pk=endpoint.pk)
    assert endpoint.signing_secrets(now + dt.timedelta(minutes=59)) == [new, old]
    assert endpoint.signing_secrets(now + dt.timedelta(minutes=61)) == [new]
    request = build_request(Event.objects.get(), endpoint)  # now: after the hour, only the new one
    Webhook(new).verify(request.body, request.headers)
    summaries = endpoint.secret_summaries(now + dt.timedelta(minutes=30))
    assert [(s["primary"], s["in_force"]) for s in summaries] == [(True, True), (False, True)]


def test_signing_keys_unseal_each_secret_once_per_instance_and_follow_rotation_on_it(monkeypatch):
    endpoint = Endpoint.objects.create(url="https://example.com/hooks", event_types=["*"])
    [old] = endpoint.signing_secrets()
    unsealed: list[str] = []
    real_unseal = crypto.unseal

    def counting_unseal(token: str) -> str:
        unsealed.append(token)
        return real_unseal(token)

    monkeypatch.setattr(crypto, "unseal", counting_unseal)
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    fingerprint = signing.parse_secret(old).fingerprint
    for _ in range(3):
        assert [key.fingerprint for key in endpoint.signing_keys(now)] == [fingerprint]
    assert len(unsealed) == 1
    # Rotation changes the instance's entries in place: the old one expires, the new one is parsed.
    new = endpoint.rotate_secret(grace=dt.timedelta(hours=1), now=now)
    during = endpoint.signing_keys(now + dt.timedelta(minutes=59))
    after = endpoint.signing_keys(now + dt.timedelta(minutes=61))
    assert [key.fingerprint for key in during] == [signing.parse_secret(s).fingerprint for s in (new, old)]
    assert [key.fingerprint for key in after] == [signing.parse_secret(new).fingerprint]
    assert len(unsealed) == 2
    # A fresh instance (the next claim's) parses again: nothing outlives the instance.
    assert len(Endpoint.objects.get(pk=endpoint.pk).signing_keys(now)) == 1
    assert len(unsealed) == 3


def test_a_secret_no_key_can_unseal_still_fails_signing_keys_every_time():
    endpoint = Endpoint.objects.create(url="https://example.com/hooks", event_types=["*"])
    with keys(KEY_A):
        endpoint.rotate_secret(grace=dt.timedelta(0))
        endpoint.save()
    fresh = Endpoint.objects.get(pk=endpoint.pk)
    with keys(KEY_B):
        for _ in range(2):
            with pytest.raises(ConfigurationError):
                fresh.signing_keys()


# --- sources ----------------------------------------------------------------------------------------


def test_a_source_keeps_its_keys_sealed_and_resolves_with_them():
    secret = signing.generate_secret()
    source = Source.objects.create(name="partner", secrets=f"{secret}\n")
    assert crypto.is_sealed(Source.objects.get().secrets)
    assert secret not in Source.objects.get().secrets
    assert source.keys() == secret
    resolved = sources.get_source("partner")
    assert resolved is not None
    assert [key.fingerprint for key in resolved.keys] == [signing.parse_verifying_key(secret).fingerprint]


def test_a_source_whose_keys_no_key_can_unseal_answers_receiver_misconfigured(client):
    with keys(KEY_A):
        Source.objects.create(name="partner", secrets=signing.generate_secret())
    with keys(KEY_B):
        response = client.post("/webhooks/partner/", b"{}", content_type="application/json")
    assert response.status_code == 500
    assert response.json() == {"error": "receiver misconfigured"}


# --- the migration that sealed what was plaintext ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_0005_seals_plaintext_secrets_and_reversing_it_opens_them():
    executor = MigrationExecutor(connection)
    before, after = [("hookpost", "0004_receiver")], [("hookpost", "0005_seal_secrets")]
    executor.migrate(before)
    try:
        old_apps = executor.loader.project_state(before).apps
        secret, key = signing.generate_secret(), signing.generate_secret()
        endpoint = old_apps.get_model("hookpost", "Endpoint").objects.create(
            url="https://example.com/hooks",
            event_types=["*"],
            secrets=[{"key": secret, "created_at": "2026-01-01T00:00:00+00:00", "expires_at": None}],
        )
        old_apps.get_model("hookpost", "Source").objects.create(name="partner", secrets=key)

        executor = MigrationExecutor(connection)
        executor.migrate(after)
        sealed = Endpoint.objects.get(pk=endpoint.pk)
        assert secret not in stored_row(sealed)
        assert sealed.signing_secrets() == [secret]
        assert sealed.secret_summaries()[0]["fingerprint"] == signing.parse_secret(secret).fingerprint
        assert crypto.is_sealed(Source.objects.get().secrets) and Source.objects.get().keys() == key

        executor = MigrationExecutor(connection)
        executor.migrate(before)
        reverted = executor.loader.project_state(before).apps.get_model("hookpost", "Endpoint")
        assert reverted.objects.get(pk=endpoint.pk).secrets[0]["key"] == secret
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())


# --- no secret in any log line ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_no_log_line_of_a_whole_life_holds_a_secret(caplog, admin_client):
    """Create, rotate, send (one failure, one success), manage by command: every log at DEBUG."""
    caplog.set_level(logging.DEBUG)
    with Receiver() as receiver:
        receiver.script("/hooks", (503, {}, "busy"), 200)
        endpoint = Endpoint(url=receiver.url("/hooks"), event_types=["library.*"])
        first = endpoint.add_secret()
        endpoint.save()
        Author.objects.create(name="logged")
        Worker(batch_size=10, poll_interval=0.01).run(burst=True)
        second = endpoint.rotate_secret()
        endpoint.save()
        Delivery.objects.update(next_attempt_at=timezone.now())
        Worker(batch_size=10, poll_interval=0.01).run(burst=True)
        call_command("hookpost_endpoint", "list", stdout=io.StringIO())
        admin_client.get(f"/admin/hookpost/endpoint/{endpoint.pk}/change/")
    assert Delivery.objects.get().status == Delivery.Status.DELIVERED
    assert caplog.records, "nothing was logged: the test would prove nothing"
    logged = caplog.text + "".join(str(record.__dict__) for record in caplog.records)
    for secret in (first, second):
        assert secret not in logged and secret.removeprefix("whsec_") not in logged
    assert crypto.PREFIX not in logged
