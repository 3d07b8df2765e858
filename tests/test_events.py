"""Events: the JSON encoder, the envelope, message ids and event-type patterns."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
import zoneinfo

import pytest
from django.core.files.base import ContentFile
from django.utils.translation import gettext_lazy

from hookpost import events
from hookpost.exceptions import PayloadError
from library.models import Author, Book


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (decimal.Decimal("12.50"), '"12.50"'),
        (decimal.Decimal("1E+2"), '"1E+2"'),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), '"12345678-1234-5678-1234-567812345678"'),
        (dt.datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=dt.UTC), '"2026-01-02T03:04:05.000600Z"'),
        (
            dt.datetime(2026, 1, 2, 12, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
            '"2026-01-02T11:00:00Z"',
        ),
        (dt.datetime(2026, 1, 2, 3, 4, 5), '"2026-01-02T03:04:05"'),
        (dt.date(2026, 1, 2), '"2026-01-02"'),
        (dt.time(13, 14, 15), '"13:14:15"'),
        (dt.timedelta(days=1, seconds=5), '"P1DT00H00M05S"'),
        (gettext_lazy("lazy"), '"lazy"'),
        (b"\x00\xff", '"AP8="'),
        ("été ☃", '"été ☃"'),
    ],
)
def test_encoder_handles_the_types_model_fields_hold(value, encoded):
    assert events.encode({"v": value}) == '{"v":' + encoded + "}"


def test_encoder_writes_a_file_as_its_name():
    book = Book(title="t", cover="covers/a.png")
    assert events.encode({"cover": book.cover}) == '{"cover":"covers/a.png"}'
    assert events.encode({"cover": Book(title="t").cover}) == '{"cover":null}'


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"data": {"fields": {"shelf": object()}}}, "data.fields.shelf"),
        ({"data": [1, 2, {"x": {1, 2}}]}, r"data\[2\]\.x"),
        ({"data": {"when": float("nan")}}, "data.when"),
        ({"data": {(1, 2): "tuple key"}}, r"data\[\(1, 2\)\] \(key\)"),
        ({"data": ContentFile(b"x")}, "data"),
    ],
)
def test_encoder_refuses_anything_else_naming_the_path(payload, path):
    with pytest.raises(PayloadError, match=f"cannot encode {path} as JSON"):
        events.encode(payload)


def test_payload_error_names_the_type_and_hints_at_a_serializer():
    with pytest.raises(PayloadError) as info:
        events.encode({"a": Author(name="x")})
    assert info.value.path == "a"
    assert info.value.value_type == "Author"
    assert "serializer" in str(info.value)
    assert isinstance(info.value, TypeError)


def test_lossy_encoding_keeps_what_it_can_and_reprs_the_rest():
    text = events.encode_lossy({"ok": decimal.Decimal("1.5"), "bad": {1}})
    assert json.loads(text) == {"ok": "1.5", "bad": "{1}"}


def test_envelope_has_type_timestamp_data_and_origin_only_when_given():
    when = dt.datetime(2026, 11, 23, 20, 0, tzinfo=dt.UTC)
    assert events.build_envelope("a.b", when, {"x": 1}) == {
        "type": "a.b",
        "timestamp": "2026-11-23T20:00:00Z",
        "data": {"x": 1},
    }
    origin = {"model": "library.author", "pk": 1, "cascade": True}
    assert events.build_envelope("a.b", when, {}, origin)["origin"] == origin


def test_message_ids_are_unique_sortable_in_creation_order_and_dotless():
    ids = [events.new_message_id() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert ids == sorted(ids)
    assert all(i.startswith("msg_") and len(i) == 30 and "." not in i for i in ids)
    assert all(set(i[4:]) <= set("0123456789abcdefghjkmnpqrstvwxyz") for i in ids)


@pytest.mark.parametrize(
    ("pattern", "event_type", "matches"),
    [
        ("*", "library.book.deleted", True),
        ("library.book.deleted", "library.book.deleted", True),
        ("library.book.deleted", "library.book.created", False),
        ("library.book.*", "library.book.deleted", True),
        ("library.book.*", "library.author.deleted", False),
        ("library.*", "library.book.deleted", True),
        ("*.deleted", "library.book.deleted", True),
        ("*.deleted", "library.book.created", False),
        ("library.b*k.created", "library.book.created", True),
        ("library.book", "library.book.created", False),
    ],
)
def test_type_patterns_match_with_star_as_any_run_of_characters(pattern, event_type, matches):
    assert events.type_matches(pattern, event_type) is matches


@pytest.mark.parametrize("pattern", ["", "a b", "a..b", "a.[b]", "a.?", ".a", 3])
def test_malformed_type_patterns_are_refused(pattern):
    with pytest.raises(ValueError, match="invalid event type pattern"):
        events.validate_type_pattern(pattern)


def test_describe_origin_tells_direct_from_cascaded_deletes():
    author, book = Author(pk=1, name="a"), Book(pk=2, title="b")
    assert events.describe_origin(author, author) == {
        "model": "library.author",
        "pk": 1,
        "cascade": False,
    }
    assert events.describe_origin(author, book)["cascade"] is True
    assert events.describe_origin(Book.objects.all(), book) == {
        "model": "library.book",
        "pk": None,
        "cascade": False,
    }
    assert events.describe_origin(Author.objects.all(), book)["cascade"] is True
    assert events.describe_origin(None, book) is None


def test_ids_made_in_bulk_keep_growing_across_calls():
    first = events.new_message_ids(3000)
    second = events.new_message_ids(3000)
    both = first + second
    assert both == sorted(both)
    assert len(set(both)) == 6000


def test_id_digits_encode_the_creation_time_in_milliseconds():
    import time

    before = time.time_ns() // 1_000_000
    msg_id = events.new_message_id()
    after = time.time_ns() // 1_000_000
    value = 0
    for digit in msg_id[4:]:
        value = value * 32 + "0123456789abcdefghjkmnpqrstvwxyz".index(digit)
    assert before <= (value >> 2) >> 80 <= after


def test_frame_encodes_exactly_what_the_envelope_encodes():
    when = dt.datetime(2026, 11, 23, 20, 0, 1, 5, tzinfo=dt.UTC)
    origin = {"model": "library.author", "pk": 3, "cascade": True}
    data = {"model": "library.book", "pk": 1, "fields": {"title": 'quote " and ☃'}}
    for frame_origin in (None, origin):
        frame = events.Frame.build("library.book.deleted", when, frame_origin)
        expected = events.encode(events.build_envelope("library.book.deleted", when, data, frame_origin))
        assert frame.encode(data) == expected
        assert json.loads(frame.encode(data)) == frame.envelope(data)


def test_circular_data_is_a_payload_error_not_a_crash():
    data: dict[str, object] = {"a": 1}
    data["self"] = data
    with pytest.raises(PayloadError, match="circular"):
        events.encode_data(data)


def test_snapshot_converts_values_of_unexpected_types_leniently(isolated_registry):
    isolated_registry.unregister(Book)
    spec = isolated_registry.register(Book, fields=["title", "price", "published", "uid", "cover"])
    book = Book(title="t", price="9.99", published=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC))
    book.uid = "not-a-uuid-object"
    fields = events.snapshot(book, spec)["fields"]
    assert fields == {
        "title": "t",
        "price": "9.99",
        "published": "2026-01-02",  # a DateField stores the date: so does the payload
        "uid": "not-a-uuid-object",
        "cover": None,
    }
