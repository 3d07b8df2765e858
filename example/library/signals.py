"""Custom signals of the library app, turned into webhooks by hookpost."""

from django.dispatch import Signal

#: Sent when a reader borrows a book: ``book`` (Book), ``reader`` (str).
book_borrowed = Signal()


def borrowed_payload(sender, book, reader, **kwargs):
    """The ``library.book.borrowed`` event data."""
    return {"book": book.pk, "title": book.title, "reader": reader}
