"""Test URLs: the example project's, plus receivers mounted both ways hookpost supports."""

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from example.urls import urlpatterns as example_urlpatterns
from hookpost import receiver


def private(request: HttpRequest) -> HttpResponse:
    """An ordinary view, neither CSRF-exempt nor open to anonymous users: the receiver's control."""
    return HttpResponse("private")


urlpatterns = [
    *example_urlpatterns,
    path("webhooks/", receiver.urls()),
    path("fixed/partner/", receiver.WebhookView.as_view(source="partner"), name="partner-webhook"),
    # A fixed-path receiver whose source does not exist: answers 404.
    path("fixed/nobody/", receiver.WebhookView.as_view(source="nobody")),
    path("private/", private),
    path("api/", include("hookpost.api.urls")),
]
