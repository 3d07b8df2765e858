"""Capture: model signals become events, written on the changing connection inside its transaction."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.core import serializers
from django.db import connection, connections, transaction
from django.db.models.signals import post_delete, pre_delete
from django.test.utils import CaptureQueriesContext, override_settings

import hookpost
from hookpost.exceptions import PayloadError
from hookpost.models import Event
from hookpost.signals import payload_invalid
from library.models import Author, Book, Review, Tag
from library.signals import book_borrowed
from tests.conftest import outbox, types

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.django_db(databases=["default", "other"])


def book_fields(book: Book, **overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "title": book.title,
        "author": book.author_id,
        "isbn": book.isbn,
        "price": None if book.price is None else str(book.price),
        "published": None if book.published is None else book.published.isoformat(),
        "uid": str(book.uid),
        "cover": book.cover.name or None,
        "tags": [],
    }
    fields.update(overrides)
    return fields


def strip_volatile(event: dict[str, object]) -> dict[str, object]:
    """The event without what changes run to run (ids, timestamps, row fields)."""
    return {k: v for k, v in event.items() if k not in {"timestamp"} and not k.startswith("_")}


# --- created / updated / deleted payloads ---------------------------------------------------


def test_create_writes_a_created_event_with_the_registered_fields_exactly():
    author = Author.objects.create(name="Ursula K. Le Guin", born=dt.date(1929, 10, 21))
    book = Book.objects.create(
        title="The Dispossessed",
        author=author,
        isbn="978-0-06-051275-3",
        price=decimal.Decimal("12.50"),
        published=dt.date(1974, 5, 1),
        uid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    )
    events = outbox()
    assert [strip_volatile(e) for e in events] == [
        {
            "type": "library.author.created",
            "data": {
                "model": "library.author",
                "pk": author.pk,
                "fields": {"name": "Ursula K. Le Guin", "born": "1929-10-21"},
            },
        },
        {
            "type": "library.book.created",
            "data": {
                "model": "library.book",
                "pk": book.pk,
                "fields": {
                    "title": "The Dispossessed",
                    "author": author.pk,
                    "isbn": "978-0-06-051275-3",
                    "price": "12.50",
                    "published": "1974-05-01",
                    "uid": "12345678-1234-5678-1234-567812345678",
                    "cover": None,
                    "tags": [],
                },
            },
        },
    ]
    # "email" is a column of Author, but not a registered field: it must not leak.
    assert "email" not in events[0]["data"]["fields"]
    assert all(e["_origin"] is None and e["_error"] == "" for e in events)


def test_event_timestamp_is_iso_8601_utc_and_the_id_a_dotless_msg_id():
    before = dt.datetime.now(dt.UTC)
    Author.objects.create(name="A")
    after = dt.datetime.now(dt.UTC)
    event = Event.objects.get()
    payload = json.loads(event.payload)
    assert payload["timestamp"].endswith("Z")
    stamp = dt.datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
    assert before <= stamp <= after
    assert event.occurred_at == stamp
    assert event.id.startswith("msg_") and "." not in event.id and len(event.id) == 30


def test_update_writes_an_updated_event_with_the_new_values():
    author = Author.objects.create(name="Old")
    Event.objects.all().delete()
    author.name = "New"
    author.save()
    [event] = outbox()
    assert strip_volatile(event) == {
        "type": "library.author.updated",
        "data": {"model": "library.author", "pk": author.pk, "fields": {"name": "New", "born": None}},
    }


def test_delete_writes_a_full_snapshot_with_the_pk_and_a_direct_origin():
    author = Author.objects.create(name="Gone", born=dt.date(1900, 1, 1))
    pk = author.pk
    Event.objects.all().delete()
    author.delete()
    [event] = outbox()
    assert strip_volatile(event) == {
        "type": "library.author.deleted",
        "data": {"model": "library.author", "pk": pk, "fields": {"name": "Gone", "born": "1900-01-01"}},
        "origin": {"model": "library.author", "pk": pk, "cascade": False},
    }
    assert event["_origin"] == {"model": "library.author", "pk": pk, "cascade": False}


def test_raw_saves_from_fixtures_emit_nothing_by_default():
    data = json.dumps([{"model": "library.author", "pk": 77, "fields": {"name": "Fixture"}}])
    for obj in serializers.deserialize("json", data):
        obj.save()  # raw=True, as loaddata does
    assert Author.objects.filter(pk=77).exists()
    assert types() == []


def test_include_raw_emits_for_fixture_saves(isolated_registry):
    isolated_registry.unregister(Author)
    isolated_registry.register(Author, fields=["name"], include_raw=True)
    data = json.dumps([{"model": "library.author", "pk": 78, "fields": {"name": "Fixture"}}])
    for obj in serializers.deserialize("json", data):
        obj.save()
    assert types() == ["library.author.created"]


# --- when_changed -------------------------------------------------------------------------------


@pytest.fixture
def book() -> Book:
    book = Book.objects.create(title="T", author=Author.objects.create(name="A"), price="1.00")
    Event.objects.all().delete()
    return Book.objects.get(pk=book.pk)


def test_when_changed_skips_saves_that_change_no_watched_field(book):
    book.isbn = "123"
    book.save()
    assert types() == []


def test_when_changed_emits_when_a_watched_field_changes(book):
    book.price = decimal.Decimal("2.00")
    book.save()
    [event] = outbox()
    assert event["type"] == "library.book.updated"
    assert event["data"]["fields"]["price"] == "2.00"


def test_when_changed_compares_with_the_last_save_not_the_first_load(book):
    book.title = "T2"
    book.save()
    book.save()  # nothing changed since the previous save
    book.title = "T"
    book.save()  # back to the loaded value: a change since the last save
    assert types() == ["library.book.updated", "library.book.updated"]


def test_when_changed_forgets_a_save_whose_savepoint_rolled_back(book):
    book.title = "T2"
    with pytest.raises(RuntimeError), transaction.atomic():
        book.save()
        raise RuntimeError
    assert types() == []
    book.save()  # the change never reached the database: it is still a change
    assert types() == ["library.book.updated"]


def test_when_changed_keeps_a_save_whose_savepoint_was_released(book):
    book.title = "T2"
    with transaction.atomic():
        book.save()
    book.save()  # the released savepoint's save stands: nothing changed since
    assert types() == ["library.book.updated"]


def test_an_instance_with_a_pending_save_pickles_and_its_copy_compares_with_what_was_loaded(book):
    import pickle

    book.title = "T2"
    book.save()
    copy = pickle.loads(pickle.dumps(book))
    copy.save()  # the copy is not part of the transaction: it compares with the loaded title
    book.save()
    assert types() == ["library.book.updated", "library.book.updated"]


@pytest.mark.django_db(transaction=True)
def test_when_changed_adopts_a_saved_value_when_its_transaction_commits():
    from hookpost.capture import LOADED_ATTR, PENDING_ATTR

    book = Book.objects.create(title="T", author=Author.objects.create(name="A"), price="1.00")
    book = Book.objects.get(pk=book.pk)
    with transaction.atomic():
        book.title = "T2"
        book.save()
        assert PENDING_ATTR in book.__dict__ and book.__dict__[LOADED_ATTR]["title"] == "T"
    assert PENDING_ATTR not in book.__dict__ and book.__dict__[LOADED_ATTR]["title"] == "T2"
    Event.objects.all().delete()
    book.save()
    assert types() == []


def test_when_changed_with_update_fields_that_exclude_watched_fields_emits_nothing(book):
    book.title = "changed but not saved"
    book.isbn = "9"
    book.save(update_fields=["isbn"])
    assert types() == []


def test_when_changed_counts_a_watched_field_deferred_at_load_then_assigned_as_changed(book):
    lean = Book.objects.only("id", "isbn").get(pk=book.pk)
    lean.title = "assigned"
    lean.save()
    # The old title was never loaded and hookpost never queries to find it: it counts as changed.
    [event] = outbox()
    assert event["data"]["fields"]["title"] == "assigned"


def test_saving_a_deferred_instance_without_touching_watched_fields_emits_nothing(book):
    lean = Book.objects.only("id", "isbn").get(pk=book.pk)
    lean.isbn = "x"
    lean.save()  # Django saves only the loaded fields: title and price are not written
    assert types() == []


def test_when_changed_needs_no_extra_query(book, django_assert_num_queries):
    with django_assert_num_queries(1):  # the UPDATE only
        book.isbn = "no event"
        book.save()


def test_saving_an_instance_loaded_with_deferred_payload_fields_loads_them_in_one_query(book):
    lean = Book.objects.only("id", "title").get(pk=book.pk)
    with CaptureQueriesContext(connection) as queries:
        lean.title = "New title"
        lean.save()
    selects = [
        q["sql"] for q in queries if q["sql"].startswith("SELECT") and "library_book_tags" not in q["sql"]
    ]
    assert len(selects) == 1, selects
    [event] = outbox()
    assert event["data"]["fields"]["price"] == "1.00"


# --- custom signals and emit ----------------------------------------------------------------


def test_registered_custom_signal_writes_an_event_built_from_its_kwargs(book):
    book_borrowed.send(sender=Book, book=book, reader="ged")
    [event] = outbox()
    assert strip_volatile(event) == {
        "type": "library.book.borrowed",
        "data": {"book": book.pk, "title": "T", "reader": "ged"},
    }


def test_signal_registered_with_using_writes_on_that_database(isolated_registry):
    from django.dispatch import Signal

    user_registered = Signal()
    hookpost.register_signal(
        user_registered,
        "auth.user.registered",
        lambda sender, **kw: {"user": kw["user"]},
        using="other",
    )
    user_registered.send(sender=None, user=5)
    assert types("other") == ["auth.user.registered"]
    assert types("default") == []


def test_emit_writes_the_same_kind_of_event_for_code_paths_without_signals():
    Author.objects.bulk_create([Author(name="x"), Author(name="y")])
    event = hookpost.emit("library.author.bulk_created", {"count": 2})
    stored = Event.objects.get()
    assert stored.id == event.id
    assert json.loads(stored.payload) == {
        "type": "library.author.bulk_created",
        "timestamp": json.loads(stored.payload)["timestamp"],
        "data": {"count": 2},
    }


def test_emit_on_another_database_writes_there():
    hookpost.emit("library.author.renamed", {"n": 1}, using="other")
    assert types("other") == ["library.author.renamed"]
    assert types("default") == []


@pytest.mark.parametrize("bad", ["", "has space", "trailing.", ".leading", "a..b", 5, None])
def test_emit_refuses_a_malformed_event_type(bad):
    with pytest.raises(ValueError, match="invalid event type"):
        hookpost.emit(bad, {})
    assert types() == []


def test_emit_raises_payload_error_naming_the_unencodable_path():
    with pytest.raises(PayloadError, match=r"items\[1\]\.when.*set"):
        hookpost.emit("x.y", {"items": [{"when": 1}, {"when": {1, 2}}]})
    assert types() == []


# --- transactions -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_rollback_leaves_no_event():
    with pytest.raises(RuntimeError), transaction.atomic():
        Author.objects.create(name="never")
        raise RuntimeError
    assert Author.objects.count() == 0
    assert types() == []


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_savepoint_rollback_removes_only_that_savepoints_events():
    with transaction.atomic():
        Author.objects.create(name="kept")
        try:
            with transaction.atomic():
                Author.objects.create(name="rolled back")
                Book.objects.filter(pk__in=[]).delete()
                raise RuntimeError
        except RuntimeError:
            pass
        Author.objects.create(name="kept too")
    assert [e["data"]["fields"]["name"] for e in outbox()] == ["kept", "kept too"]


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_rolled_back_bulk_delete_leaves_no_event():
    author = Author.objects.create(name="a")
    Book.objects.bulk_create([Book(title=str(i), author=author) for i in range(5)])
    Event.objects.all().delete()
    with pytest.raises(RuntimeError), transaction.atomic():
        Book.objects.all().delete()
        raise RuntimeError
    assert Book.objects.count() == 5
    assert types() == []


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_change_on_another_database_writes_the_event_on_that_connection_only():
    with transaction.atomic(using="other"):
        author = Author.objects.using("other").create(name="elsewhere")
        # Inside the transaction the event is visible on the same connection…
        assert types("other") == ["library.author.created"]
    author.delete(using="other")
    assert types("other") == ["library.author.created", "library.author.deleted"]
    assert types("default") == []


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_committed_event_survives_the_process_dying_right_after_commit():
    """A child process commits a change and is killed at once; the event is in the database."""
    db = connection.settings_dict
    script = f"""
