"""Transactions: the outbox holds exactly the committed changes, whatever was rolled back around them.

Hypothesis writes programs: transactions on either database, each a list of
creates, updates and deletes of the example models (``Author`` → ``Book`` with a
cascading foreign key, ``Book`` ↔ ``Tag`` many-to-many), nested savepoints, deletes
that a ``pre_delete`` receiver refuses half-way, and endings that commit, raise or
``set_rollback``. A plain-Python model runs the same program alongside and says
which events the committed work must have left, in order, with their data; the
outbox must hold exactly those: nothing for rolled-back work, every cascaded book
delete, no duplicate.

What the example project registers: ``Author`` (every action, fields name and born)
and ``Book`` (every action, updates only when title or price changed) in
``example/library/apps.py``, ``Tag`` (created and deleted) in its settings.
Many-to-many changes send no event of their own (a book's ``tags`` ride along in its
next event), and ``QuerySet.update`` sends no signal, so it leaves no event either.

Two variants: real commits (``transaction=True``: each transaction commits or rolls
back on the database) and savepoints inside the test's transaction (cheaper, so
more examples). Objects are fetched afresh for each operation, as each request of
a web application would.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.db.models.signals import pre_delete
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookpost.models import Event
from library.models import Author, Book, Tag
from tests.reliability.conftest import report, size

ALIASES = ("default", "other")
# Programs run per test, and what they did: events checked, blocks rolled back, deletes refused.
RUN: Counter[str] = Counter()
DONE: Counter[str] = Counter()


class Refused(Exception):
    """What the test's ``pre_delete`` receiver raises to stop a delete half-way."""


class Abort(Exception):
    """Raised by a program to roll its transaction (or savepoint) back."""


def refuse_marked(sender: object, instance: Book, **kwargs: Any) -> None:
    # Connected after hookpost's own receivers, so hookpost has already captured the
    # book (and perhaps others of the same delete) when the delete fails.
    if instance.isbn == "FAIL":
        raise Refused(instance.pk)


@pytest.fixture(autouse=True)
def refusing_deletes():
    pre_delete.connect(refuse_marked, sender=Book, weak=False, dispatch_uid="reliability-refuse")
    yield
    pre_delete.disconnect(sender=Book, dispatch_uid="reliability-refuse")


@pytest.fixture(scope="session", autouse=True)
def _report_sequences():
    """Record how many programs ran and what they did, once (transactional tests run last)."""
    yield
    if RUN:
        report("transactions", programs=dict(RUN), total=sum(RUN.values()), **DONE)
        print(f"\ntransaction programs run: {dict(RUN)}, {dict(DONE)}")


# --- the model ------------------------------------------------------------------------------------

# An expected event: (type, pk, data fields that matter, cascaded?).
Expected = tuple[str, int, tuple[tuple[str, Any], ...], bool | None]


def author_data(name: str) -> tuple[tuple[str, Any], ...]:
    return (("name", name),)


def book_data(book: dict[str, Any], tags: list[int]) -> tuple[tuple[str, Any], ...]:
    price = None if book["price"] is None else Decimal(book["price"])
    return (
        ("title", book["title"]),
        ("author", book["author"]),
        ("isbn", book["isbn"]),
        ("price", price),
        ("tags", tuple(sorted(tags))),
    )


@dataclass
class State:
    """What one database holds, as the model believes."""

    authors: dict[int, str] = field(default_factory=dict)
    books: dict[int, dict[str, Any]] = field(default_factory=dict)
    tags: dict[int, str] = field(default_factory=dict)
    links: set[tuple[int, int]] = field(default_factory=set)

    def tags_of(self, book: int) -> list[int]:
        return [tag for b, tag in self.links if b == book]

    def pick(self, table: dict[int, Any], index: int) -> int | None:
        keys = sorted(table)
        return keys[index % len(keys)] if keys else None

    def drop_book(self, pk: int, cascade: bool) -> Expected:
        expected = ("library.book.deleted", pk, book_data(self.books[pk], self.tags_of(pk)), cascade)
        del self.books[pk]
        self.links = {(b, t) for b, t in self.links if b != pk}
        return expected


