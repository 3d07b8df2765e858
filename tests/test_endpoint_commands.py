"""hookpost_endpoint (add, list, rotate-secret, disable, enable, pause, resume, test), hookpost_reencrypt."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from hookpost import crypto, outbox, signals, signing
from hookpost.delivery import build_request
from hookpost.exceptions import ConfigurationError
from hookpost.models import Attempt, Delivery, Endpoint, Event, Source
from tests.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def run(*args: str) -> str:
    out = StringIO()
    call_command("hookpost_endpoint", *args, stdout=out)
    return out.getvalue()


def run_json(*args: str) -> dict:
    return json.loads(run(*args, "--json"))


def add(*args: str, url: str = "https://partner.example.com/hooks") -> tuple[Endpoint, str]:
    """Add an endpoint through the command; return it and the secret the command printed."""
    data = run_json("add", url, *args)
    return Endpoint.objects.get(pk=data["id"]), data["secret"]


def secret_free(text: str, *secrets: str) -> bool:
    """Neither a secret nor its base64 body (without the whsec_ prefix) is in ``text``."""
    return all(s not in text and s.removeprefix("whsec_") not in text for s in secrets)


def an_event() -> Event:
    return Event.objects.create(
        type="library.book.created", payload='{"type":"library.book.created"}', occurred_at=timezone.now()
    )


# --- add -------------------------------------------------------------------------------------------


def test_add_prints_the_id_and_the_secret_once_clearly_labelled():
    out = run("add", "https://partner.example.com/hooks", "--event", "library.*")

    endpoint = Endpoint.objects.get()
    [secret] = endpoint.signing_secrets()
    assert out.startswith(f"Added endpoint {endpoint.pk}: https://partner.example.com/hooks\n")
    assert "Signing secret (shown this once" in out
    assert out.count(secret) == 1
    assert endpoint.event_types == ["library.*"] and endpoint.status == Endpoint.Status.ACTIVE
    # Stored sealed: the row holds no plaintext.
    stored = json.dumps(Endpoint.objects.values("secrets").get())
    assert secret_free(stored, secret) and crypto.PREFIX in stored


def test_add_with_every_option_and_json_output(django_user_model):
    django_user_model.objects.create_user(username="ada", password="x")

    data = run_json(
        "add",
        "https://partner.example.com/hooks",
        "--event",
        "library.book.*",
        "--event",
        "*.deleted",
        "--description",
        "Partner sync",
        "--owner",
        "ada",
        "--header",
        "X-Tenant=acme",
        "--header",
        "Authorization=Bearer s3cr3t-token",
        "--fifo",
        "--rate-limit",
        "2.5",
        "--max-in-flight",
        "3",
    )

    endpoint = Endpoint.objects.get()
    assert data["id"] == endpoint.pk and data["secret"] == endpoint.signing_secrets()[0]
    assert data["secrets"][0]["fingerprint"] == signing.parse_secret(data["secret"]).fingerprint
    assert data["owner"] == "ada" and endpoint.owner.username == "ada"
    assert endpoint.event_types == ["library.book.*", "*.deleted"]
    assert endpoint.description == "Partner sync"
    assert endpoint.headers == {"X-Tenant": "acme", "Authorization": "Bearer s3cr3t-token"}
    assert (endpoint.fifo, endpoint.rate_limit, endpoint.max_in_flight) == (True, 2.5, 3)
    # Header values may be credentials: the output names the headers only.
    assert data["headers"] == ["Authorization", "X-Tenant"]
    assert "s3cr3t-token" not in json.dumps(data)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not a url", "--event", "*"], r"URL: Enter a valid URL"),
        (["ftp://partner.example.com/", "--event", "*"], r"URL: Enter a valid URL"),
        (["http://10.0.0.1/hooks", "--event", "*"], r"URL: 10\.0\.0\.1 is not a public address"),
        (["http://169.254.169.254/latest", "--event", "*"], r"169\.254\.169\.254 is not a public address"),
        (["https://[::1]/hooks", "--event", "*"], r"::1 is not a public address"),
        (["https://e.example.com/", "--event", "bad type"], r"--event: invalid event type pattern"),
        (["https://e.example.com/"], r"give at least one --event TYPE .*'\*' for every event type"),
        (["https://e.example.com/", "--event", "*", "--header", "X-Tenant"], r"--header needs NAME=VALUE"),
        (["https://e.example.com/", "--event", "*", "--header", "a b=c"], r"'a b' is not a header name"),
        (
            ["https://e.example.com/", "--event", "*", "--header", "webhook-id=1"],
            r"--header: .*set by hookpost",
        ),
        (["https://e.example.com/", "--event", "*", "--owner", "nobody"], r"no user with username 'nobody'"),
        (["https://e.example.com/", "--event", "*", "--rate-limit", "0"], r"--rate-limit: Ensure this value"),
        (["https://e.example.com/", "--event", "*", "--rate-limit", "x"], r"invalid float value"),
        (["https://e.example.com/", "--event", "*", "--max-in-flight", "0"], r"at least 1"),
        (["https://e.example.com/", "--event", "*", "--description", "x" * 300], r"--description: Ensure"),
    ],
)
def test_add_refuses_bad_input_with_a_hint_and_creates_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        run("add", *args)
    assert not Endpoint.objects.exists()


def test_add_requires_https_unless_allowed():
    with (
        override_settings(HOOKPOST={**settings.HOOKPOST, "ALLOW_HTTP": False}),
        pytest.raises(CommandError, match=r"Use an https:// URL"),
    ):
        run("add", "http://partner.example.com/hooks", "--event", "*")


def test_a_bad_header_never_repeats_its_value():
    with pytest.raises(CommandError) as caught:
        run("add", "https://e.example.com/", "--event", "*", "--header", "Bad Name=hunter2-password")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(CommandError) as caught:
        run("add", "https://e.example.com/", "--event", "*", "--header", "X-Key=line\nbreak-hunter2")
    assert "X-Key" in str(caught.value) and "hunter2" not in str(caught.value)


# --- list ------------------------------------------------------------------------------------------


def test_list_shows_health_and_fingerprints_never_secrets(receiver):
    healthy, healthy_secret = add("--event", "*", url=receiver.url("/ok"))
    failing, failing_secret = add("--event", "*", "--header", "X-Api-Key=k-hunter2", url=receiver.url("/bad"))
    receiver.script("/bad", 500)
    outbox.send_test_event(healthy)
    outbox.send_test_event(failing)
    call_command("hookpost_worker", "--burst", stdout=StringIO())
    healthy.refresh_from_db()
    failing.refresh_from_db()

    text = run("list")
    data = run_json("list")

    header, *rows = text.splitlines()
    assert header.split()[:5] == ["ID", "STATUS", "URL", "EVENTS", "FAILURES"]
    assert rows[0].split()[:5] == [str(healthy.pk), "active", healthy.url, "*", "0"]
    assert rows[1].split()[:5] == [str(failing.pk), "active", failing.url, "*", "1"]
    assert healthy.secret_summaries()[0]["fingerprint"] in rows[0]
    assert failing.secret_summaries()[0]["fingerprint"] in rows[1]
    by_id = {e["id"]: e for e in data["endpoints"]}
    assert by_id[failing.pk]["health"]["consecutive_failures"] == 1
    assert by_id[failing.pk]["health"]["last_failure_at"] == failing.last_failure_at.isoformat()
    assert by_id[failing.pk]["health"]["last_success_at"] is None
    assert by_id[healthy.pk]["health"]["last_success_at"] == healthy.last_success_at.isoformat()
    assert by_id[healthy.pk]["secrets"] == healthy.secret_summaries()
    assert by_id[failing.pk]["headers"] == ["X-Api-Key"]
    for output in (text, json.dumps(data)):
        assert "whsec_" not in output and "hunter2" not in output
        assert secret_free(output, healthy_secret, failing_secret)


def test_list_filters_by_status():
    active, _ = add("--event", "*")
    paused, _ = add("--event", "*")
    disabled, _ = add("--event", "*")
    run("pause", str(paused.pk))
    run("disable", str(disabled.pk), "--reason", "partner gone")

    def ids(*statuses: str) -> list[int]:
        return [
            e["id"] for e in run_json("list", *(a for s in statuses for a in ("--status", s)))["endpoints"]
        ]

    assert ids() == [active.pk, paused.pk, disabled.pk]
    assert ids("paused") == [paused.pk]
    assert ids("active", "disabled") == [active.pk, disabled.pk]
    assert f"endpoint {disabled.pk}: partner gone" in run("list")
    with pytest.raises(CommandError, match="invalid choice: 'gone'"):
        run("list", "--status", "gone")


def test_list_with_no_endpoints_says_how_to_add_one():
    assert "hookpost_endpoint add URL --event TYPE" in run("list")
    assert run_json("list") == {"endpoints": []}


# --- rotate-secret ---------------------------------------------------------------------------------


def test_rotate_during_grace_both_secrets_sign_and_each_verifies():
    endpoint, old = add("--event", "*")
    out = run("rotate-secret", str(endpoint.pk), "--grace", "2h")

    endpoint.refresh_from_db()
    [new, still_old] = endpoint.signing_secrets()
    assert still_old == old and new != old
    assert out.count(new) == 1 and secret_free(out, old)
    assert "New signing secret for endpoint" in out
    assert f"Secret {signing.parse_secret(old).fingerprint} keeps signing until" in out
    request = build_request(an_event(), endpoint)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(request.body, request.headers)
    # After the grace period only the new one signs.
    assert endpoint.signing_secrets(timezone.now() + dt.timedelta(hours=2, minutes=1)) == [new]
    assert endpoint.signing_secrets(timezone.now() + dt.timedelta(hours=1, minutes=59)) == [new, old]


def test_rotate_with_zero_grace_stops_a_leaked_secret_at_once():
    endpoint, leaked = add("--event", "*")
    data = run_json("rotate-secret", str(endpoint.pk), "--grace", "0")

    endpoint.refresh_from_db()
    new = data["secret"]
    assert endpoint.signing_secrets() == [new]
    assert data["grace_seconds"] == 0
    assert [s["in_force"] for s in data["secrets"]] == [True, False]
    request = build_request(an_event(), endpoint)
    Webhook(new).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(leaked).verify(request.body, request.headers)
    assert "stopped signing at once" in run("rotate-secret", str(endpoint.pk), "--grace", "0")


def test_rotate_grace_defaults_to_the_setting():
    endpoint, _ = add("--event", "*")
    with override_settings(HOOKPOST={**settings.HOOKPOST, "SECRET_ROTATION_GRACE": 600}):
        before = timezone.now()
        data = run_json("rotate-secret", str(endpoint.pk))
    assert data["grace_seconds"] == 600
    expires = dt.datetime.fromisoformat(data["secrets"][1]["expires_at"])
    assert before + dt.timedelta(seconds=600) <= expires <= timezone.now() + dt.timedelta(seconds=600)


def test_rotate_keeps_the_health_the_worker_wrote():
    endpoint, _ = add("--event", "*")
    Endpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=4)
    run("rotate-secret", str(endpoint.pk))
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 4 and len(endpoint.secrets) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["999999"], r"no endpoint with id 999999; `hookpost_endpoint list` shows the endpoints"),
        (["x"], r"argument ID: expected a whole number of at least 1, got 'x'"),
        (["{id}", "--grace", "1y"], r"argument --grace: cannot read '1y' as a length of time"),
        (["{id}", "--grace=-1h"], r"cannot read '-1h' as a length of time"),
        (["{id}", "--grace", "99999999999w"], r"'99999999999w' is too long a time"),
        (["{id}", "--grace", "3000000d"], r"ends after the year 9999; give a shorter one"),
    ],
)
def test_rotate_refuses_bad_input_with_a_hint(args, message):
    endpoint, secret = add("--event", "*")
    with pytest.raises(CommandError, match=message) as caught:
        run("rotate-secret", *(a.format(id=endpoint.pk) for a in args))
    assert secret_free(str(caught.value), secret)
    endpoint.refresh_from_db()
    assert endpoint.signing_secrets() == [secret]


# --- disable, enable, pause, resume ------------------------------------------------------------------


def test_disable_cancels_pending_deliveries_and_enable_starts_health_afresh():
    endpoint, _ = add("--event", "*")
    other, _ = add("--event", "*")
    for target in (endpoint, endpoint, other):
        outbox.send_test_event(target)
    failed_at = timezone.now() - dt.timedelta(minutes=5)
    Endpoint.objects.filter(pk=endpoint.pk).update(
        consecutive_failures=7,
        failing_since=failed_at,
        last_failure_at=failed_at,
        blocked_until=timezone.now(),
    )
    heard = []

    def on_disabled(**kwargs):
        heard.append((kwargs["endpoint_id"], kwargs["reason"]))

    signals.endpoint_disabled.connect(on_disabled)
    try:
        out = run("disable", str(endpoint.pk), "--reason", "partner asked")
    finally:
        signals.endpoint_disabled.disconnect(on_disabled)

    assert f"Disabled endpoint {endpoint.pk}; cancelled 2 pending deliveries." in out
    assert f"hookpost_endpoint enable {endpoint.pk}" in out
    assert heard == [(endpoint.pk, "partner asked")]
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.status_reason) == ("disabled", "partner asked")
    assert list(endpoint.deliveries.values_list("status", flat=True)) == ["cancelled", "cancelled"]
    assert other.deliveries.get().status == Delivery.Status.PENDING
    assert "already disabled" in run("disable", str(endpoint.pk))

    out = run("enable", str(endpoint.pk))

    assert (
        "(it was disabled)" in out and f"hookpost_replay --endpoint {endpoint.pk} --status cancelled" in out
    )
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.status_reason) == ("active", "")
    assert (endpoint.consecutive_failures, endpoint.failing_since, endpoint.blocked_until) == (0, None, None)
    assert endpoint.last_failure_at == failed_at  # history is kept
    assert list(endpoint.deliveries.values_list("status", flat=True)) == ["cancelled", "cancelled"]
    assert "already active" in run("enable", str(endpoint.pk))


def test_disable_and_enable_json_output():
    endpoint, secret = add("--event", "*")
    outbox.send_test_event(endpoint)
    data = run_json("disable", str(endpoint.pk))
    assert data["status"] == "disabled" and data["cancelled"] == 1
    assert data["status_reason"] == "disabled by an operator"
    data = run_json("enable", str(endpoint.pk))
    assert data["status"] == "active" and data["health"]["consecutive_failures"] == 0
    assert "secret" not in data and secret_free(json.dumps(data), secret)


def test_pause_holds_deliveries_and_resume_sends_them(receiver):
    endpoint, _ = add("--event", "*", url=receiver.url())
    outbox.send_test_event(endpoint)

    assert f"hookpost_endpoint resume {endpoint.pk}" in run("pause", str(endpoint.pk))
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.PAUSED
    assert "already paused" in run("pause", str(endpoint.pk))
    call_command("hookpost_worker", "--burst", stdout=StringIO())
    assert receiver.received() == []
    assert Delivery.objects.get().status == Delivery.Status.PENDING  # waiting, not cancelled

    assert "Resumed endpoint" in run("resume", str(endpoint.pk))
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.ACTIVE
    call_command("hookpost_worker", "--burst", stdout=StringIO())
    assert len(receiver.received()) == 1
    assert Delivery.objects.get().status == Delivery.Status.DELIVERED
    assert "already active" in run("resume", str(endpoint.pk))


def test_pause_and_resume_refuse_a_disabled_endpoint_with_a_hint():
    endpoint, _ = add("--event", "*")
    run("disable", str(endpoint.pk), "--reason", "410 Gone")
    with pytest.raises(CommandError, match=rf"disabled, not paused \(410 Gone\); .*enable {endpoint.pk}"):
        run("resume", str(endpoint.pk))
    with pytest.raises(CommandError, match=rf"is disabled.*`hookpost_endpoint enable {endpoint.pk}` first"):
        run("pause", str(endpoint.pk))
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.DISABLED


def test_enable_also_resumes_a_paused_endpoint():
    endpoint, _ = add("--event", "*")
    run("pause", str(endpoint.pk))
    out = run("enable", str(endpoint.pk))
    assert "(it was paused)" in out and "hookpost_replay" not in out
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.ACTIVE


@pytest.mark.parametrize("action", ["disable", "enable", "pause", "resume", "test", "rotate-secret"])
def test_every_action_on_an_unknown_id_says_how_to_find_ids(action):
    with pytest.raises(CommandError, match=r"no endpoint with id 424242; `hookpost_endpoint list`"):
        run(action, "424242")


# --- test ------------------------------------------------------------------------------------------


def test_test_queues_a_test_event_for_that_endpoint_only_and_the_worker_sends_it(receiver):
    endpoint, secret = add("--event", "*", url=receiver.url("/mine"))
    bystander, _ = add("--event", "*", url=receiver.url("/theirs"))

    out = run("test", str(endpoint.pk))

    delivery = Delivery.objects.get()
    assert delivery.endpoint_id == endpoint.pk and delivery.event.type == "hookpost.test"
    assert f"as delivery {delivery.pk} to endpoint {endpoint.pk}" in out
    assert delivery.event_id in out and "hookpost_worker sends it" in out
    assert not bystander.deliveries.exists()

    call_command("hookpost_worker", "--burst", stdout=StringIO())

    [got] = receiver.received()
    assert got.path == "/mine"
    payload = Webhook(secret).verify(got.body, got.headers)
    assert payload["type"] == "hookpost.test" and payload["data"]["endpoint"] == endpoint.pk
    assert Attempt.objects.get().delivery_id == delivery.pk


def test_test_json_output_and_a_note_when_the_endpoint_is_not_active():
    endpoint, _ = add("--event", "*")
    data = run_json("test", str(endpoint.pk))
    delivery = Delivery.objects.get()
    assert data == {"endpoint": endpoint.pk, "delivery": delivery.pk, "event": delivery.event_id}
    run("pause", str(endpoint.pk))
    assert "The endpoint is paused: the test waits" in run("test", str(endpoint.pk))


# --- secrets: shown by add and rotate-secret, nowhere else -----------------------------------------


def test_secrets_appear_only_in_the_output_of_add_and_rotate_secret():
    outputs = []
    data = run_json("add", "https://partner.example.com/hooks", "--event", "*")
    endpoint_id = str(data["id"])
    secrets = [data["secret"], run_json("rotate-secret", endpoint_id)["secret"]]
    for args in (
        ["list"],
        ["list", "--json"],
        ["pause", endpoint_id],
        ["resume", endpoint_id, "--json"],
        ["test", endpoint_id],
        ["disable", endpoint_id, "--json"],
        ["enable", endpoint_id],
    ):
        outputs.append(run(*args))
    for args in (["resume", endpoint_id], ["enable", endpoint_id, "--json"]):
        outputs.append(run(*args))
    stats = StringIO()
    call_command("hookpost_stats", "--endpoint", endpoint_id, "--json", stdout=stats)
    outputs.append(stats.getvalue())
    for bad in (["rotate-secret", endpoint_id, "--grace", "soon"], ["pause", "999"], ["add", "x"]):
        with pytest.raises(CommandError) as caught:
            run(*bad)
        outputs.append(str(caught.value))
    endpoint = Endpoint.objects.get()
    outputs.append(repr(endpoint) + str(endpoint))
    for output in outputs:
        assert "whsec_" not in output
        assert secret_free(output, *secrets)


# --- the command line itself --------------------------------------------------------------------------


def test_an_action_is_required_and_the_database_must_exist():
    with pytest.raises(CommandError, match="the following arguments are required: ACTION"):
        run()
    with pytest.raises(CommandError, match="invalid choice: 'remove'"):
        run("remove", "1")
    with pytest.raises(CommandError, match="unknown database 'nope'"):
        run("list", "--database", "nope")


def test_the_other_database_is_used_when_named():
    data = run_json("add", "https://partner.example.com/hooks", "--event", "*", "--database", "other")
    assert not Endpoint.objects.exists()
    assert Endpoint.objects.using("other").get().signing_secrets() == [data["secret"]]
    assert [e["id"] for e in run_json("list", "--database", "other")["endpoints"]] == [data["id"]]
    run("pause", str(data["id"]), "--database", "other")
    assert Endpoint.objects.using("other").get().status == Endpoint.Status.PAUSED


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "example"), str(ROOT / "src")])
    return subprocess.run(
        [sys.executable, "-m", "django", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_bad_arguments_on_the_command_line_get_a_usage_error_not_a_traceback():
    result = manage("hookpost_endpoint", "rotate-secret", "1", "--grace", "1y")
    assert result.returncode == 2
    assert "argument --grace: cannot read '1y' as a length of time" in result.stderr
    assert "Traceback" not in result.stderr


def test_older_commands_bad_numbers_on_the_command_line_get_a_usage_error_not_a_traceback():
    result = manage("hookpost_prune", "--days", "0")
    assert "at least 1" in result.stderr
    assert "Traceback" not in result.stderr


# --- hookpost_reencrypt ----------------------------------------------------------------------------------


def keys(*keys: str):
    return override_settings(HOOKPOST={**settings.HOOKPOST, "ENCRYPTION_KEYS": list(keys)})


def stored() -> tuple[list, list]:
    """The raw sealed values in the database."""
    return (
        list(Endpoint.objects.order_by("id").values_list("secrets", flat=True)),
        list(Source.objects.order_by("id").values_list("secrets", flat=True)),
    )


@pytest.fixture
def sealed_with_a():
    """Endpoints (one mid-rotation, two secrets) and a source, sealed under key A alone."""
    key_a = crypto.generate_key()
    source_keys = f"{signing.generate_secret()}\n{signing.generate_secret()}"
    with keys(key_a):
        add("--event", "*")
        second, _ = add("--event", "*")
        run("rotate-secret", str(second.pk), "--grace", "24h")
        Source(name="library", secrets=source_keys).save()
        plain = {e.pk: e.signing_secrets() for e in Endpoint.objects.all()}
    assert len(plain[second.pk]) == 2
    return key_a, plain, source_keys


def test_reencrypt_moves_every_secret_to_the_new_key(sealed_with_a):
    key_a, plain, source_keys = sealed_with_a
    key_b = crypto.generate_key()
    before = stored()

    with keys(key_b, key_a):
        out = StringIO()
        call_command("hookpost_reencrypt", stdout=out)
    assert out.getvalue() == "re-sealed the secrets of 2 endpoints and 1 sources\n"
    assert stored() != before

    with keys(key_b):
        assert {e.pk: e.signing_secrets() for e in Endpoint.objects.all()} == plain
        assert Source.objects.get().keys() == source_keys
    with keys(key_a):
        for endpoint in Endpoint.objects.all():
            with pytest.raises(ConfigurationError, match="cannot be decrypted"):
                endpoint.signing_secrets()
        with pytest.raises(ConfigurationError, match="cannot be decrypted"):
            Source.objects.get().keys()
    assert secret_free(out.getvalue(), *(s for ss in plain.values() for s in ss))


def test_reencrypt_dry_run_changes_nothing(sealed_with_a):
    key_a, plain, _ = sealed_with_a
    before = stored()
    with keys(crypto.generate_key(), key_a):
        out = StringIO()
        call_command("hookpost_reencrypt", "--dry-run", stdout=out)
    assert out.getvalue() == "would re-seal the secrets of 2 endpoints and 1 sources\n"
    assert stored() == before
    with keys(key_a):
        assert {e.pk: e.signing_secrets() for e in Endpoint.objects.all()} == plain


def test_reencrypt_without_the_old_key_fails_with_a_hint_and_changes_nothing(sealed_with_a):
    key_a, plain, _ = sealed_with_a
    before = stored()
    with keys(crypto.generate_key()), pytest.raises(CommandError) as caught:
        call_command("hookpost_reencrypt", stdout=StringIO())
    assert "cannot be decrypted" in str(caught.value)
    assert "Put the key that sealed them back in ENCRYPTION_KEYS" in str(caught.value)
    assert secret_free(str(caught.value), *(s for ss in plain.values() for s in ss))
    assert stored() == before
    with keys(key_a):
        assert {e.pk: e.signing_secrets() for e in Endpoint.objects.all()} == plain


def test_a_password_in_an_endpoint_url_is_masked_in_list_and_add():
    added = run("add", "https://hook:pa55-hunter2@e.example.com/in?x=1", "--event", "*")
    endpoint = Endpoint.objects.get()
    assert endpoint.url == "https://hook:pa55-hunter2@e.example.com/in?x=1"  # sent as configured
    for output in (added, run("list"), json.dumps(run_json("list"))):
        assert "hunter2" not in output
    assert "https://hook:***@e.example.com/in?x=1" in run("list")