import os, signal, django
from django.conf import settings
settings.DATABASES["default"]["NAME"] = {db["NAME"]!r}
django.setup()
from django.db import transaction
from library.models import Author
with transaction.atomic():
    Author.objects.create(name="survivor")
os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "example"), str(ROOT / "src")])
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, timeout=60)
    assert result.returncode == -9
    connections.close_all()
    [event] = outbox()
    assert event["type"] == "library.author.created"
    assert event["data"]["fields"]["name"] == "survivor"


# --- deletes: cascades, deferred fields, batching ------------------------------------------


@pytest.fixture
def author_with_books() -> Author:
    author = Author.objects.create(name="Cascade")
    for i in range(3):
        Book.objects.create(title=f"B{i}", author=author)
    Event.objects.all().delete()
    return author


def test_cascaded_delete_marks_each_event_with_its_origin(author_with_books):
    author_pk = author_with_books.pk
    book_pks = sorted(author_with_books.books.values_list("pk", flat=True))
    author_with_books.delete()
    events = outbox()
    assert sorted(e["type"] for e in events) == ["library.author.deleted"] + ["library.book.deleted"] * 3
    book_events = [e for e in events if e["type"] == "library.book.deleted"]
    assert sorted(e["data"]["pk"] for e in book_events) == book_pks
    for e in book_events:
        assert e["origin"] == {"model": "library.author", "pk": author_pk, "cascade": True}
    [author_event] = [e for e in events if e["type"] == "library.author.deleted"]
    assert author_event["origin"] == {"model": "library.author", "pk": author_pk, "cascade": False}


