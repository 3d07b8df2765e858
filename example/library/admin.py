"""Admin for the library models."""

from django.contrib import admin

from library.models import Author, Book, Tag

admin.site.register(Author)
admin.site.register(Book)
admin.site.register(Tag)
