"""What the mirror project keeps: a log of the books the library deleted."""

from django.db import models


class RemovedBook(models.Model):
    """A book the library project deleted, recorded from its ``library.book.deleted`` webhook."""

    book_pk = models.BigIntegerField(help_text="The book's pk in the library project.")
    title = models.CharField(max_length=300)
    deleted_with = models.CharField(
        max_length=200,
        blank=True,
        help_text='What took the book along (e.g. "library.author 1"); blank when it was deleted itself.',
    )
    webhook_id = models.CharField(max_length=255, help_text="The webhook-id it arrived with.")
    removed_at = models.DateTimeField(help_text="When the library deleted it (the event's timestamp).")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("recorded_at", "id")

    def __str__(self) -> str:
        return f"{self.title} (book {self.book_pk})"