def test_queryset_delete_origin_names_the_model_without_a_pk(author_with_books):
    Book.objects.filter(author=author_with_books).delete()
    origins = [e["origin"] for e in outbox()]
    assert origins == [{"model": "library.book", "pk": None, "cascade": False}] * 3


def test_cascade_skip_drops_deletes_cascaded_from_another_model(isolated_registry, author_with_books):
    isolated_registry.unregister(Book)
    isolated_registry.register(Book, fields=["title"], cascade="skip")
    author_with_books.delete()
    assert types() == ["library.author.deleted"]
    # A direct delete of the same model still emits.
    other = Book.objects.create(title="direct", author=Author.objects.create(name="b"))
    Event.objects.all().delete()
    Book.objects.filter(pk=other.pk).delete()
    assert types() == ["library.book.deleted"]


def test_delete_of_a_deferred_queryset_still_sends_every_registered_field(author_with_books):
    expected = {b.pk: book_fields(b) for b in Book.objects.all()}
    with CaptureQueriesContext(connection) as queries:
        Book.objects.only("id").delete()
    events = outbox()
    assert {e["data"]["pk"]: e["data"]["fields"] for e in events} == expected
    # One query loads the deferred columns of all rows and one their tags, not one per row.
    selects = [q["sql"] for q in queries if q["sql"].startswith("SELECT")]
    assert len(selects) == 3, selects  # the collector's, then hookpost's two