class Program:
    """Runs a generated program on the databases and on the model side by side."""

    def __init__(self) -> None:
        self.state = {alias: State() for alias in ALIASES}
        # Per database: committed groups of events, one group per operation, in order.
        self.committed: dict[str, list[list[Expected]]] = {alias: [] for alias in ALIASES}
        self._pending: list[list[list[Expected]]] = []
        self._tag_names = itertools.count()

    # -- blocks --

    @contextmanager
    def block(self, alias: str, ending: str) -> Iterator[None]:
        """An atomic block (a transaction, or a savepoint when nested) that ends as ``ending`` says."""
        saved = copy.deepcopy(self.state[alias])
        self._pending.append([])
        try:
            with transaction.atomic(using=alias):
                yield
                if ending == "raise":
                    raise Abort
                if ending == "set_rollback":
                    transaction.set_rollback(True, using=alias)
        except Abort:
            pass
        groups = self._pending.pop()
        DONE["blocks_committed" if ending == "commit" else "blocks_rolled_back"] += 1
        if ending == "commit":
            if self._pending:
                self._pending[-1].extend(groups)
            else:
                self.committed[alias].extend(groups)
        else:
            self.state[alias] = saved

    def emit(self, alias: str, *events: Expected) -> None:
        if not events:
            return
        target = self._pending[-1] if self._pending else self.committed[alias]
        target.append(list(events))

    # -- running --

    def seed(self) -> None:
        """Commit a few authors with books, and tags on them, on each database: targets for the program."""
        for alias in ALIASES:
            with self.block(alias, "commit"):
                for n in range(3):
                    self.op_create_author(alias, f"author {n}")
                    for i in range(2):
                        self.op_create_book(alias, n, f"book {n}.{i}", Decimal("9.99") if i else None)
                for _ in range(2):
                    self.op_create_tag(alias)
                for book, tag in ((0, 0), (0, 1), (3, 1)):
                    self.op_tag(alias, book, tag, True)

    def run(self, program: list[Any]) -> None:
        self.seed()
        for alias, items, ending in program:
            with self.block(alias, ending):
                self.items(alias, items)

    def items(self, alias: str, items: list[Any]) -> None:
        for item in items:
            if item[0] == "savepoint":
                _, inner, ending = item
                with self.block(alias, ending):
                    self.items(alias, inner)
            else:
                getattr(self, f"op_{item[0]}")(alias, *item[1:])

    # -- operations: each on the database, then on the model --

    def op_create_author(self, db: str, name: str) -> None:
        author = Author.objects.using(db).create(name=name)
        self.state[db].authors[author.pk] = name
        self.emit(db, ("library.author.created", author.pk, author_data(name), None))

    def op_update_author(self, db: str, index: int, name: str, only_name: bool) -> None:
        s = self.state[db]
        pk = s.pick(s.authors, index)
        if pk is None:
            return
        author = Author.objects.using(db).get(pk=pk)
        author.name = name
        author.save(update_fields=["name"] if only_name else None)
        s.authors[pk] = name
        # Author has no when_changed: every save is an update, a no-op one included.
        self.emit(db, ("library.author.updated", pk, author_data(name), None))

    def _cascade(self, db: str, authors: list[int]) -> list[Expected]:
        s = self.state[db]
        events = [s.drop_book(b, True) for b in sorted(s.books) if s.books[b]["author"] in authors]
        for pk in authors:
            events.append(("library.author.deleted", pk, author_data(s.authors.pop(pk)), False))
        return events

    def op_delete_author(self, db: str, index: int) -> None:
        s = self.state[db]
        pk = s.pick(s.authors, index)
        if pk is None:
            return
        Author.objects.using(db).get(pk=pk).delete()
        self.emit(db, *self._cascade(db, [pk]))

    def op_delete_authors(self, db: str, indexes: list[int]) -> None:
        s = self.state[db]
        pks = sorted({pk for i in indexes if (pk := s.pick(s.authors, i)) is not None})
        Author.objects.using(db).filter(pk__in=pks).delete()
        self.emit(db, *self._cascade(db, pks))

    def op_create_book(self, db: str, index: int, title: str, price: Decimal | None) -> None:
        s = self.state[db]
        author = s.pick(s.authors, index)
        if author is None:
            return
        book = Book.objects.using(db).create(title=title, author_id=author, price=price)
        s.books[book.pk] = {"title": title, "author": author, "isbn": "", "price": price}
        self.emit(db, ("library.book.created", book.pk, book_data(s.books[book.pk], []), None))

    def op_update_book(
        self, db: str, index: int, title: str | None, price: Decimal | None, isbn: str | None
    ) -> None:
        s = self.state[db]
        pk = s.pick(s.books, index)
        if pk is None:
            return
        book = Book.objects.using(db).get(pk=pk)
        before = dict(s.books[pk])
        for name, value in (("title", title), ("price", price), ("isbn", isbn)):
            if value is not None:
                setattr(book, name, value)
                s.books[pk][name] = value
        book.save()
        after = s.books[pk]
        if before["title"] != after["title"] or before["price"] != after["price"]:
            self.emit(db, ("library.book.updated", pk, book_data(after, s.tags_of(pk)), None))

    def op_save_isbn_only(self, db: str, index: int, title: str, isbn: str) -> None:
        s = self.state[db]
        pk = s.pick(s.books, index)
        if pk is None:
            return
        book = Book.objects.using(db).get(pk=pk)
        # The title changes on the instance only: update_fields leaves it out, so nothing
        # registered as "when changed" is saved, and no event is due.
        book.title, book.isbn = title, isbn
        book.save(update_fields=["isbn"])
        s.books[pk]["isbn"] = isbn

    def op_update_titles_in_bulk(self, db: str, index: int, title: str) -> None:
        s = self.state[db]
        pk = s.pick(s.books, index)
        if pk is None:
            return
        # QuerySet.update sends no signal: no event (the documented way is hookpost.emit).
        Book.objects.using(db).filter(pk=pk).update(title=title)
        s.books[pk]["title"] = title

    def op_delete_book(self, db: str, index: int) -> None:
        s = self.state[db]
        pk = s.pick(s.books, index)
        if pk is None:
            return
        Book.objects.using(db).get(pk=pk).delete()
        self.emit(db, s.drop_book(pk, False))

    def op_delete_books(self, db: str, indexes: list[int]) -> None:
        s = self.state[db]
        pks = sorted({pk for i in indexes if (pk := s.pick(s.books, i)) is not None})
        Book.objects.using(db).filter(pk__in=pks).delete()
        self.emit(db, *[s.drop_book(pk, False) for pk in pks])

    def op_create_tag(self, db: str) -> None:
        tag = Tag.objects.using(db).create(name=f"tag-{next(self._tag_names)}")
        self.state[db].tags[tag.pk] = tag.name
        self.emit(db, ("library.tag.created", tag.pk, (("name", tag.name),), None))

    def op_tag(self, db: str, book_index: int, tag_index: int, add: bool) -> None:
        s = self.state[db]
        book, tag = s.pick(s.books, book_index), s.pick(s.tags, tag_index)
        if book is None or tag is None:
            return
        related = Book.objects.using(db).get(pk=book).tags
        if add:
            related.add(tag)
            s.links.add((book, tag))
        else:
            related.remove(tag)
            s.links.discard((book, tag))

    def op_delete_tag(self, db: str, index: int) -> None:
        s = self.state[db]
        pk = s.pick(s.tags, index)
        if pk is None:
            return
        Tag.objects.using(db).get(pk=pk).delete()
        # The books lose a link, which is no change of theirs: only the tag's event.
        self.emit(db, ("library.tag.deleted", pk, (("name", s.tags.pop(pk)),), False))
        s.links = {(b, t) for b, t in s.links if t != pk}

    def op_refused_delete(self, db: str, kind: str, index: int) -> None:
        """A delete that a pre_delete receiver refuses after hookpost captured part of it."""
        s = self.state[db]
        pk = s.pick(s.books, index)
        if pk is None:
            return
        author = s.books[pk]["author"]
        try:
            with transaction.atomic(using=db):
                Book.objects.using(db).filter(pk=pk).update(isbn="FAIL")
                if kind == "author":
                    Author.objects.using(db).get(pk=author).delete()
                elif kind == "authors":
                    Author.objects.using(db).filter(pk=author).delete()
                elif kind == "book":
                    Book.objects.using(db).get(pk=pk).delete()
                else:
                    Book.objects.using(db).filter(author_id=author).delete()
        except Refused:
            DONE["deletes_refused"] += 1
        else:  # pragma: no cover - the receiver always refuses
            pytest.fail("the marked delete went through")


