"""The receiver view: security cases run by every source configuration, interop, behaviour, end to end."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, connections
from django.test import AsyncClient, Client
from django.test.client import FakePayload
from standardwebhooks.webhooks import Webhook

from hookpost import inbox, signals, signing
from hookpost.models import Delivery, Endpoint, Event, InboundWebhook, Source
from hookpost.receiver import on_webhook
from hookpost.worker import Worker
from library.models import Author, Book, Tag

pytestmark = pytest.mark.django_db

WEBHOOK = ("webhook-id", "webhook-timestamp", "webhook-signature")
SVIX = ("svix-id", "svix-timestamp", "svix-signature")


@dataclass(frozen=True)
class Keys:
    """A sender's keys: the one it signs with now, the one before (rotation), and one nobody lists."""

    current: str
    previous: str
    stranger: str
    # What the receiver lists for current and previous (the same secrets, or the public keys).
    listed: tuple[str, str]


def _hmac_keys() -> Keys:
    current, previous, stranger = (signing.generate_secret() for _ in range(3))
    return Keys(current, previous, stranger, (current, previous))


def _ed25519_keys() -> Keys:
    (current, current_public), (previous, previous_public), (stranger, _) = (
        signing.generate_ed25519_keypair() for _ in range(3)
    )
    return Keys(current, previous, stranger, (current_public, previous_public))


HMAC = _hmac_keys()
ED25519 = _ed25519_keys()
# Every key text and its bare base64, none of which may ever appear in a response.
SECRET_TEXTS = [
    part
    for keys in (HMAC, ED25519)
    for text in (keys.current, keys.previous, keys.stranger, *keys.listed)
    for part in (text, text.split("_", 1)[1])
]


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def event_body(event_type: Any = "library.book.deleted", **data: Any) -> bytes:
    return json.dumps({"type": event_type, "timestamp": "2025-01-01T00:00:00Z", "data": data}).encode()