def test_delete_of_one_deferred_instance_sends_its_registered_fields(author_with_books):
    lean = Book.objects.only("id").filter(author=author_with_books).first()
    expected = book_fields(Book.objects.get(pk=lean.pk))
    lean.delete()
    [event] = outbox()
    assert event["data"]["fields"] == expected


def test_delete_snapshots_many_to_many_pks_and_does_not_crash(author_with_books):
    tags = [Tag.objects.create(name=n) for n in ("a", "b")]
    book = author_with_books.books.first()
    book.tags.set(tags)
    Event.objects.all().delete()
    book.delete()
    [event] = [e for e in outbox() if e["type"] == "library.book.deleted"]
    assert sorted(event["data"]["fields"]["tags"]) == sorted(t.pk for t in tags)


def test_bulk_delete_of_1000_rows_writes_1000_events_in_a_handful_of_inserts():
    author = Author.objects.create(name="many")
    Book.objects.bulk_create([Book(title=f"b{i}", author=author) for i in range(1000)])
    Event.objects.all().delete()
    with CaptureQueriesContext(connection) as queries:
        deleted, _ = Book.objects.all().delete()
    assert deleted == 1000
    # SQLite: one prepared INSERT run by executemany; PostgreSQL: one COPY. Django logs either
    # as a single statement; a row-at-a-time capture would log 1,000.
    writes = [
        q["sql"]
        for q in queries
        if "hookpost_event" in q["sql"] and q["sql"].split(": ")[-1].startswith(("INSERT", "COPY"))
    ]
    assert Event.objects.filter(type="library.book.deleted").count() == 1000
    assert 1 <= len(writes) <= 5, writes
    assert len({e["data"]["pk"] for e in outbox()}) == 1000