# --- strategies -----------------------------------------------------------------------------------

text = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=12)
prices = st.one_of(st.none(), st.integers(0, 99_999).map(lambda cents: Decimal(cents).scaleb(-2)))
index = st.integers(0, 20)
operations = st.one_of(
    st.tuples(st.just("create_author"), text),
    st.tuples(st.just("update_author"), index, text, st.booleans()),
    st.tuples(st.just("delete_author"), index),
    st.tuples(st.just("delete_authors"), st.lists(index, max_size=3)),
    st.tuples(st.just("create_book"), index, text, prices),
    st.tuples(
        st.just("update_book"),
        index,
        st.one_of(st.none(), text, st.just("same title")),
        st.one_of(st.none(), prices.filter(lambda p: p is not None)),
        st.one_of(st.none(), st.text("0123456789-", max_size=13)),
    ),
    st.tuples(st.just("save_isbn_only"), index, text, st.text("0123456789", max_size=13)),
    st.tuples(st.just("update_titles_in_bulk"), index, text),
    st.tuples(st.just("delete_book"), index),
    st.tuples(st.just("delete_books"), st.lists(index, max_size=4)),
    st.tuples(st.just("create_tag")),
    st.tuples(st.just("tag"), index, index, st.booleans()),
    st.tuples(st.just("delete_tag"), index),
    st.tuples(st.just("refused_delete"), st.sampled_from(["author", "authors", "book", "books"]), index),
)
# Most operations commit; enough roll back (by exception or set_rollback) to matter.
endings = st.sampled_from(["commit", "commit", "commit", "raise", "set_rollback"])
items = st.recursive(
    operations,
    lambda inner: st.tuples(st.just("savepoint"), st.lists(inner, max_size=5), endings),
    max_leaves=14,
)
programs = st.lists(
    st.tuples(st.sampled_from(ALIASES), st.lists(items, min_size=1, max_size=8), endings),
    min_size=1,
    max_size=6,
)


