"""A small library: authors write books, books carry tags."""

import uuid

from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=200)
    born = models.DateField(null=True, blank=True)
    email = models.EmailField(blank=True)

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)

    def __str__(self) -> str:
        return self.name


class Book(models.Model):
    title = models.CharField(max_length=300)
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    isbn = models.CharField(max_length=17, blank=True)
    price = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    published = models.DateField(null=True, blank=True)
    uid = models.UUIDField(default=uuid.uuid4, editable=False)
    cover = models.FileField(upload_to="covers/", blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="books")

    def __str__(self) -> str:
        return self.title


class Review(models.Model):
    """Not registered for webhooks: deleting a book must still fast-delete its reviews."""

    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="reviews")
    rating = models.PositiveSmallIntegerField()

    def __str__(self) -> str:
        return f"{self.rating}/5"


class Bestseller(Book):
    """A proxy of Book: its saves and deletes are Book events unless it is registered itself."""

    class Meta:
        proxy = True
