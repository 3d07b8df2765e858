"""Test URLs: the example project's, plus receivers mounted both ways hookpost supports."""

from django.urls import path

from example.urls import urlpatterns as example_urlpatterns
from hookpost import receiver

urlpatterns = [
    *example_urlpatterns,
    path("webhooks/", receiver.urls()),
    path("fixed/partner/", receiver.WebhookView.as_view(source="partner"), name="partner-webhook"),
]