# --- reading the outbox ---------------------------------------------------------------------------


def actual(alias: str) -> list[Expected]:
    rows = []
    for event in Event.objects.using(alias).order_by("id"):
        data = json.loads(event.payload)["data"]
        fields = data["fields"]
        if not event.type.startswith("library.book."):
            shown = (("name", fields["name"]),)
        else:
            price = None if fields["price"] is None else Decimal(fields["price"])
            shown = (
                ("title", fields["title"]),
                ("author", fields["author"]),
                ("isbn", fields["isbn"]),
                ("price", price),
                ("tags", tuple(sorted(fields["tags"]))),
            )
        cascade = None if event.origin is None else event.origin["cascade"]
        assert event.error == "", event.error
        rows.append((event.type, data["pk"], shown, cascade))
    return rows


def assert_outbox_matches(program: Program) -> None:
    for alias in ALIASES:
        groups = program.committed[alias]
        got = actual(alias)
        assert len(got) == sum(len(g) for g in groups), (alias, got, groups)
        DONE["events_checked"] += len(got)
        # In operation order; within one delete, Django picks the order (books before authors).
        position = 0
        for group in groups:
            assert sorted(got[position : position + len(group)], key=repr) == sorted(group, key=repr)
            position += len(group)


CONFIG = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def clean() -> None:
    """Start an example on empty tables (transaction=True tests keep rows between examples)."""
    for alias in ALIASES:
        with transaction.atomic(using=alias):
            Tag.objects.using(alias).all().delete()
            Book.objects.using(alias).all().delete()
            Author.objects.using(alias).all().delete()
            Event.objects.using(alias).all().delete()