def test_unregistered_model_keeps_django_fast_delete(author_with_books, django_assert_num_queries):
    for book in author_with_books.books.all():
        Review.objects.bulk_create([Review(book=book, rating=r) for r in range(5)])
    # Review has no receivers: no SELECT of reviews, one DELETE for all of them.
    with CaptureQueriesContext(connection) as queries:
        Book.objects.all().delete()
    review_sql = [q["sql"] for q in queries if "library_review" in q["sql"]]
    assert len(review_sql) == 1 and review_sql[0].startswith("DELETE"), review_sql
    assert Review.objects.count() == 0


def test_unregistered_model_delete_is_a_single_fast_delete(author_with_books):
    Review.objects.bulk_create([Review(book=author_with_books.books.first(), rating=5)] * 3)
    with CaptureQueriesContext(connection) as queries:
        Review.objects.all().delete()
    assert [q["sql"].split()[0] for q in queries] == ["DELETE"]


def test_unregistering_disconnects_every_receiver_of_the_model(isolated_registry):
    from django.db.models.signals import post_init, post_save

    assert pre_delete.has_listeners(Book) and post_init.has_listeners(Book)
    from library.models import Bestseller

    assert pre_delete.has_listeners(Bestseller)
    isolated_registry.unregister(Book)
    for signal in (pre_delete, post_delete, post_save, post_init):
        assert not signal.has_listeners(Book)
        assert not signal.has_listeners(Bestseller)
    Book.objects.create(title="t", author=Author.objects.create(name="a")).delete()
    assert types() == ["library.author.created"]


def test_actions_decide_which_receivers_are_connected(isolated_registry):
    from django.db.models.signals import post_init, post_save

    # Tag is registered in settings for created and deleted, without when_changed.
    assert post_save.has_listeners(Tag) and pre_delete.has_listeners(Tag)
    assert not post_init.has_listeners(Tag)
    isolated_registry.unregister(Tag)
    isolated_registry.register(Tag, actions=["created"], fields=["name"])
    assert not pre_delete.has_listeners(Tag) and not post_delete.has_listeners(Tag)


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_retrying_a_delete_that_failed_in_its_post_phase_emits_each_row_once(author_with_books):
    queryset = Book.objects.filter(author=author_with_books)
    pks = sorted(queryset.values_list("pk", flat=True))
    calls = []

    def fail_once(sender, instance, **kwargs):
        calls.append(instance.pk)
        if len(calls) == 1:
            raise RuntimeError("receiver failed")

    post_delete.connect(fail_once, sender=Book, dispatch_uid="test-fail-once")
    try:
        with pytest.raises(RuntimeError):
            queryset.delete()
        assert types() == []  # the failed delete rolled back its events
        queryset.delete()
    finally:
        post_delete.disconnect(sender=Book, dispatch_uid="test-fail-once")
    assert sorted(e["data"]["pk"] for e in outbox()) == pks


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_retrying_a_delete_that_failed_in_its_pre_phase_emits_each_row_once(author_with_books):
    queryset = Book.objects.filter(author=author_with_books)
    pks = sorted(queryset.values_list("pk", flat=True))
    calls = []

    def fail_on_second(sender, instance, **kwargs):
        calls.append(instance.pk)
        if len(calls) == 2:
            raise RuntimeError("receiver failed")

    pre_delete.connect(fail_on_second, sender=Book, dispatch_uid="test-fail-second")
    try:
        with pytest.raises(RuntimeError):
            queryset.delete()
        queryset.delete()
    finally:
        pre_delete.disconnect(sender=Book, dispatch_uid="test-fail-second")
    assert sorted(e["data"]["pk"] for e in outbox()) == pks


