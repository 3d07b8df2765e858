"""URLs of the mirror project: webhooks arrive at /webhooks/<source>/."""

from django.contrib import admin
from django.urls import path

import hookpost.receiver

urlpatterns = [
    path("admin/", admin.site.urls),
    path("webhooks/", hookpost.receiver.urls()),
]