@pytest.mark.django_db(transaction=True, databases=list(ALIASES))
@settings(CONFIG, max_examples=size(ci=40, soak=1500))
@given(program=programs)
def test_committed_transactions_leave_exactly_their_events_in_the_outbox(program):
    RUN["real commits"] += 1
    clean()
    runner = Program()
    runner.run(program)
    assert_outbox_matches(runner)


@pytest.mark.django_db(databases=list(ALIASES))
@settings(CONFIG, max_examples=size(ci=80, soak=3000))
@given(program=programs)
def test_released_savepoints_leave_exactly_their_events_and_rolled_back_ones_none(program):
    RUN["savepoints"] += 1
    runner = Program()
    # The whole example is one savepoint per database, rolled back after it, so the next
    # starts clean. Inside it the program's "transactions" are savepoints: released
    # ones reach the enclosing transaction, as a commit would.
    with transaction.atomic(using="default"), transaction.atomic(using="other"):
        runner.run(program)
        assert_outbox_matches(runner)
        for alias in ALIASES:
            transaction.set_rollback(True, using=alias)


# --- found by this suite: retrying on the same instance -----------------------------------------
#
# The programs above fetch objects afresh for every operation. Retrying on the *same*
# Python object after a failure, as a retry loop does, finds two ways for the outbox to
# drift from what was committed.


@pytest.mark.django_db
def test_a_delete_retried_on_the_same_instance_writes_only_the_rows_it_removed():
    author, other = Author.objects.create(name="a"), Author.objects.create(name="b")
    moved = Book.objects.create(title="moved away", author=author, isbn="FAIL")
    kept = Book.objects.create(title="deleted with the author", author=author)
    Event.objects.all().delete()
    author_pk, moved_pk, kept_pk = author.pk, moved.pk, kept.pk

    with pytest.raises(Refused), transaction.atomic():
        author.delete()  # hookpost captured `moved`, then the receiver refused the delete
    # The application deals with the refusal: the book goes to another author.
    Book.objects.filter(pk=moved_pk).update(author=other, isbn="")
    with transaction.atomic():
        author.delete()  # the same instance, again

    assert Book.objects.filter(pk=moved_pk).exists()
    assert sorted((e.type, json.loads(e.payload)["data"]["pk"]) for e in Event.objects.all()) == [
        ("library.author.deleted", author_pk),
        ("library.book.deleted", kept_pk),
    ]


class Conflict(Exception):
    """Stands for a serialization failure or deadlock that makes an application retry."""


@pytest.mark.django_db
def test_a_save_retried_after_a_rollback_still_emits_its_update():
    author = Author.objects.create(name="a")
    Book.objects.create(title="old", author=author)
    Event.objects.all().delete()
    book = Book.objects.get()
    book.title = "new"
    for attempt in range(2):
        try:
            with transaction.atomic():
                book.save()
                if attempt == 0:
                    raise Conflict
        except Conflict:
            continue
    assert Book.objects.get().title == "new"
    assert [e.type for e in Event.objects.all()] == ["library.book.updated"]