def signed_headers(
    body: bytes,
    key: str,
    *,
    names: tuple[str, str, str] = WEBHOOK,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Headers hookpost's own signing gives ``body``, under ``names`` (webhook-* or svix-*)."""
    headers = signing.sign_headers(msg_id or new_id(), now() if timestamp is None else timestamp, body, [key])
    return dict(zip(names, (headers[name] for name in WEBHOOK), strict=True))


def post(client: Client, url: str, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(url, data=body, content_type="application/json", headers=headers)


def asgi_post(url: str, body: bytes, headers: dict[str, str], *, content_length: str | None) -> Any:
    """POST through Django's ASGI handler, declaring whatever Content-Length (or none) we like.

    Under WSGI, Django never reads past the declared length; under ASGI the body is
    whatever the server received, so only the view's own cap stands between it and memory.
    """
    scope_headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    if content_length is not None:
        scope_headers.append((b"content-length", content_length.encode()))
    scope_headers += [(name.encode(), value.encode()) for name, value in headers.items()]
    return async_to_sync(AsyncClient().request)(
        method="POST", path=url, headers=scope_headers, _body_file=FakePayload(body)
    )


def configure(settings: Any, **sources: dict[str, Any]) -> None:
    settings.HOOKPOST = {**settings.HOOKPOST, "RECEIVER_SOURCES": sources}


def assert_refusal(response: Any, status: int, reason: str | None = None) -> None:
    """A refusal: the status, a JSON ``{"error": short reason}``, and no key material in it."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str) and 0 < len(body["error"]) <= 80
    if reason is not None:
        assert body["error"] == reason
    text = response.content.decode()
    assert not [secret for secret in SECRET_TEXTS if secret in text]


class Recorder(list[dict[str, Any]]):
    """A ``webhook_received`` receiver that records each call's kwargs, then runs ``action``."""

    action: Callable[..., Any] | None = None

    def __call__(self, sender: object, **kwargs: Any) -> None:
        kwargs.pop("signal", None)
        self.append(kwargs)
        if self.action is not None:
            self.action(**kwargs)


@pytest.fixture
def calls():
    recorder = Recorder()
    signals.webhook_received.connect(recorder, weak=False, dispatch_uid="test-receiver-calls")
    yield recorder
    signals.webhook_received.disconnect(dispatch_uid="test-receiver-calls")


# --- the security cases, written once ------------------------------------------------------------


class ReceiverSecurityCases:
    """Security cases every receiver configuration must pass.

    A configuration subclasses this, overrides the autouse ``source`` fixture to set its
    source up, and says how to sign (``keys``, ``names``), where to post (``url``,
    ``unknown_url``) and what success looks like (``success``, ``deferred``, ``settle``).
    """

    url: ClassVar[str]
    unknown_url: ClassVar[str] = "/webhooks/nobody/"
    source_name: ClassVar[str]
    keys: ClassVar[Keys] = HMAC
    names: ClassVar[tuple[str, str, str]] = WEBHOOK
    tolerance: ClassVar[int]
    limit: ClassVar[int]
    #: The status of a handled (200) or stored (202) webhook.
    success: ClassVar[int] = 200
    #: Handlers run only when ``settle`` runs (not by the time the response is sent).
    deferred: ClassVar[bool] = False

    @pytest.fixture(autouse=True)
    def source(self) -> None:
        pytest.fail("a configuration overrides the source fixture")

    def settle(self) -> None:
        """Run whatever handles stored webhooks in this configuration (nothing: they already ran)."""

    # -- helpers --

    def options(self, **extra: Any) -> dict[str, Any]:
        """The source's settings entry: this configuration's keys, tolerance and limit."""
        return {
            "secrets": list(self.keys.listed),
            "tolerance": self.tolerance,
            "max_body_bytes": self.limit,
            **extra,
        }

    def sign(self, body: bytes, key: str | None = None, **options: Any) -> dict[str, str]:
        return signed_headers(body, key or self.keys.current, names=self.names, **options)

    def send(self, client: Client, body: bytes, key: str | None = None, **options: Any) -> Any:
        return post(client, self.url, body, self.sign(body, key, **options))

    def assert_handled(self, response: Any, calls: Recorder, count: int = 1) -> None:
        assert response.status_code == self.success, response.content
        status = "processed" if self.success == 200 else "queued"
        assert response.json() == {"status": status}
        self.settle()
        assert len(calls) == count

    def assert_refused(self, response: Any, calls: Recorder, status: int, reason: str | None = None) -> None:
        assert_refusal(response, status, reason)
        self.settle()
        assert calls == []
        assert not InboundWebhook.objects.exists()

    # -- accepted --

    def test_a_signed_webhook_is_handled_once_with_its_payload(self, client, calls):
        body = event_body(pk=7, title="Dune")
        msg_id = new_id()
        response = self.send(client, body, msg_id=msg_id)
        assert len(calls) == (0 if self.deferred else 1)
        self.assert_handled(response, calls)
        [call] = calls
        assert call["source"] == self.source_name
        assert call["event_type"] == "library.book.deleted"
        assert call["payload"] == json.loads(body)
        row = InboundWebhook.objects.get()
        assert call["webhook"].pk == row.pk
        assert (row.source, row.webhook_id, row.status, row.attempts) == (
            self.source_name,
            msg_id,
            "processed",
            1,
        )
        assert row.body == body.decode() and row.headers[self.names[0]] == msg_id

    def test_a_message_signed_with_the_previous_key_is_accepted_during_rotation(self, client, calls):
        self.assert_handled(self.send(client, event_body(), self.keys.previous), calls)

    @pytest.mark.parametrize("direction", [-1, 1])
    def test_a_timestamp_just_inside_the_tolerance_is_accepted(self, client, calls, direction):
        stamp = now() + direction * (self.tolerance - 10)
        self.assert_handled(self.send(client, event_body(), timestamp=stamp), calls)

    def test_a_body_exactly_at_the_limit_is_accepted(self, client, calls):
        body = event_body(pad="")
        body = event_body(pad="x" * (self.limit - len(body)))
        assert len(body) == self.limit
        self.assert_handled(self.send(client, body), calls)

    def test_a_webhook_through_the_asgi_handler_is_accepted(self, calls):
        body = event_body()
        response = asgi_post(self.url, body, self.sign(body), content_length=str(len(body)))
        self.assert_handled(response, calls)

    def test_a_replayed_webhook_id_is_acknowledged_and_not_handled_again(self, client, calls):
        body = event_body()
        msg_id = new_id()
        self.assert_handled(self.send(client, body, msg_id=msg_id), calls)
        # A sender's retry: same id, signed again with a fresh timestamp.
        again = self.send(client, body, msg_id=msg_id)
        assert again.status_code == 200 and again.json() == {"status": "duplicate"}
        self.settle()
        assert len(calls) == 1
        assert InboundWebhook.objects.count() == 1

    # -- refused: headers and signatures --

    @pytest.mark.parametrize("missing", [0, 1, 2], ids=["id", "timestamp", "signature"])
    def test_a_missing_header_is_refused_with_400(self, client, calls, missing):
        body = event_body()
        headers = self.sign(body)
        name = self.names[missing]
        del headers[name]
        response = post(client, self.url, body, headers)
        self.assert_refused(response, calls, 400, f"missing {name} header")

    @pytest.mark.parametrize("forgery", ["other body", "garbage", "unknown version"])
    def test_a_bad_signature_is_refused_as_invalid(self, client, calls, forgery):
        body = event_body()
        headers = self.sign(body)
        if forgery == "other body":
            headers = self.sign(event_body(pk=666), msg_id=headers[self.names[0]])
        elif forgery == "garbage":
            headers[self.names[2]] = "v1,not*base64"
        else:
            headers[self.names[2]] = "v9," + headers[self.names[2]].split(",", 1)[1]
        response = post(client, self.url, body, headers)
        self.assert_refused(response, calls, 400, "invalid signature")

    def test_a_message_signed_with_a_key_the_source_does_not_list_is_refused(self, client, calls):
        response = self.send(client, event_body(), self.keys.stranger)
        self.assert_refused(response, calls, 400, "invalid signature")

    def test_a_timestamp_older_than_the_tolerance_is_refused(self, client, calls):
        response = self.send(client, event_body(), timestamp=now() - self.tolerance - 30)
        self.assert_refused(response, calls, 400, "timestamp outside the tolerance")

    def test_a_timestamp_further_ahead_than_the_tolerance_is_refused(self, client, calls):
        response = self.send(client, event_body(), timestamp=now() + self.tolerance + 30)
        self.assert_refused(response, calls, 400, "timestamp outside the tolerance")

    def test_an_unknown_source_answers_404(self, client, calls):
        body = event_body()
        response = post(client, self.unknown_url, body, self.sign(body))
        self.assert_refused(response, calls, 404, "unknown source")

    # -- refused: the body --

    def test_a_body_over_the_limit_is_refused_with_413(self, client, calls):
        body = event_body(pad="")
        body = event_body(pad="x" * (self.limit + 1 - len(body)))
        response = self.send(client, body)
        self.assert_refused(response, calls, 413)

    @pytest.mark.parametrize("content_length", ["10", None], ids=["small", "absent"])
    def test_a_body_over_the_limit_is_refused_whatever_content_length_claims(self, calls, content_length):
        body = event_body(pad="x" * self.limit)
        response = asgi_post(self.url, body, self.sign(body), content_length=content_length)
        self.assert_refused(response, calls, 413)

    @pytest.mark.parametrize(
        "body",
        [b"", b"{", b'{"type": "a"', b"not json", b'{"type": "a"} trailing', b'{"a": "\x01"}'],
        ids=["empty", "brace", "unclosed", "text", "trailing", "control character"],
    )
    def test_malformed_json_after_a_valid_signature_is_refused(self, client, calls, body):
        response = self.send(client, body)
        self.assert_refused(response, calls, 400, "body is not valid UTF-8 JSON")

    def test_a_body_that_is_not_utf8_is_refused(self, client, calls):
        body = '{"type": "library.book.deleted", "title": "café"}'.encode("latin-1")
        response = self.send(client, body)
        self.assert_refused(response, calls, 400, "body is not valid UTF-8 JSON")

    @pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
    def test_nan_and_infinity_are_refused(self, client, calls, constant):
        body = b'{"type": "library.book.deleted", "data": {"price": %s}}' % constant.encode()
        response = self.send(client, body)
        self.assert_refused(response, calls, 400, "body is not valid UTF-8 JSON")

    def test_deeply_nested_json_is_refused_with_400_not_500(self, client, calls):
        response = self.send(client, b"[" * 100_000)
        self.assert_refused(response, calls, 400, "body is not valid UTF-8 JSON")

    # -- methods --

    def test_get_is_not_allowed(self, client, calls):
        response = client.get(self.url)
        assert response.status_code == 405
        assert set(response["Allow"].split(", ")) == {"POST", "HEAD", "OPTIONS"}
        assert calls == [] and not InboundWebhook.objects.exists()

    @pytest.mark.parametrize("method", ["head", "options"])
    def test_head_and_options_answer_200(self, client, calls, method):
        response = getattr(client, method)(self.url)
        assert response.status_code == 200
        assert calls == [] and not InboundWebhook.objects.exists()


# --- the configurations that run them --------------------------------------------------------------


class TestSettingsSource(ReceiverSecurityCases):
    url = "/webhooks/library/"
    source_name = "library"
    tolerance = 60
    limit = 150_000

    @pytest.fixture(autouse=True)
    def source(self, settings):
        configure(settings, library=self.options())


class TestFixedPath(ReceiverSecurityCases):
    url = "/fixed/partner/"
    unknown_url = "/fixed/nobody/"
    source_name = "partner"
    tolerance = 120
    limit = 120_000

    @pytest.fixture(autouse=True)
    def source(self, settings):
        configure(settings, partner=self.options())


class TestEd25519Source(ReceiverSecurityCases):
    url = "/webhooks/signed/"
    source_name = "signed"
    keys = ED25519
    tolerance = 90
    limit = 150_000

    @pytest.fixture(autouse=True)
    def source(self, settings):
        configure(settings, signed=self.options())


class TestAdminSource(ReceiverSecurityCases):
    url = "/webhooks/admin-made/"
    source_name = "admin-made"
    tolerance = 45
    limit = 131_072

    @pytest.fixture(autouse=True)
    def source(self, db):
        row = Source(
            name=self.source_name,
            secrets="\n".join(self.keys.listed),
            tolerance=self.tolerance,
            max_body_bytes=self.limit,
        )
        row.full_clean()
        row.save()


class TestWorkerMode(ReceiverSecurityCases):
    url = "/webhooks/queued/"
    source_name = "queued"
    tolerance = 300
    limit = 150_000
    success = 202
    deferred = True

    @pytest.fixture(autouse=True)
    def source(self, settings):
        # No tolerance of its own: the SIGNATURE_TOLERANCE default, 300.
        configure(settings, queued=self.options(mode="worker", tolerance=None))

    def settle(self) -> None:
        inbox.process_due()

    @pytest.mark.django_db(transaction=True)
    def test_the_worker_handles_a_stored_webhook_once(self, client, calls):
        response = self.send(client, event_body(pk=3))
        assert response.status_code == 202
        assert calls == [] and InboundWebhook.objects.get().status == "pending"
        Worker(batch_size=10, poll_interval=0.01).run(burst=True)
        assert [c["payload"]["data"] for c in calls] == [{"pk": 3}]
        assert InboundWebhook.objects.get().status == "processed"
        Worker(batch_size=10, poll_interval=0.01).run(burst=True)
        assert len(calls) == 1


@pytest.mark.django_db(transaction=True)
class TestOnCommitMode(ReceiverSecurityCases):
    url = "/webhooks/committed/"
    source_name = "committed"
    tolerance = 100
    limit = 150_000
    success = 202

    @pytest.fixture(autouse=True)
    def source(self, settings):
        configure(settings, committed=self.options(mode="on_commit"))

    def test_a_failing_handler_after_commit_leaves_the_webhook_pending_for_a_retry(self, client, calls):
        def explode(**kwargs):
            raise RuntimeError("boom after commit")

        calls.action = explode
        response = self.send(client, event_body())
        assert response.status_code == 202
        row = InboundWebhook.objects.get()
        assert (row.status, row.attempts) == ("pending", 1)
        assert "boom after commit" in row.last_error
        assert row.next_attempt_at is not None and row.lease_expires_at is None


class TestSvixHeaders(ReceiverSecurityCases):
    url = "/webhooks/svix/"
    source_name = "svix"
    names = SVIX
    tolerance = 30
    limit = 150_000

    @pytest.fixture(autouse=True)
    def source(self, settings):
        configure(settings, svix=self.options())


# --- interop ----------------------------------------------------------------------------------------


@pytest.fixture
def sources(settings):
    configure(
        settings,
        library={"secrets": list(HMAC.listed), "event_types": ["library.*"]},
        partner={"secrets": list(HMAC.listed)},
    )


def reference_headers(body: bytes, secret: str, names: tuple[str, str, str] = WEBHOOK) -> dict[str, str]:
    """Headers signed by the ``standardwebhooks`` package, the reference implementation."""
    msg_id, sent = new_id(), dt.datetime.now(dt.UTC)
    signature = Webhook(secret).sign(msg_id, sent, body.decode())
    return dict(zip(names, (msg_id, str(int(sent.timestamp())), signature), strict=True))


@pytest.mark.parametrize("names", [WEBHOOK, SVIX], ids=["webhook", "svix"])
def test_a_webhook_signed_by_the_standardwebhooks_package_is_accepted(client, sources, calls, names):
    body = event_body(pk=1)
    response = post(client, "/webhooks/library/", body, reference_headers(body, HMAC.previous, names))
    assert response.status_code == 200 and response.json() == {"status": "processed"}
    assert [c["payload"] for c in calls] == [json.loads(body)]


@pytest.mark.parametrize(
    "secrets",
    [[HMAC.current, HMAC.previous], [HMAC.stranger, HMAC.previous], [HMAC.previous, HMAC.stranger]],
    ids=["both listed", "new one unknown here", "old one first"],
)
def test_a_webhook_signed_by_hookpost_with_two_secrets_is_accepted(client, sources, calls, secrets):
    body = event_body()
    headers = signing.sign_headers(new_id(), now(), body, secrets)
    assert headers["webhook-signature"].count(" ") == 1
    response = post(client, "/webhooks/library/", body, headers)
    assert response.status_code == 200
    assert len(calls) == 1


# --- the view's behaviour ---------------------------------------------------------------------------


def deliver(client: Client, body: bytes, *, source: str = "library", msg_id: str | None = None) -> Any:
    return post(client, f"/webhooks/{source}/", body, signed_headers(body, HMAC.current, msg_id=msg_id))


def test_the_view_is_csrf_exempt(sources, calls):
    strict = Client(enforce_csrf_checks=True)
    assert strict.post("/private/").status_code == 403
    response = deliver(strict, event_body())
    assert response.status_code == 200
    assert len(calls) == 1


def test_anonymous_senders_are_not_sent_to_log_in_under_login_required_middleware(settings, sources, calls):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.contrib.auth.middleware.LoginRequiredMiddleware"]
    client = Client()
    assert client.post("/private/").status_code == 302
    response = deliver(client, event_body())
    assert response.status_code == 200 and response.json() == {"status": "processed"}
    assert client.head("/webhooks/library/").status_code == 200
    assert len(calls) == 1


def test_an_event_type_the_source_does_not_accept_is_acknowledged_and_ignored(client, sources, calls):
    response = deliver(client, event_body("billing.invoice.paid"))
    assert response.status_code == 200 and response.json() == {"status": "ignored"}
    row = InboundWebhook.objects.get()
    assert (row.status, row.event_type, row.attempts) == ("ignored", "billing.invoice.paid", 0)
    assert calls == []


def explode(**kwargs: Any) -> None:
    # Work the failure must undo: a row, and the outbox event hookpost captures for it.
    Tag.objects.create(name="written-by-a-failing-handler")
    raise RuntimeError("handler exploded on purpose")


def assert_failure_recorded(response: Any, attempts: int = 1) -> InboundWebhook:
    assert response.status_code == 500 and response.json() == {"error": "handler failed"}
    row = InboundWebhook.objects.get()
    assert (row.status, row.attempts) == ("failed", attempts)
    assert "RuntimeError: handler exploded on purpose" in row.last_error
    assert row.processed_at is None
    assert not Tag.objects.exists()
    assert not Event.objects.filter(type="library.tag.created").exists()
    return row


def test_a_failing_handler_answers_500_records_the_failure_and_rolls_back_its_writes(client, sources, calls):
    calls.action = explode
    assert_failure_recorded(deliver(client, event_body()))
    assert len(calls) == 1


def test_the_senders_retry_after_a_failure_is_handled_again(client, sources, calls):
    calls.action = explode
    msg_id = new_id()
    assert_failure_recorded(deliver(client, event_body(), msg_id=msg_id))
    assert_failure_recorded(deliver(client, event_body(), msg_id=msg_id), attempts=2)
    calls.action = None
    response = deliver(client, event_body(), msg_id=msg_id)
    assert response.status_code == 200 and response.json() == {"status": "processed"}
    row = InboundWebhook.objects.get()
    assert (row.status, row.attempts, row.last_error) == ("processed", 3, "")
    assert row.processed_at is not None
    assert len(calls) == 3


@pytest.mark.django_db(transaction=True)
def test_a_failure_is_recorded_under_atomic_requests(client, sources, calls, monkeypatch):
    monkeypatch.setitem(connections["default"].settings_dict, "ATOMIC_REQUESTS", True)
    calls.action = explode
    assert_failure_recorded(deliver(client, event_body()))


def test_an_inactive_admin_source_answers_404(client, calls):
    Source.objects.create(name="dormant", secrets=HMAC.current, is_active=False)
    response = deliver(client, event_body(), source="dormant")
    assert_refusal(response, 404, "unknown source")
    assert calls == [] and not InboundWebhook.objects.exists()


def test_an_admin_source_with_unusable_keys_answers_500_without_raising(client, calls, caplog):
    row = Source.objects.create(name="broken", secrets=HMAC.current)
    # Bypasses the model's validation, as a direct SQL edit or a bad data migration would.
    Source.objects.filter(pk=row.pk).update(secrets=f"{HMAC.current}\nwhpk_AAAA")
    response = deliver(client, event_body(), source="broken")
    assert_refusal(response, 500, "receiver misconfigured")
    assert calls == [] and not InboundWebhook.objects.exists()
    assert "receiver misconfigured" in caplog.text
    assert HMAC.current not in caplog.text


def test_a_settings_source_with_an_unknown_mode_answers_500(client, settings, calls):
    configure(settings, library={"secrets": [HMAC.current], "mode": "sometimes"})
    assert_refusal(deliver(client, event_body()), 500, "receiver misconfigured")
    assert calls == []


def test_a_webhook_id_longer_than_255_characters_is_refused(client, sources, calls):
    response = deliver(client, event_body(), msg_id="m" * 256)
    assert_refusal(response, 400)
    assert calls == [] and not InboundWebhook.objects.exists()
    assert deliver(client, event_body(), msg_id="m" * 255).status_code == 200
    assert InboundWebhook.objects.get().webhook_id == "m" * 255


@pytest.mark.parametrize(
    "body",
    [event_body(42), event_body(None), event_body(["library.book.deleted"]), b"[1, 2]", b'"text"'],
    ids=["number", "null", "list", "array payload", "string payload"],
)
def test_a_payload_without_a_string_type_is_handled_with_an_empty_event_type(client, sources, calls, body):
    response = deliver(client, body, source="partner")
    assert response.status_code == 200
    [call] = calls
    assert call["event_type"] == "" and call["payload"] == json.loads(body)
    assert InboundWebhook.objects.get().event_type == ""


def test_the_same_webhook_id_from_two_sources_is_handled_by_each(client, sources, calls):
    msg_id = new_id()
    assert deliver(client, event_body(), msg_id=msg_id).json() == {"status": "processed"}
    assert deliver(client, event_body(), source="partner", msg_id=msg_id).json() == {"status": "processed"}
    assert sorted(c["source"] for c in calls) == ["library", "partner"]
    assert InboundWebhook.objects.filter(webhook_id=msg_id).count() == 2


@pytest.mark.parametrize("event_type", ["library." + "x" * 200, r"library.book\u0000deleted"])
def test_an_event_type_too_long_or_unprintable_is_refused(client, sources, calls, event_type):
    body = b'{"type": "%s"}' % event_type.encode()
    assert_refusal(deliver(client, body, source="partner"), 400, "invalid event type")
    assert calls == [] and not InboundWebhook.objects.exists()


def test_an_integer_too_long_to_convert_is_refused_with_400_not_500(client, sources, calls):
    body = b'{"type": "library.book.deleted", "data": {"pk": %s}}' % (b"1" * 5000)
    assert_refusal(deliver(client, body), 400, "body is not valid UTF-8 JSON")
    assert calls == [] and not InboundWebhook.objects.exists()


@pytest.mark.parametrize("number", ["1e999", "-1e999"])
def test_a_number_beyond_float_range_is_refused_like_infinity(client, sources, calls, number):
    body = b'{"type": "library.book.deleted", "data": {"price": %s}}' % number.encode()
    response = deliver(client, body)
    assert calls == [], f"a handler received {calls[0]['payload']['data']['price']!r}"
    assert_refusal(response, 400, "body is not valid UTF-8 JSON")


def test_a_get_is_refused_with_a_json_error_like_every_other_refusal(client, sources):
    response = client.get("/webhooks/library/")
    assert response.status_code == 405
    assert_refusal(response, 405)


# --- on_webhook -------------------------------------------------------------------------------------


@pytest.fixture
def decorated():
    """Functions decorated in a test; their handlers are disconnected afterwards."""
    functions: list[Callable[..., Any]] = []
    yield functions
    for function in functions:
        for handler in function._hookpost_handlers:
            signals.webhook_received.disconnect(handler)


def test_on_webhook_calls_the_function_for_matching_types_from_its_source_only(client, sources, decorated):
    seen = []

    @on_webhook("library.book.*", source="library")
    def book_changed(*, source, event_type, payload, webhook):
        seen.append({"source": source, "event_type": event_type, "payload": payload, "webhook": webhook})

    decorated.append(book_changed)
    body = event_body("library.book.deleted", pk=5)
    assert deliver(client, body).status_code == 200
    assert deliver(client, event_body("library.author.deleted")).status_code == 200
    assert deliver(client, event_body("library.book.deleted"), source="partner").status_code == 200
    assert deliver(client, event_body("library.bookish")).status_code == 200
    [call] = seen
    assert call["source"] == "library" and call["event_type"] == "library.book.deleted"
    assert call["payload"] == json.loads(body)
    assert call["webhook"] == InboundWebhook.objects.get(source="library", event_type="library.book.deleted")


def test_on_webhook_patterns_hold_wildcards_and_match_every_source_by_default(client, sources, decorated):
    seen = []

    @on_webhook("*.deleted", "library.author.created")
    def handler(*, source, event_type, **kwargs):
        seen.append((source, event_type))

    decorated.append(handler)
    for source, event_type in [
        ("library", "library.book.deleted"),
        ("partner", "billing.invoice.deleted"),
        ("library", "library.author.created"),
        ("library", "library.author.updated"),
        ("partner", "library.author.created.not"),
    ]:
        assert deliver(client, event_body(event_type), source=source).status_code == 200
    assert seen == [
        ("library", "library.book.deleted"),
        ("partner", "billing.invoice.deleted"),
        ("library", "library.author.created"),
    ]


def test_an_on_webhook_function_that_raises_fails_the_webhook(client, sources, decorated):
    @on_webhook("library.*")
    def refuse(**kwargs):
        Tag.objects.create(name="written-by-a-failing-handler")
        raise RuntimeError("handler exploded on purpose")

    decorated.append(refuse)
    assert_failure_recorded(deliver(client, event_body()))


def test_on_webhook_refuses_an_async_function():
    async def handler(**kwargs):
        return None

    with pytest.raises(TypeError, match="async"):
        on_webhook("library.*")(handler)


@pytest.mark.parametrize("pattern", ["", "library..book", "library book", "library.book.", 42])
def test_on_webhook_refuses_an_invalid_pattern(pattern):
    with pytest.raises(ValueError, match="invalid event type pattern"):
        on_webhook("library.*", pattern)


def test_on_webhook_needs_a_pattern():
    with pytest.raises(TypeError):
        on_webhook()


# --- concurrency ------------------------------------------------------------------------------------


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite serialises writers, so two requests can never be inside the insert at once",
)
@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_deliveries_of_one_id_are_handled_once(sources, calls):
    # The handler holds its transaction open, so the second insert waits on the first.
    calls.action = lambda **kwargs: time.sleep(0.3)
    body = event_body()
    headers = signed_headers(body, HMAC.current)
    barrier = threading.Barrier(2)
    responses: list[Any] = []
    errors: list[BaseException] = []

    def deliver_once() -> None:
        try:
            client = Client()
            barrier.wait(timeout=10)
            responses.append(post(client, "/webhooks/library/", body, headers))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(r.status_code for r in responses) == [200, 200]
    assert sorted(r.json()["status"] for r in responses) == ["duplicate", "processed"]
    assert len(calls) == 1
    assert InboundWebhook.objects.get().status == "processed"


# --- end to end: hookpost's sender delivering to hookpost's receiver -------------------------------


def test_the_hookpost_worker_delivers_a_deleted_book_to_the_hookpost_receiver(live_server, settings, calls):
    endpoint = Endpoint.objects.create(url=live_server.url + "/webhooks/library/", event_types=["library.*"])
    configure(settings, library={"secrets": endpoint.signing_secrets(), "event_types": ["library.book.*"]})
    book = Book.objects.create(title="The Dispossessed", author=Author.objects.create(name="Le Guin"))
    pk = book.pk
    book.delete()
    Worker(batch_size=10, poll_interval=0.01).run(burst=True)
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}
    deleted = [c for c in calls if c["event_type"] == "library.book.deleted"]
    event = Event.objects.get(type="library.book.deleted")
    [call] = deleted
    assert call["source"] == "library"
    assert call["payload"] == json.loads(event.payload)
    assert call["payload"]["data"]["pk"] == pk
    assert call["payload"]["data"]["fields"]["title"] == "The Dispossessed"
    # The author's event was acknowledged and ignored: the source takes only book events.
    statuses = dict(InboundWebhook.objects.values_list("event_type", "status"))
    assert statuses == {
        "library.author.created": "ignored",
        "library.book.created": "processed",
        "library.book.deleted": "processed",
    }
    assert InboundWebhook.objects.get(event_type="library.book.deleted").webhook_id == event.id
    Worker(batch_size=10, poll_interval=0.01).run(burst=True)
    assert len([c for c in calls if c["event_type"] == "library.book.deleted"]) == 1