def test_post_delete_sent_by_hand_writes_a_single_event(author_with_books):
    book = author_with_books.books.first()
    post_delete.send(sender=Book, instance=book, using="default", origin=None)
    [event] = outbox()
    assert event["type"] == "library.book.deleted" and event["data"]["pk"] == book.pk


# --- payload problems ---------------------------------------------------------------------------


def _bad_serializer(instance):
    return {"title": instance.name, "shelf": object()}


def test_unencodable_payload_is_recorded_as_invalid_without_failing_the_save(isolated_registry):
    isolated_registry.unregister(Author)
    isolated_registry.register(Author, fields="__all__", serializer=_bad_serializer)
    seen = []
    payload_invalid.connect(lambda **kw: seen.append(kw), weak=False, dispatch_uid="t-invalid")
    try:
        Author.objects.create(name="x")
    finally:
        payload_invalid.disconnect(dispatch_uid="t-invalid")
    assert Author.objects.count() == 1
    event = Event.objects.get()
    assert event.error.startswith("cannot encode data.fields.shelf as JSON: value of type object")
    assert not event.is_valid and Event.objects.valid().count() == 0
    # What could be kept is kept, with a repr standing in for the bad value.
    assert json.loads(event.payload)["data"]["fields"]["title"] == "x"
    assert seen and seen[0]["event_type"] == "library.author.created"


def test_serializer_exception_is_recorded_as_invalid_with_its_message(isolated_registry):
    def broken(instance):
        raise KeyError("missing")

    isolated_registry.unregister(Author)
    isolated_registry.register(Author, fields="__all__", serializer=broken)
    author = Author.objects.create(name="x")
    author.delete()  # the user's delete must not fail either
    assert [e.error for e in Event.objects.order_by("id")] == ["KeyError: 'missing'"] * 2


@override_settings(HOOKPOST={"STRICT": True})
@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_strict_mode_raises_and_the_change_rolls_back(isolated_registry):
    isolated_registry.unregister(Author)
    isolated_registry.register(Author, fields="__all__", serializer=_bad_serializer)
    with pytest.raises(PayloadError), transaction.atomic():
        Author.objects.create(name="x")
    assert Author.objects.count() == 0 and Event.objects.count() == 0


def test_serializer_class_with_data_attribute_is_used_like_a_drf_serializer(isolated_registry):
    class AuthorSerializer:
        def __init__(self, instance):
            self.data = {"display": instance.name.upper()}

    isolated_registry.unregister(Author)
    isolated_registry.register(Author, fields="__all__", serializer=AuthorSerializer)
    author = Author.objects.create(name="x")
    [event] = outbox()
    assert event["data"] == {"model": "library.author", "pk": author.pk, "fields": {"display": "X"}}


# --- batch bookkeeping ----------------------------------------------------------------------


