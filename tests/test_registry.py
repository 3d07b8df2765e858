"""Registry and system checks: registering models and signals, and every check id."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db.models.signals import post_save
from django.dispatch import Signal
from django.test.utils import override_settings

import hookpost
from hookpost.checks import HINTS, check_settings
from hookpost.exceptions import AlreadyRegistered, ConfigurationError
from hookpost.registry import Registry, registry
from library.models import Author, Book, Review, Tag

ROOT = Path(__file__).resolve().parents[1]


# Without it every check run would also warn (W003) that keys come from SECRET_KEY.
A_FERNET_KEY = "ZmRzYWZkc2FmZHNhZmRzYWZkc2FmZHNhZmRzYWZkc2E="


def check_ids(**hookpost_setting: object) -> list[str]:
    hookpost_setting.setdefault("ENCRYPTION_KEYS", [A_FERNET_KEY])
    with override_settings(HOOKPOST=hookpost_setting):
        return [m.id for m in check_settings()]


# --- public API ---------------------------------------------------------------------------------


def test_public_api_is_pinned():
    assert hookpost.__all__ == [
        "ConfigurationError",
        "HookpostError",
        "PayloadError",
        "SignatureVerificationError",
        "WebhookRejected",
        "emit",
        "on_webhook",
        "register",
        "register_signal",
        "unregister",
        "unregister_signal",
    ]
    for name in hookpost.__all__:
        assert getattr(hookpost, name) is not None
    with pytest.raises(AttributeError):
        hookpost.nothing_here  # noqa: B018


def test_importing_hookpost_loads_no_models_and_no_django_settings():
    code = (
        "import sys, hookpost\n"
        "assert 'hookpost.models' not in sys.modules, 'models imported'\n"
        "assert 'django.db.models' not in sys.modules, 'django.db.models imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --- registering models -------------------------------------------------------------------------


def test_example_registrations_from_code_and_settings_are_loaded():
    labels = {spec.label for spec in registry.model_specs}
    assert {"library.author", "library.book", "library.tag"} <= labels
    assert registry.spec_for(Review) is None


def test_catalog_lists_every_event_type_once_sorted():
    assert registry.event_types() == [
        "library.author.created",
        "library.author.deleted",
        "library.author.updated",
        "library.book.borrowed",
        "library.book.created",
        "library.book.deleted",
        "library.book.updated",
        "library.tag.created",
        "library.tag.deleted",
    ]


def test_registering_a_model_twice_is_an_error(isolated_registry):
    with pytest.raises(AlreadyRegistered, match=r"hookpost.E010: library.Book is already"):
        isolated_registry.register(Book, fields=["title"])


def test_two_registrations_may_not_emit_the_same_type(isolated_registry):
    with pytest.raises(AlreadyRegistered, match="library.book.created"):
        isolated_registry.register(Review, fields=["rating"], type_prefix="library.book")


def test_type_prefix_renames_the_events(isolated_registry):
    spec = isolated_registry.register(Review, fields=["rating"], type_prefix="shop.review")
    assert spec.event_types == ["shop.review.created", "shop.review.updated", "shop.review.deleted"]


@pytest.mark.parametrize(
    ("options", "check_id"),
    [
        ({}, "hookpost.E008"),
        ({"fields": "everything"}, "hookpost.E008"),
        ({"fields": ["nope"]}, "hookpost.E002"),
        ({"fields": ["book"], "when_changed": ["missing"]}, "hookpost.E002"),
        ({"fields": ["rating"], "actions": ["created"], "when_changed": ["rating"]}, "hookpost.E002"),
        ({"fields": ["rating"], "serializer": "not callable"}, "hookpost.E003"),
        ({"fields": ["rating"], "actions": ["destroyed"]}, "hookpost.E005"),
        ({"fields": ["rating"], "actions": []}, "hookpost.E005"),
        ({"fields": ["rating"], "cascade": "sometimes"}, "hookpost.E006"),
        ({"fields": ["rating"], "type_prefix": "has space"}, "hookpost.E009"),
    ],
)
def test_invalid_registration_in_code_raises_with_the_check_id(isolated_registry, options, check_id):
    with pytest.raises(ConfigurationError) as info:
        isolated_registry.register(Review, **options)
    assert info.value.check_id == check_id
    assert str(info.value).startswith(f"{check_id}: library.Review")
    assert isolated_registry.spec_for(Review) is None


def test_reverse_relations_and_many_to_many_in_when_changed_are_refused(isolated_registry):
    isolated_registry.unregister(Author)
    with pytest.raises(ConfigurationError, match="reverse relation"):
        isolated_registry.register(Author, fields=["books"])
    isolated_registry.unregister(Book)
    with pytest.raises(ConfigurationError, match="many-to-many"):
        isolated_registry.register(Book, fields=["title"], when_changed=["tags"])


def test_fields_all_means_every_concrete_field_but_not_many_to_many(isolated_registry):
    isolated_registry.unregister(Book)
    spec = isolated_registry.register(Book, fields="__all__")
    assert [name for name, _ in spec.concrete] == [
        "id",
        "title",
        "author",
        "isbn",
        "price",
        "published",
        "uid",
        "cover",
        "updated_at",
    ]
    assert spec.many_to_many == ()


def test_registration_made_while_models_load_completes_in_ready():
    registry = Registry()
    from django.apps import apps

    apps.models_ready = False
    try:
        assert registry.register(Review, fields=["rating"]) is None
        assert registry.spec_for(Review) is None
    finally:
        apps.models_ready = True
    registry.complete_pending()
    try:
        assert registry.spec_for(Review) is not None
        assert post_save.has_listeners(Review)
    finally:
        registry.unregister(Review)
    assert not post_save.has_listeners(Review)


def test_unregistering_an_unknown_model_or_signal_says_so(isolated_registry):
    with pytest.raises(LookupError, match="library.Review is not registered"):
        isolated_registry.unregister(Review)
    with pytest.raises(LookupError, match="no signal is registered"):
        isolated_registry.unregister_signal("nothing.here")


# --- registering signals ----------------------------------------------------------------------


def test_signal_registration_validates_type_and_payload(isolated_registry):
    signal = Signal()
    with pytest.raises(ValueError, match="invalid event type"):
        isolated_registry.register_signal(signal, "bad type", lambda sender, **kw: {})
    with pytest.raises(ConfigurationError, match="hookpost.E003"):
        isolated_registry.register_signal(signal, "a.b", "not callable")  # type: ignore[arg-type]
    isolated_registry.register_signal(signal, "a.b", lambda sender, **kw: {})
    with pytest.raises(AlreadyRegistered):
        isolated_registry.register_signal(signal, "a.b", lambda sender, **kw: {})
    assert "a.b" in isolated_registry.event_types()
    isolated_registry.unregister_signal("a.b")
    assert not signal.has_listeners()


def test_isolated_registry_restores_registrations_and_receivers():
    before = registry.event_types()
    with registry.isolated():
        registry.unregister(Book)
        registry.unregister(Tag)
        assert not post_save.has_listeners(Book)
    assert registry.event_types() == before
    assert post_save.has_listeners(Book) and post_save.has_listeners(Tag)


# --- system checks ------------------------------------------------------------------------------


def test_example_settings_pass_every_check():
    assert check_settings() == []


def test_e001_unknown_model():
    assert check_ids(MODELS={"library.Nope": {"fields": ["x"]}}) == ["hookpost.E001"]
    assert check_ids(MODELS={"not a label": {"fields": ["x"]}}) == ["hookpost.E001"]


def test_e002_unknown_field():
    assert check_ids(MODELS={"library.Review": {"fields": ["stars"]}}) == ["hookpost.E002"]
    assert check_ids(MODELS={"library.Review": {"fields": ["rating"], "when_changed": ["stars"]}}) == [
        "hookpost.E002"
    ]


def test_e003_serializer_not_callable_or_not_importable():
    assert check_ids(MODELS={"library.Review": {"fields": ["rating"], "serializer": 5}}) == ["hookpost.E003"]
    assert check_ids(MODELS={"library.Review": {"fields": ["rating"], "serializer": "no.such.function"}}) == [
        "hookpost.E003"
    ]


def test_dotted_path_serializer_in_settings_is_imported():
    ok = {"library.Review": {"fields": ["rating"], "serializer": "json.dumps"}}
    assert check_ids(MODELS=ok) == []


@pytest.mark.parametrize("tolerance", [-1, "300", 1.5, True])
def test_e004_bad_tolerance(tolerance):
    assert check_ids(SIGNATURE_TOLERANCE=tolerance) == ["hookpost.E004"]


def test_e005_unknown_action():
    assert check_ids(MODELS={"library.Review": {"fields": ["rating"], "actions": ["x"]}}) == ["hookpost.E005"]


def test_e006_bad_cascade_option():
    assert check_ids(MODELS={"library.Review": {"fields": ["rating"], "cascade": "no"}}) == ["hookpost.E006"]


def test_e007_wrong_shapes_and_unknown_options():
    with override_settings(HOOKPOST=["not", "a", "dict"]):
        assert [m.id for m in check_settings()] == ["hookpost.E007"]
    assert check_ids(MODELS=["library.Review"]) == ["hookpost.E007"]
    assert check_ids(MODELS={"library.Review": "rating"}) == ["hookpost.E007"]
    assert check_ids(MODELS={"library.Review": {"fields": ["rating"], "feilds": 1}}) == ["hookpost.E007"]


def test_e008_missing_fields():
    assert check_ids(MODELS={"library.Review": {"actions": ["created"]}}) == ["hookpost.E008"]


def test_e009_bad_type_prefix():
    assert check_ids(MODELS={"library.Review": {"fields": ["rating"], "type_prefix": "a b"}}) == [
        "hookpost.E009"
    ]


@pytest.mark.parametrize("size", [0, -5, "100", None])
def test_e011_bad_capture_batch_size(size):
    assert check_ids(CAPTURE_BATCH_SIZE=size) == ["hookpost.E011"]


def test_e012_strict_must_be_a_bool():
    assert check_ids(STRICT="yes") == ["hookpost.E012"]


def test_w001_unknown_setting_key():
    messages = check_ids(SIGNATURE_TOLERENCE=300)
    assert messages == ["hookpost.W001"]


def test_every_error_id_has_a_hint_and_a_test():
    source = Path(__file__).read_text()
    for check_id in HINTS:
        number = check_id.split(".")[1].lower()
        assert f"def test_{number}_" in source, f"{check_id} has no test"


@pytest.mark.django_db(databases=["default", "other"])  # Django 6 checks every database here
def test_check_command_fails_on_a_bad_setting():
    with (
        override_settings(HOOKPOST={"SIGNATURE_TOLERANCE": -1}),
        pytest.raises(SystemCheckError, match="hookpost.E004"),
    ):
        call_command("check")


def test_e013_transport_not_importable():
    assert check_ids(TRANSPORT="no.such.Transport") == ["hookpost.E013"]
    assert check_ids(TRANSPORT="json.JSONDecoder") == ["hookpost.E013"]


def test_e014_allowed_networks_must_be_cidrs():
    assert check_ids(ALLOWED_NETWORKS="127.0.0.0/8") == ["hookpost.E014"]
    assert check_ids(ALLOWED_NETWORKS=["127.0.0.0/33"]) == ["hookpost.E014"]


@pytest.mark.parametrize("name", ["CONNECT_TIMEOUT", "TOTAL_TIMEOUT", "MAX_IN_FLIGHT", "POLL_INTERVAL"])
@pytest.mark.parametrize("value", [0, -1, "5", None])
def test_e015_delivery_numbers_must_be_positive(name, value):
    assert check_ids(**{name: value}) == ["hookpost.E015"]


def test_e016_bad_retry_schedule_or_jitter():
    assert check_ids(RETRY_SCHEDULE=["soon"]) == ["hookpost.E016"]
    assert check_ids(RETRY_SCHEDULE=[]) == ["hookpost.E016"]
    assert check_ids(RETRY_JITTER=1.5) == ["hookpost.E016"]
    assert check_ids(RETRY_SCHEDULE=[0, "5s", "1h"]) == []


def test_e017_unknown_runner():
    assert check_ids(RUNNER="cron") == ["hookpost.E017"]


def test_e015_receiver_body_limit_must_be_positive():
    assert check_ids(RECEIVER_MAX_BODY_BYTES=0) == ["hookpost.E015"]
    assert check_ids(RECEIVER_MAX_BODY_BYTES="1MB") == ["hookpost.E015"]


def test_e016_bad_receiver_retry_schedule():
    assert check_ids(RECEIVER_RETRY_SCHEDULE="5m") == ["hookpost.E016"]
    assert check_ids(RECEIVER_RETRY_SCHEDULE=[0, "1m"]) == []


GOOD_KEY = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    ("sources", "fragment"),
    [
        ([], "is []"),
        ({"has space": {"secrets": [GOOD_KEY]}}, "cannot appear in a URL"),
        ({"library": [GOOD_KEY]}, "must be a dict"),
        ({"library": {}}, "no secrets"),
        ({"library": {"secrets": ["whsec_!!"]}}, "not valid base64"),
        ({"library": {"secrets": GOOD_KEY + "\nwhsk_AAAA"}}, "private"),
        ({"library": {"secrets": [GOOD_KEY], "secret": "typo"}}, "unknown options ['secret']"),
        ({"library": {"secrets": [GOOD_KEY], "event_types": ["bad type"]}}, "invalid event type pattern"),
        ({"library": {"secrets": [GOOD_KEY], "mode": "later"}}, "mode is 'later'"),
        ({"library": {"secrets": [GOOD_KEY], "tolerance": -5}}, "tolerance is -5"),
        ({"library": {"secrets": [GOOD_KEY], "max_body_bytes": 0.5}}, "max_body_bytes is 0.5"),
    ],
)
def test_e018_receiver_sources_must_resolve(sources, fragment):
    with override_settings(HOOKPOST={"RECEIVER_SOURCES": sources, "ENCRYPTION_KEYS": [A_FERNET_KEY]}):
        messages = check_settings()
    assert [m.id for m in messages] == ["hookpost.E018"]
    assert fragment in messages[0].msg
    # A secret never appears in a check message.
    assert GOOD_KEY.removeprefix("whsec_") not in messages[0].msg


def test_e018_good_sources_pass():
    good = {
        "library": {"secrets": [GOOD_KEY], "event_types": ["library.*"], "mode": "worker"},
        "partner-2": {"secrets": GOOD_KEY, "tolerance": 0, "max_body_bytes": 10},
    }
    assert check_ids(RECEIVER_SOURCES=good) == []


def test_e020_encryption_keys_must_be_a_list_of_fernet_keys():
    assert check_ids(ENCRYPTION_KEYS=A_FERNET_KEY) == ["hookpost.E020"]
    with override_settings(HOOKPOST={"ENCRYPTION_KEYS": [A_FERNET_KEY, "not-a-key-but-a-secret"]}):
        [message] = check_settings()
    assert message.id == "hookpost.E020" and "[1]" in message.msg
    assert "not-a-key-but-a-secret" not in message.msg  # a key is never echoed


def test_e021_rotation_grace_must_be_a_non_negative_number():
    assert check_ids(SECRET_ROTATION_GRACE=-1) == ["hookpost.E021"]
    assert check_ids(SECRET_ROTATION_GRACE="1d") == ["hookpost.E021"]
    assert check_ids(SECRET_ROTATION_GRACE=0) == []


def test_w003_keys_derived_from_secret_key_are_warned_about():
    with override_settings(HOOKPOST={}):
        assert [m.id for m in check_settings()] == ["hookpost.W003"]
    assert check_ids(ENCRYPTION_KEYS=[A_FERNET_KEY]) == []


def test_e019_unknown_receiver_mode():
    assert check_ids(RECEIVER_MODE="async") == ["hookpost.E019"]


def test_w002_lease_not_longer_than_the_timeout():
    assert check_ids(LEASE_SECONDS=10, TOTAL_TIMEOUT=15) == ["hookpost.W002"]
