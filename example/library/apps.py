"""The library app registers its webhooks once its models are loaded."""

from django.apps import AppConfig


class LibraryConfig(AppConfig):
    name = "library"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        import hookpost
        from library.models import Author, Book
        from library.signals import book_borrowed, borrowed_payload

        hookpost.register(Author, fields=["name", "born"])
        hookpost.register(
            Book,
            fields=["title", "author", "isbn", "price", "published", "uid", "cover", "tags"],
            when_changed=["title", "price"],
        )
        hookpost.register_signal(book_borrowed, "library.book.borrowed", borrowed_payload)