def test_a_failed_delete_leaves_no_batch_behind_once_its_origin_is_gone(author_with_books):
    import gc

    from hookpost import capture

    def fail(sender, instance, **kwargs):
        raise RuntimeError("pre phase fails")

    pre_delete.connect(fail, sender=Book, dispatch_uid="test-fail-pre")
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            Book.objects.filter(author=author_with_books).delete()
    finally:
        pre_delete.disconnect(sender=Book, dispatch_uid="test-fail-pre")
    gc.collect()
    assert capture._state.batches == {}


def test_a_completed_delete_leaves_no_batch_behind(author_with_books):
    from hookpost import capture

    author_with_books.delete()
    assert capture._state.batches == {}


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_deletes_in_concurrent_threads_each_write_their_own_events():
    import threading

    authors = [Author.objects.create(name=f"t{i}") for i in range(4)]
    for author in authors:
        Book.objects.bulk_create([Book(title=f"{author.name}-{j}", author=author) for j in range(50)])
    Event.objects.all().delete()
    barrier = threading.Barrier(len(authors))
    errors = []

    def delete_books(author):
        try:
            barrier.wait()
            with transaction.atomic():
                Book.objects.filter(author=author).delete()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=delete_books, args=(a,)) for a in authors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    titles = sorted(e["data"]["fields"]["title"] for e in outbox())
    assert titles == sorted(f"t{i}-{j}" for i in range(4) for j in range(50))


# --- proxy models ---------------------------------------------------------------------------


def test_changes_made_through_a_proxy_are_events_of_the_registered_model(author_with_books):
    from library.models import Bestseller

    proxy = Bestseller.objects.create(title="via proxy", author=author_with_books)
    Bestseller.objects.filter(pk=proxy.pk).delete()
    events = outbox()
    assert [e["type"] for e in events] == ["library.book.created", "library.book.deleted"]
    assert events[1]["data"]["fields"]["title"] == "via proxy"


def test_a_registered_proxy_emits_its_own_events_only(isolated_registry, author_with_books):
    from library.models import Bestseller

    isolated_registry.register(Bestseller, fields=["title"], actions=["deleted"])
    Bestseller.objects.filter(author=author_with_books).delete()
    assert set(types()) == {"library.bestseller.deleted"}
    isolated_registry.unregister(Bestseller)
    Bestseller.objects.create(title="again", author=author_with_books).delete()
    assert types()[-2:] == ["library.book.created", "library.book.deleted"]


def test_cascade_skip_treats_a_proxy_origin_as_the_same_model(isolated_registry, author_with_books):
    from library.models import Bestseller

    isolated_registry.unregister(Book)
    isolated_registry.register(Book, fields=["title"], cascade="skip")
    Bestseller.objects.filter(author=author_with_books).delete()
    assert types() == ["library.book.deleted"] * 3


def test_cascaded_delete_reads_many_to_many_links_in_one_query_not_one_per_row():
    author = Author.objects.create(name="prolific")
    tags = [Tag.objects.create(name=f"t{i}") for i in range(3)]
    books = Book.objects.bulk_create([Book(title=f"b{i}", author=author) for i in range(40)])
    for i, book in enumerate(books):
        book.tags.set(tags[: i % 4])
    expected = {b.pk: sorted(t.pk for t in tags[: i % 4]) for i, b in enumerate(books)}
    Event.objects.all().delete()
    with CaptureQueriesContext(connection) as queries:
        author.delete()
    link_reads = [
        q["sql"] for q in queries if q["sql"].startswith("SELECT") and "library_book_tags" in q["sql"]
    ]
    assert len(link_reads) == 1, link_reads
    got = {
        e["data"]["pk"]: sorted(e["data"]["fields"]["tags"])
        for e in outbox()
        if e["type"] == "library.book.deleted"
    }
    assert got == expected


def test_a_deleted_instance_reads_its_own_links():
    book = Book.objects.create(title="solo", author=Author.objects.create(name="a"))
    book.tags.set([Tag.objects.create(name="x")])
    Event.objects.all().delete()
    tag_pk = Tag.objects.get().pk
    book.delete()
    [event] = [e for e in outbox() if e["type"] == "library.book.deleted"]
    assert event["data"]["fields"]["tags"] == [tag_pk]
